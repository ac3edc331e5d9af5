"""Credential scrubbing at capture time: raw secrets are replaced before a record is queued.

Every replacement goes through `Keyed.secret`, the same function sanitize and stateful replay
use, so a token minted in a login response body and later sent as `Authorization: Bearer`
maps to the same replacement in both places and recorded sessions stay replayable.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from shadowtape.http import cookies
from shadowtape.http.target import split_target, update_target
from shadowtape.keyed import Keyed
from shadowtape.schema import Exchange, Pairs

# Header names compared lowercase; HTTP header names are case-insensitive.
DEFAULT_SECRET_HEADERS: frozenset[str] = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "x-auth-token"}
)
COOKIE_HEADER = "cookie"
SET_COOKIE_HEADER = "set-cookie"
# Authorization-style headers keep their scheme word so replay and diff still see the scheme.
_SCHEMED_HEADERS = frozenset({"authorization", "proxy-authorization"})
# Query parameters that carry credentials by name: access_token, api_key, client_secret,
# X-Amz-Signature... A pattern rather than a list, because every API spells them its own way.
SECRET_QUERY_PATTERN = re.compile(
    r"(?:^|[_.-])(?:token|secret|password|passwd|signature)$|api[_-]?key|access[_-]?key",
    re.IGNORECASE,
)


@dataclass(slots=True)
class CredentialScrubber:
    """Replaces credential values in headers and query strings with keyed tokens."""

    keyed: Keyed
    extra_headers: Iterable[str] = ()
    secret_headers: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        extra = {h.strip().lower() for h in self.extra_headers if h.strip()}
        self.secret_headers = DEFAULT_SECRET_HEADERS | extra

    def headers(self, pairs: Pairs) -> Pairs:
        out: Pairs = []
        for name, value in pairs:
            lower = name.lower()
            if lower == COOKIE_HEADER:
                value = self.cookie_header(value)
            elif lower == SET_COOKIE_HEADER:
                value = self.set_cookie_header(value)
            elif lower in self.secret_headers:
                value = self._credential(lower, value)
            out.append((name, value))
        return out

    def query(self, pairs: Pairs) -> Pairs:
        return [
            (name, self.keyed.secret(value) if value and is_secret_query(name) else value)
            for name, value in pairs
        ]

    def _credential(self, lower_name: str, value: str) -> str:
        if not value:
            return value
        if lower_name in _SCHEMED_HEADERS:
            scheme, sep, rest = value.strip().partition(" ")
            if sep and rest.strip():
                return f"{scheme} {self.keyed.secret(rest.strip())}"
        return self.keyed.secret(value)

    def target(self, raw_target: str | None, query: Pairs) -> str | None:
        """The raw request target with the query's secrets replaced as in `query(...)`: only
        the parameters that changed are re-encoded, so the raw secret never reaches disk and
        every other parameter keeps its spelling."""
        if raw_target is None:
            return None
        path, _ = split_target(raw_target)
        return update_target(raw_target, path, query)

    def cookie_header(self, value: str) -> str:
        """`a=1; b=2` -> each value tokenized; names, order, bare words and spacing kept. A bare
        word is a nameless cookie's value (see http.cookies), so it is tokenized too."""
        return cookies.format_cookie_header(
            c.with_value(self._cookie_value(c.value)) for c in cookies.parse_cookie_header(value)
        )

    def set_cookie_header(self, value: str) -> str:
        """Only the cookie's value is secret; Path, Expires, HttpOnly and friends are kept."""
        parsed = cookies.parse_set_cookie(value)
        return parsed.with_value(self._cookie_value(parsed.value)).format()

    def _cookie_value(self, value: str) -> str:
        # A quoted cookie value keeps its quotes, so the header stays parseable the same way.
        inner, quoted = cookies.unquote(value)
        if not inner:
            return value
        return cookies.requote(self.keyed.secret(inner), quoted)


def is_secret_query(name: str) -> bool:
    return bool(SECRET_QUERY_PATTERN.search(name))


def scrub_exchange(ex: Exchange, scrubber: CredentialScrubber) -> Exchange:
    """Credentials out of a record built elsewhere (an importer), in place."""
    ex.query = scrubber.query(ex.query)
    ex.request_target = scrubber.target(ex.request_target, ex.query)
    ex.request_headers = scrubber.headers(ex.request_headers)
    ex.response_headers = scrubber.headers(ex.response_headers)
    return ex
