"""The header codec, both directions, and the few header operations every stage repeats.

In memory a header name or value is a `str` holding the wire bytes decoded as UTF-8 with
`surrogateescape`: a byte that is not part of valid UTF-8 becomes one lone surrogate
(U+DC80..U+DCFF) and `encode` turns it back into that byte. This is exactly what mitmproxy's
`Headers` does, so capture takes mitmproxy's text as it is, and latin-1, obs-text and broken
UTF-8 all round-trip: `encode(decode(b)) == b` for any bytes. Plain ASCII, the common case,
costs nothing extra.

Such text cannot go where valid UTF-8 is required (Arrow strings, JSON, HTML): `display` is
the one way to show it there, with each byte that is not UTF-8 shown as its latin-1
character, so `X-Name: Jos\\xe9` reads `José` in a report. `schema.py` keeps the exact bytes
beside the display text; nothing else needs to.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Pairs = list[tuple[str, str]]

_WIRE = "surrogateescape"
_ENCODE_ERRORS = "shadowtape.wire"
_DISPLAY_ERRORS = "shadowtape.latin1"


def _encode_lone_surrogates(exc: UnicodeError) -> tuple[bytes, int]:
    """surrogateescape, plus: a lone surrogate that is not an escaped byte (a JSON "\\ud800"
    from a HAR file) cannot be any byte, so it becomes U+FFFD instead of an exception."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = bytearray()
    for ch in exc.object[exc.start : exc.end]:
        cp = ord(ch)
        out += bytes((cp - 0xDC00,)) if 0xDC80 <= cp <= 0xDCFF else "\ufffd".encode()
    return bytes(out), exc.end


def _latin1_bytes(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    return exc.object[exc.start : exc.end].decode("latin-1"), exc.end


codecs.register_error(_ENCODE_ERRORS, _encode_lone_surrogates)
codecs.register_error(_DISPLAY_ERRORS, _latin1_bytes)


def decode(data: bytes) -> str:
    """Wire bytes as in-memory text; never fails, never loses a byte."""
    return data.decode("utf-8", _WIRE)


def encode(text: str) -> bytes:
    """In-memory text back to the exact wire bytes it was decoded from."""
    return text.encode("utf-8", _ENCODE_ERRORS)


def is_utf8(text: str) -> bool:
    """Whether the text is valid UTF-8 as it stands (no escaped bytes): what Arrow can store."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def display(text: str) -> str:
    """Always valid UTF-8: bytes that are not UTF-8 shown as their latin-1 characters."""
    if is_utf8(text):
        return text
    return encode(text).decode("utf-8", _DISPLAY_ERRORS)


def pairs_from_fields(fields: Iterable[tuple[bytes, bytes]]) -> Pairs:
    """Raw (name, value) byte fields, in wire order with repeats, as in-memory pairs."""
    return [(k.decode("utf-8", _WIRE), v.decode("utf-8", _WIRE)) for k, v in fields]


def fields_from_pairs(pairs: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """The inverse of pairs_from_fields: the bytes to put on the wire."""
    return [(encode(k), encode(v)) for k, v in pairs]


# --- lookups: header names are case-insensitive, pairs keep their order and repeats ---------


def get(pairs: Iterable[tuple[str, str]], name: str, default: str | None = None) -> str | None:
    """The first value of a header, or `default`."""
    wanted = name.lower()
    for n, v in pairs:
        if n.lower() == wanted:
            return v
    return default


def get_all(pairs: Iterable[tuple[str, str]], name: str) -> list[str]:
    """Every value of a header, in order."""
    wanted = name.lower()
    return [v for n, v in pairs if n.lower() == wanted]


def joined(pairs: Iterable[tuple[str, str]], name: str) -> str | None:
    """A repeated header's values joined as HTTP allows (`a, b`), or None when absent."""
    values = get_all(pairs, name)
    return ", ".join(values) if values else None


def has(pairs: Iterable[tuple[str, str]], name: str, *, non_empty: bool = False) -> bool:
    wanted = name.lower()
    return any(n.lower() == wanted and (v or not non_empty) for n, v in pairs)


def remove(pairs: Iterable[tuple[str, str]], *names: str) -> Pairs:
    """The pairs without any header of these names."""
    drop = {n.lower() for n in names}
    return [(n, v) for n, v in pairs if n.lower() not in drop]


def set_header(headers: Pairs, name: str, value: str) -> None:
    """Override a header in place: the first occurrence keeps its position, repeats go."""
    set_headers(headers, ((name, value),))


def set_headers(headers: Pairs, overrides: Sequence[tuple[str, str]]) -> None:
    """`set_header` for each override in turn, in one pass over the headers; a name not
    present is appended. A later override of a name wins; the name keeps its first spelling."""
    if not overrides:
        return
    wanted: dict[str, tuple[str, str]] = {}
    for name, value in overrides:
        lower = name.lower()
        wanted[lower] = (wanted.get(lower, (name, value))[0], value)
    out: Pairs = []
    placed: set[str] = set()
    for n, v in headers:
        lower = n.lower()
        override = wanted.get(lower)
        if override is None:
            out.append((n, v))
        elif lower not in placed:
            out.append((n, override[1]))
            placed.add(lower)
    for lower, (name, value) in wanted.items():
        if lower not in placed:
            out.append((name, value))
    headers[:] = out


# --- Content-Type ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MediaType:
    """A parsed Content-Type: `type` lower-cased (`application/json`, "" when absent),
    parameters in order with lower-cased names and unquoted values."""

    type: str
    params: tuple[tuple[str, str], ...] = ()

    def param(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for n, v in self.params if n == wanted), None)


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    start = 0
    quoted = False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            quoted = not quoted
        elif ch == "\\" and quoted:
            i += 1
        elif ch == sep and not quoted:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def _unquote_param(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        out = []
        i = 0
        while i < len(inner):
            if inner[i] == "\\" and i + 1 < len(inner):
                i += 1
            out.append(inner[i])
            i += 1
        return "".join(out)
    return value.strip('"')


def parse_content_type(value: str | None) -> MediaType:
    """RFC 9110 media type with parameters; a `;` inside a quoted value is not a separator.
    Never fails: what does not parse as a parameter is skipped."""
    if not value:
        return MediaType("")
    head, *rest = _split_outside_quotes(value, ";") if ";" in value else [value]
    params = []
    for item in rest:
        name, eq, raw = item.partition("=")
        name = name.strip().lower()
        if eq and name:
            params.append((name, _unquote_param(raw)))
    return MediaType(head.strip().lower(), tuple(params))


def media_type(value: str | None) -> str:
    """`text/html; charset=utf-8` -> `text/html`; "" when there is none."""
    if not value:
        return ""
    return value.partition(";")[0].strip().lower()


def charset(value: str | None, default: str = "utf-8") -> str:
    """The lower-cased charset parameter of a Content-Type, or `default`."""
    if not value or ";" not in value:
        return default
    found = parse_content_type(value).param("charset")
    return found.lower() if found else default
