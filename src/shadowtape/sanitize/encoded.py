"""Values hidden under an encoding: percent-encoding and base64.

`jane%40corp.internal` in a Referer and `eyJlbWFpbCI6...` in a form field hold an email just
as much as the plain text does, and a scrubber that looks only at the surface misses them.
Both sanitize and verify look through these views; a replacement made in a view is written
back in the value's own encoding (percent-escaped, or base64 of the same alphabet and
padding), so everything around it keeps its bytes.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from urllib.parse import quote

_PERCENT_RE = re.compile(r"%[0-9A-Fa-f]{2}")
_B64_RE = re.compile(r"^[A-Za-z0-9+/]+={0,2}$|^[A-Za-z0-9_-]+={0,2}$")
MIN_BASE64_LENGTH = 16
# Characters a replacement may keep unescaped in a percent-encoded value (RFC 3986
# unreserved, plus '@' so an email pseudonym reads as one).
_SAFE = "-._~@"


@dataclass(frozen=True, slots=True)
class PercentView:
    """A percent-decoded text and, for each of its characters, the span it came from."""

    text: str
    spans: tuple[tuple[int, int], ...]
    plus_is_space: bool

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        return self.spans[start][0], self.spans[end - 1][1]

    def encode(self, replacement: str) -> str:
        out = quote(replacement, safe=_SAFE + (" " if self.plus_is_space else ""))
        return out.replace(" ", "+") if self.plus_is_space else out


def percent_view(value: str) -> PercentView | None:
    """The decoded view of a value with percent-escapes; None when it has none. '+' is a
    space after a '?' (form encoding in a URL's query)."""
    if "%" not in value or not _PERCENT_RE.search(value):
        return None
    query_at = value.find("?")
    chars: list[str] = []
    spans: list[tuple[int, int]] = []
    i, n = 0, len(value)
    while i < n:
        if value[i] == "%" and _PERCENT_RE.match(value, i):
            # A run of escapes decodes as UTF-8 together (é is %C3%A9).
            j = i
            raw = bytearray()
            while j < n and value[j] == "%" and _PERCENT_RE.match(value, j):
                raw.append(int(value[j + 1 : j + 3], 16))
                j += 3
            text = raw.decode("utf-8", "surrogateescape")
            # Map each decoded character to the escapes it came from.
            k = i
            for ch in text:
                width = 3 * len(ch.encode("utf-8", "surrogateescape"))
                chars.append(ch)
                spans.append((k, k + width))
                k += width
            i = j
            continue
        ch = value[i]
        chars.append(" " if ch == "+" and 0 <= query_at < i else ch)
        spans.append((i, i + 1))
        i += 1
    return PercentView("".join(chars), tuple(spans), plus_is_space=query_at >= 0)


@dataclass(frozen=True, slots=True)
class Base64View:
    text: str
    urlsafe: bool
    padded: bool

    def encode(self, text: str) -> str:
        data = text.encode("utf-8", "surrogateescape")
        out = (base64.urlsafe_b64encode if self.urlsafe else base64.b64encode)(data).decode()
        return out if self.padded else out.rstrip("=")


def base64_view(value: str) -> Base64View | None:
    """The text a whole value encodes in base64, when it is printable UTF-8 text (random
    tokens and hex ids decode to bytes that are not, and are left alone)."""
    if len(value) < MIN_BASE64_LENGTH or not _B64_RE.match(value):
        return None
    urlsafe = "-" in value or "_" in value
    padded = value.endswith("=")
    body = value.rstrip("=")
    if len(body) % 4 == 1:
        return None
    try:
        data = (base64.urlsafe_b64decode if urlsafe else base64.b64decode)(
            body + "=" * (-len(body) % 4)
        )
        text = data.decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if not text or not _printable(text):
        return None
    view = Base64View(text, urlsafe, padded)
    # Only a value that is exactly the encoding of its text (not one that merely decodes).
    return view if view.encode(text) == value else None


def _printable(text: str) -> bool:
    ok = sum(1 for ch in text if ch.isprintable() or ch in "\r\n\t")
    return ok == len(text) and any(ch.isalnum() for ch in text)
