"""The one keyed function: HMAC key handling and the tokens derived from it.

Capture replaces credentials with tokens and sanitize replaces personal data with pseudonyms,
both through this module, so a value maps to the same replacement wherever it appears (a
session token minted in a login response body and later sent as `Authorization: Bearer`
becomes the same token in both places) and recorded sessions stay correlatable.

The key is always an input (an environment variable or a file), never a default constant: a
constant key would let anyone with the code reverse pseudonyms by brute force.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from shadowtape.errors import InputError, KeyMissingError
from shadowtape.governance.access import check_private_file

DEFAULT_KEY_ENV = "SHADOWTAPE_KEY"
MIN_KEY_BYTES = 16

TOKEN_PREFIX = "stk_"
_TOKEN_RE = re.compile(r"^stk_[a-z2-7]{26}$")
_JWT_RE = re.compile(r"^[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*$")
JWT_KID = "shadowtape"
# Claims that say when a token is valid, not who it is about; kept so a scrubbed JWT still
# behaves like the original for code that checks expiry.
_JWT_TIME_CLAIMS = frozenset({"exp", "iat", "nbf"})


@dataclass(frozen=True, slots=True)
class Key:
    """An HMAC key. `fingerprint` identifies it in metadata without revealing it."""

    secret: bytes
    source: str

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_KEY_BYTES:
            raise InputError(
                f"key from {self.source} is {len(self.secret)} bytes; use at least "
                f"{MIN_KEY_BYTES}: `openssl rand -hex 32` makes one"
            )

    def __repr__(self) -> str:
        return f"Key(source={self.source!r}, fingerprint={self.fingerprint!r})"

    @property
    def fingerprint(self) -> str:
        return hmac.new(self.secret, b"shadowtape-key-fingerprint", hashlib.sha256).hexdigest()[:16]

    @classmethod
    def from_env(cls, name: str = DEFAULT_KEY_ENV) -> Key:
        value = os.environ.get(name)
        if not value:
            raise KeyMissingError(
                f"no key: set the environment variable {name} (or pass --key-file FILE); "
                "the same key gives the same tokens across runs"
            )
        return cls(value.strip().encode("utf-8"), f"${name}")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Key:
        p = Path(path)
        check_private_file(p)  # a key others can read is a key others can use
        try:
            data = p.read_bytes().strip()
        except OSError as exc:
            raise KeyMissingError(f"{p}: cannot read key file ({exc.strerror})") from None
        if not data:
            raise KeyMissingError(f"{p}: key file is empty")
        return cls(data, str(p))

    @classmethod
    def ephemeral(cls) -> Key:
        """A random key for one run: tokens are consistent inside the run and nowhere else."""
        return cls(secrets.token_bytes(32), "ephemeral")

    @classmethod
    def load(
        cls,
        key_file: str | os.PathLike[str] | None = None,
        env: str = DEFAULT_KEY_ENV,
        ephemeral: bool = False,
    ) -> Key:
        if key_file is not None:
            return cls.from_file(key_file)
        if os.environ.get(env):
            return cls.from_env(env)
        if ephemeral:
            return cls.ephemeral()
        return cls.from_env(env)


class Keyed:
    """Keyed, deterministic functions of a value. Domains separate uses of the same key, so a
    value's hash is not its pseudonym; within one domain a value always maps the same way."""

    def __init__(self, key: Key) -> None:
        self.key = key

    def digest(self, domain: str, value: str | bytes) -> bytes:
        data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
        return hmac.new(self.key.secret, domain.encode() + b"\x00" + data, hashlib.sha256).digest()

    def hash_hex(self, value: str | bytes, length: int = 32) -> str:
        """The `hash` action: a keyed HMAC, hex, for values that need no format."""
        return self.digest("hash", value).hex()[:length]

    def token(self, value: str | bytes) -> str:
        """An opaque credential token: recognisable (`stk_` prefix) so verify can tell a token
        from a leaked secret."""
        body = base64.b32encode(self.digest("secret", value)).decode("ascii").lower()
        return TOKEN_PREFIX + body[:26]

    def secret(self, value: str) -> str:
        """The replacement of a credential wherever it is found (header, cookie, body).

        Idempotent: a value that is already one of our tokens is returned as it is, so a
        sanitize pass over captured data keeps capture's tokens and correlation holds.
        JWT-shaped values stay well-formed JWTs, so replayed clients that parse them still work.
        """
        if is_token(value):
            return value
        if looks_like_jwt(value):
            return self._jwt(value)
        return self.token(value)

    def _jwt(self, value: str) -> str:
        claims: dict[str, object] = {}
        try:
            payload = json.loads(_b64url_decode(value.split(".")[1]))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            payload = None
        if isinstance(payload, dict):
            for name in sorted(payload):
                claim = payload[name]
                if name in _JWT_TIME_CLAIMS and isinstance(claim, int | float):
                    claims[name] = claim
                else:
                    claims[name] = self.token(json.dumps(claim, sort_keys=True))
        claims["jti"] = self.token(value)
        header = {"alg": "HS256", "kid": JWT_KID, "typ": "JWT"}
        signing_input = (
            _b64url_encode(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url_encode(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = _b64url_encode(self.digest("jwt-signature", signing_input))
        return f"{signing_input}.{signature}"


def is_token(value: str) -> bool:
    """Whether a value is already a shadowtape token (opaque or minted JWT)."""
    if _TOKEN_RE.match(value):
        return True
    if looks_like_jwt(value):
        try:
            header = json.loads(_b64url_decode(value.split(".")[0]))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return False
        return isinstance(header, dict) and header.get("kid") == JWT_KID
    return False


def looks_like_jwt(value: str) -> bool:
    if not _JWT_RE.match(value):
        return False
    try:
        header = json.loads(_b64url_decode(value.split(".")[0]))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return False
    return isinstance(header, dict) and "alg" in header


def _b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
