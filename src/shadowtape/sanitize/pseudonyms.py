"""Keyed, deterministic, format-preserving replacements for personal values.

Every function depends only on the key and the value, never on where the value was found, so a
user id in a path, a query, a header and a JSON body gets the same pseudonym everywhere and
recorded sessions stay consistent. Credentials go through `Keyed.secret` (the function capture
uses), so a token minted in a response body matches the one later sent in a header.

Pseudonyms are built so that verify can tell them from real data without the key (see
markers.py): emails end in `.example.invalid`, IPs come from reserved ranges, UUIDs are
version 8, cards start with 9 (a major-industry digit no card network issues), SSNs use area
666 (never issued), IBANs carry the impossible check digits 00, phone numbers are redrawn
until the phone recognizer no longer accepts them, and words (names, streets, any other text)
become pronounceable consonant-vowel words with a checksum (`Zebulon` -> `Bokelus`).

Text is replaced word by word, each word keyed on its own (case-folded) letters: "Jane Doe",
"Jane" and "JANE DOE" give "Vokeb Tal", "Vokeb" and "VOKEB TAL", so a name found in full in
one place and in part in another still matches. A value the detectors would still flag is
redrawn with the next attempt number; the result is still a pure function of key and value.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Callable

from shadowtape.keyed import Keyed, is_token, looks_like_jwt
from shadowtape.sanitize import markers

_LOWER = string.ascii_lowercase
_UPPER = string.ascii_uppercase
_B32 = "abcdefghijklmnopqrstuvwxyz234567"

_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
_INT_RE = re.compile(r"^-?\d+$")
_CARD_RE = re.compile(r"^\d(?:[ -]?\d){12,18}$")
_SSN_RE = re.compile(r"^\d{3}([- .]?)\d{2}\1\d{4}$")
_IBAN_RE = re.compile(r"^[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}$")
_PHONE_RE = re.compile(r"^\+?[\d\s().\-/]{7,}$")

# Random 10-digit numbers pass as a valid phone number somewhere about 80% of the time, so
# phone-shaped pseudonyms need many draws; each draw is one detector call per distinct value.
MAX_ATTEMPTS = 64


class PseudonymExhausted(Exception):
    """No draw was invisible to the detectors; the caller redacts instead (fail-closed)."""


# Whether a candidate pseudonym is invisible to the detectors; None accepts everything.
CleanCheck = Callable[[str], bool]
_RUN_RE = re.compile(r"[^\W\d_]+|\d+")
_WORD_CACHE_LIMIT = 200_000


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _luhn_check_digit(partial: str) -> str:
    for d in "0123456789":
        if luhn_valid(partial + d):
            return d
    raise AssertionError("unreachable: one check digit always fits")


class Pseudonymizer:
    """Format-preserving pseudonyms under one key."""

    def __init__(
        self,
        keyed: Keyed,
        is_clean: CleanCheck | None = None,
        is_clean_word: CleanCheck | None = None,
    ) -> None:
        self.keyed = keyed
        self._is_clean = is_clean
        # Words are checked on their own (is the pseudonym a real name?), cheaply.
        self._is_clean_word = is_clean_word
        self._words: dict[str, str] = {}

    # --- keyed randomness -----------------------------------------------------------------

    def _stream(self, domain: str, value: str, n: int) -> bytes:
        out = b""
        block = 0
        while len(out) < n:
            out += self.keyed.digest(f"pseudonym:{domain}:{block}", value)
            block += 1
        return out[:n]

    def _redraw(self, kind: str, value: str, make: Callable[[bytes], str], size: int = 64) -> str:
        """The first candidate the detectors accept as clean; attempts are part of the key
        domain, so the choice is deterministic."""
        for attempt in range(MAX_ATTEMPTS):
            candidate = make(self._stream(f"{kind}:{attempt}", value, size))
            if self._is_clean is None or self._is_clean(candidate):
                return candidate
        raise PseudonymExhausted(kind)

    # --- formats ---------------------------------------------------------------------------

    def auto(self, value: str) -> str:
        """The pseudonym of a whole value, its format read from the value itself."""
        if not value or markers.is_opaque_token(value):
            return value
        maker = self.format_of(value)
        return maker(value) if maker is not None else self.text(value)

    def format_of(self, value: str) -> Callable[[str], str] | None:
        """The pseudonymizer of a value with a format of its own (email, UUID, card, ...);
        None for anything else, which is text."""
        if looks_like_jwt(value) or is_token(value):
            return self.secret
        if _EMAIL_RE.match(value):
            return self.email
        if _UUID_RE.match(value):
            return self.uuid
        # Cards before integers: a detector finds a bare card number as CREDIT_CARD, and both
        # paths must give the same pseudonym.
        if _CARD_RE.match(value) and luhn_valid(_digits(value)):
            return self.card
        if _INT_RE.match(value):
            return self.integer
        if _is_ip(value):
            return self.ip
        if _SSN_RE.match(value):
            return self.ssn
        if _IBAN_RE.match(value):
            return self.iban
        if _PHONE_RE.match(value) and len(_digits(value)) >= 7:
            return self.phone
        return None

    def for_entity(self, entity: str, value: str) -> str:
        """The pseudonym of a detector finding. Entities with a format of their own use it;
        the rest fall back to `auto`, so the result never depends on which path found it."""
        maker = {
            "EMAIL_ADDRESS": self.email,
            "CREDIT_CARD": self.card,
            "IBAN_CODE": self.iban,
            "IP_ADDRESS": self.ip,
            "US_SSN": self.ssn,
            "UUID": self.uuid,
            "PHONE_NUMBER": self.phone,
            "JWT": self.secret,
            "BEARER_TOKEN": self.secret,
            "API_KEY": self.secret,
        }.get(entity, self.auto)
        return maker(value)

    def secret(self, value: str) -> str:
        """The credential token of a value. A JWT that only *claims* to be ours (our `kid` in
        its header, but claims that are not all tokens) is raw data and gets a token of its
        own: keyed.secret would pass it through as already scrubbed."""
        if is_token(value) and not markers.is_opaque_token(value):
            return self.keyed.token(value)
        return self.keyed.secret(value)

    def email(self, value: str) -> str:
        local, _, domain = value.rpartition("@")
        # The domain is pseudonymized on its own, so addresses of one organisation still
        # share a (pseudonymous) domain after scrubbing.
        user = _b32(self._stream("email-local", value.lower(), 10), 10)
        host = _b32(self._stream("email-domain", domain.lower(), 8), 8)
        return f"{user}@{host}.example.invalid"

    def integer(self, value: str) -> str:
        sign = "-" if value.startswith("-") else ""
        digits = value.lstrip("-")

        def make(raw: bytes) -> str:
            out = [str(b % 10) for b in raw[: len(digits)]]
            if len(digits) > 1 and out[0] == "0":
                out[0] = str(1 + raw[-1] % 9)  # keep the width: no leading zero
            return sign + "".join(out)

        return self._redraw("integer", value, make, len(digits) + 1)

    def uuid(self, value: str) -> str:
        def make(raw: bytes) -> str:
            h = raw[:16].hex()
            # Version 8 and the RFC variant: a valid UUID that no real generator produces.
            h = h[:12] + "8" + h[13:16] + "89ab"[int(h[16], 16) % 4] + h[17:]
            out = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
            return out.upper() if value.isupper() else out

        return self._redraw("uuid", value.lower(), make)

    def ip(self, value: str) -> str:
        addr_text, slash, prefix = value.partition("/")
        try:
            addr = ipaddress.ip_address(addr_text)
        except ValueError:
            return self.text(value)

        def make(raw: bytes) -> str:
            if addr.version == 4:
                out = f"{240 + raw[0] % 16}.{raw[1]}.{raw[2]}.{raw[3]}"
            else:
                out = str(ipaddress.IPv6Address(bytes.fromhex("20010db8") + raw[:12]))
            return out + slash + prefix

        return self._redraw("ip", addr.compressed, make)

    def card(self, value: str) -> str:
        digits = _digits(value)

        def make(raw: bytes) -> str:
            body = "9" + "".join(str(b % 10) for b in raw[: len(digits) - 2])
            return _relayout(value, body + _luhn_check_digit(body))

        return self._redraw("card", digits, make)

    def ssn(self, value: str) -> str:
        if _INT_RE.match(value):
            return self.integer(value)  # what `auto` does with the same bare digits

        def make(raw: bytes) -> str:
            return _relayout(value, "666" + "".join(str(1 + b % 9) for b in raw[:6]))

        return self._redraw("ssn", _digits(value), make)

    def iban(self, value: str) -> str:
        compact = value.replace(" ", "")

        def make(raw: bytes) -> str:
            bban = "".join(_same_class(ch, b) for ch, b in zip(compact[4:], raw, strict=False))
            return _relayout(value, compact[:2] + "00" + bban, keep=str.isalnum)

        return self._redraw("iban", compact, make)

    def phone(self, value: str) -> str:
        if _INT_RE.match(value):
            return self.integer(value)  # what `auto` does with the same bare digits
        digits = _digits(value)
        kept = _country_code(value)

        def make(raw: bytes) -> str:
            # A national part starting with 10 is invalid in the numbering plans the phone
            # recognizer knows, so the first draw is almost always one it rejects (and verify
            # accepts): measured ~99% against ~25% for a free first digit.
            rest = ("10" + "".join(str(b % 10) for b in raw))[: len(digits) - len(kept)]
            return _relayout(value, kept + rest)

        return self._redraw("phone", digits, make, len(digits) + 1)

    def text(self, value: str) -> str:
        """Word by word: letters become a marked word of the same length and case pattern,
        digits digits of the same width, everything else stays (see the module docstring)."""
        runs = [(m.start(), m.end()) for m in _RUN_RE.finditer(value)]
        if not runs:
            return value

        def make(raw: bytes) -> str:
            attempt = raw[0]
            out, pos = [], 0
            for start, end in runs:
                out.append(value[pos:start])
                run = value[start:end]
                out.append(self._digit_run(run, attempt) if run[0].isdigit() else self.word(run))
                pos = end
            out.append(value[pos:])
            return "".join(out)

        # The attempt number is the only randomness `make` needs from the stream: digit runs
        # are redrawn with it when their composition still looks sensitive.
        for attempt in range(MAX_ATTEMPTS):
            candidate = make(bytes([attempt]))
            if self._is_clean is None or self._is_clean(candidate):
                return candidate
        raise PseudonymExhausted("text")

    def word(self, word: str) -> str:
        """The pseudonym of one run of letters: consonant-vowel alternation, the original's
        upper-case positions kept, letters summing to 0 mod 5 (markers.is_marked_word)."""
        low = word.lower()
        out = self._words.get(low)
        if out is None:
            out = self._marked_word(low)
            if len(self._words) >= _WORD_CACHE_LIMIT:
                self._words.clear()
            self._words[low] = out
        if word.islower():
            return out
        if word.isupper() and len(word) > 1:
            return out.upper()
        return "".join(o.upper() if ch.isupper() else o for ch, o in zip(word, out, strict=True))

    def _marked_word(self, low: str) -> str:
        n = len(low)
        for attempt in range(MAX_ATTEMPTS):
            raw = self._stream(f"word:{attempt}", low, n + 1)
            letters = [
                (markers.CONSONANTS if i % 2 == 0 else markers.VOWELS)[
                    b % len(markers.CONSONANTS if i % 2 == 0 else markers.VOWELS)
                ]
                for i, b in enumerate(raw[: n - 1])
            ]
            total = sum(_LETTER_WEIGHT[ch] for ch in letters)
            cls = markers.CONSONANTS if (n - 1) % 2 == 0 else markers.VOWELS
            fits = [ch for ch in cls if (total + _LETTER_WEIGHT[ch]) % markers.CHECKSUM_MOD == 0]
            letters.append(fits[raw[n] % len(fits)])
            candidate = "".join(letters)
            if self._is_clean_word is None or self._is_clean_word(candidate):
                return candidate
        raise PseudonymExhausted("word")

    def _digit_run(self, run: str, attempt: int) -> str:
        raw = self._stream(f"digits:{attempt}", run, len(run) + 1)
        out = [str(b % 10) for b in raw[: len(run)]]
        if len(run) > 1 and run[0] != "0" and out[0] == "0":
            out[0] = str(1 + raw[-1] % 9)
        return "".join(out)


_LETTER_WEIGHT = {ch: i for i, ch in enumerate(markers.CONSONANTS)} | {
    ch: i for i, ch in enumerate(markers.VOWELS)
}


def _same_class(ch: str, b: int) -> str:
    if "0" <= ch <= "9":
        return str(b % 10)
    if "a" <= ch <= "z":
        return _LOWER[b % 26]
    if "A" <= ch <= "Z":
        return _UPPER[b % 26]
    if ch.isalpha():
        return _LOWER[b % 26]
    return ch


def _b32(raw: bytes, n: int) -> str:
    return "".join(_B32[b % 32] for b in raw[:n])


def _digits(value: str) -> str:
    return "".join(ch for ch in value if ch.isdigit())


def _relayout(template: str, chars: str, keep: Callable[[str], bool] = str.isdigit) -> str:
    """`chars` placed where `template` has characters that `keep` selects; separators stay."""
    it = iter(chars)
    return "".join(next(it, ch) if keep(ch) else ch for ch in template)


def _country_code(value: str) -> str:
    """The country code of an international number, kept so a pseudonym stays in its
    country's numbering shape."""
    if not value.lstrip().startswith("+"):
        return ""
    import phonenumbers

    try:
        return str(phonenumbers.parse(value, None).country_code)
    except phonenumbers.NumberParseException:
        return ""


def _is_ip(value: str) -> bool:
    if not (("." in value and value[0].isdigit()) or ":" in value):
        return False
    try:
        ipaddress.ip_address(value.partition("/")[0])
    except ValueError:
        return False
    return True
