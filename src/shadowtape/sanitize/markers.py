"""How a pseudonym can be told from real data without the key.

Every replacement sanitize writes carries a marker: emails end in `.example.invalid` with a
fixed shape, IPs come from reserved ranges, UUIDs are version 8, credentials are `stk_`
tokens or JWTs whose claims are all such tokens, and words (names, streets, free text) are
consonant-vowel alternations whose letters sum to 0 mod 5 (`Bokelus Tamirap`).

The markers are *trusted only on sanitized input*: a raw capture can hold `2001:db8::1`,
`240.1.2.3` or a UUIDv8 as real data, and a name can happen to alternate consonants and
vowels, so on raw input every one of them is treated like any other value. Opaque tokens are
the exception: an `stk_` token or a JWT whose claims are all `stk_` tokens carries nothing but
keyed hashes, whoever made it (capture mints them on raw data).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re

from shadowtape.keyed import JWT_KID, is_token, looks_like_jwt

PSEUDONYM_EMAIL_RE = re.compile(r"^[a-z2-7]{10}@[a-z2-7]{8}\.example\.invalid$", re.IGNORECASE)
PSEUDONYM_NETWORKS = (ipaddress.ip_network("240.0.0.0/4"), ipaddress.ip_network("2001:db8::/32"))
_UUID8_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-8[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}$"
)
# The letters of word pseudonyms: CONSONANTS[i] and VOWELS[i] weigh i in the checksum.
CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
_WEIGHT = {ch: i for i, ch in enumerate(CONSONANTS)} | {ch: i for i, ch in enumerate(VOWELS)}
CHECKSUM_MOD = 5
# Words shorter than this carry too little to be told apart; they are never trusted alone.
MIN_MARKED_WORD = 3
_JWT_TIME_CLAIMS = frozenset({"exp", "iat", "nbf"})


def is_marked_word(word: str) -> bool:
    """Whether a run of letters has the shape of a word pseudonym."""
    low = word.lower()
    if len(low) < MIN_MARKED_WORD:
        return False
    total = 0
    for i, ch in enumerate(low):
        if ch not in (CONSONANTS if i % 2 == 0 else VOWELS):
            return False
        total += _WEIGHT[ch]
    return total % CHECKSUM_MOD == 0


def is_opaque_jwt(value: str) -> bool:
    """A JWT minted by shadowtape whose claims hold nothing but tokens and times."""
    if not looks_like_jwt(value):
        return False
    try:
        header = json.loads(_b64url(value.split(".")[0]))
        payload = json.loads(_b64url(value.split(".")[1]))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return False
    if not (isinstance(header, dict) and header.get("kid") == JWT_KID):
        return False
    if not isinstance(payload, dict):
        return False
    for name, claim in payload.items():
        if name in _JWT_TIME_CLAIMS and isinstance(claim, int | float):
            continue
        if not (isinstance(claim, str) and is_token(claim) and claim.startswith("stk_")):
            return False
    return True


def is_opaque_token(value: str) -> bool:
    """An `stk_` token or an opaque JWT: safe on any input."""
    if value.startswith("stk_"):
        return is_token(value)
    return is_opaque_jwt(value)


def is_pseudonym(entity: str, text: str) -> bool:
    """Whether a finding is, whole, one of our replacements (trusted input only)."""
    if is_opaque_token(text):
        return True
    if entity == "EMAIL_ADDRESS":
        return bool(PSEUDONYM_EMAIL_RE.match(text))
    if entity == "IP_ADDRESS":
        try:
            addr = ipaddress.ip_address(text.split("/")[0].split("%")[0])
        except ValueError:
            return False
        return any(addr in net for net in PSEUDONYM_NETWORKS if net.version == addr.version)
    if entity == "UUID":
        return bool(_UUID8_RE.match(text))
    if entity in ("PERSON", "STREET_ADDRESS"):
        words = re.findall(r"[^\W\d_]+", text)
        long_words = [w for w in words if len(w) >= MIN_MARKED_WORD]
        return bool(long_words) and all(is_marked_word(w) for w in long_words)
    return False


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def is_whole_pseudonym(value: str) -> bool:
    """Whether a whole value reads as one of our replacements (trusted input only): an email,
    IP or UUID pseudonym, or text whose every word of three letters or more is marked."""
    if any(is_pseudonym(e, value) for e in ("EMAIL_ADDRESS", "IP_ADDRESS", "UUID")):
        return True
    return not any(ch.isdigit() for ch in value) and is_pseudonym("PERSON", value)
