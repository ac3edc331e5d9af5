"""Cookie and Set-Cookie headers: one parser and serializer for every stage.

Cookie (RFC 6265 section 4.2): `name=value` items separated by `;`. Real clients also send
items without `=` (`Cookie: a=1; flag; b=2`). RFC 6265bis (5.6 step 3) and browsers read such
a bare word as a cookie with an empty name whose value is the word, so that is what it is
here: `Cookie(name="", value="flag", has_eq=False)`. A lookup by name never finds it; a
credential scrubber, which must treat every value as possibly secret, does.

Parsing keeps everything needed to write the header back byte for byte: item order,
duplicates, bare words, the whitespace around each item and the spelling around `=`.
`format_cookie_header(parse_cookie_header(h)) == h` for every string, and replacing one
cookie's value (`Cookie.with_value`) rewrites only that item.

Set-Cookie (RFC 6265 section 4.1): the first `;`-separated item is the cookie, parsed as
above; the rest (`; Path=/; HttpOnly`) are attributes, kept verbatim because they are
structure, not data.

Values keep their quotes as sent (`theme="dark"`); `unquote`/`requote` let a caller look inside
a quoted value and put a replacement back in the same quoting.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Cookie:
    """One item of a Cookie header (or the cookie of a Set-Cookie)."""

    name: str  # stripped; "" for a bare word
    value: str  # stripped, quotes kept as sent
    has_eq: bool  # False for a bare word such as `flag`
    before: str = ""  # the item's text before the value: leading space, name, "=" and spacing
    after: str = ""  # whitespace after the value

    @property
    def raw(self) -> str:
        """The item exactly as it was in the header."""
        return self.before + self.value + self.after

    def with_value(self, value: str) -> Cookie:
        """The same item with another value; name and spacing unchanged."""
        return Cookie(self.name, value, self.has_eq, self.before, self.after)


def _item(text: str) -> Cookie:
    name, eq, value = text.partition("=")
    if not eq:
        # A bare word: the whole item is the value of a nameless cookie.
        stripped = text.strip()
        if not stripped:
            return Cookie("", "", False, text, "")
        start = text.index(stripped[0])
        end = start + len(stripped)
        return Cookie("", stripped, False, text[:start], text[end:])
    stripped = value.strip()
    if stripped:
        start = value.index(stripped[0])
        end = start + len(stripped)
    else:
        start = end = len(value)
    return Cookie(
        name.strip(), stripped, True, name + eq + value[:start], value[end:] if stripped else ""
    )


def parse_cookie_header(header: str) -> list[Cookie]:
    """Every item of one Cookie header value, in order, bare words and empty items included."""
    return [_item(part) for part in header.split(";")]


def format_cookie_header(cookies: Iterable[Cookie]) -> str:
    """The header value from its items; the inverse of parse_cookie_header."""
    return ";".join(c.raw for c in cookies)


def named_cookies(headers: Iterable[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """(name, value) of every named cookie in the Cookie headers of a request, in order.
    Bare words and `=value` items have no name to look up and are left out."""
    for name, value in headers:
        if name.lower() != "cookie":
            continue
        for c in parse_cookie_header(value):
            if c.has_eq and c.name:
                yield c.name, c.value


def unquote(value: str) -> tuple[str, bool]:
    """(the value inside double quotes, whether it was quoted)."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1], True
    return value, False


def requote(new: str, quoted: bool) -> str:
    return f'"{new}"' if quoted else new


@dataclass(frozen=True, slots=True)
class SetCookie:
    """A Set-Cookie value: the cookie, then its attributes verbatim (`; Path=/; HttpOnly`)."""

    cookie: Cookie
    attributes: str = ""  # from the first ";" on, exactly as sent; "" when there are none

    @property
    def name(self) -> str:
        return self.cookie.name

    @property
    def value(self) -> str:
        return self.cookie.value

    def with_value(self, value: str) -> SetCookie:
        return SetCookie(self.cookie.with_value(value), self.attributes)

    def format(self) -> str:
        return self.cookie.raw + self.attributes

    def attribute_pairs(self) -> list[tuple[str, str]]:
        """(lower-cased name, value) of each attribute, e.g. ("path", "/"), ("httponly", "")."""
        out = []
        for item in self.attributes.split(";")[1:]:
            name, _, value = item.partition("=")
            if name.strip():
                out.append((name.strip().lower(), value.strip()))
        return out


def parse_set_cookie(value: str) -> SetCookie:
    first, sep, rest = value.partition(";")
    return SetCookie(_item(first), sep + rest)


def set_cookies(headers: Iterable[tuple[str, str]]) -> Iterator[SetCookie]:
    """Every Set-Cookie of a response, parsed, in order."""
    for name, value in headers:
        if name.lower() == "set-cookie":
            yield parse_set_cookie(value)
