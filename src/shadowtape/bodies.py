"""Body rules for recording an exchange: truncation and decoded-body headers.

Shared by live capture, the importers and serve's fallback recording, so a body is kept the
same way whichever path recorded it.
"""

from __future__ import annotations

from dataclasses import dataclass

from shadowtape.content_coding import ContentCodingError, decode, split_codings
from shadowtape.http.headers import joined
from shadowtape.schema import Pairs

DEFAULT_MAX_BODY = 1024 * 1024


@dataclass(frozen=True, slots=True)
class KeptBody:
    body: bytes | None
    truncated: bool
    size: int | None


def keep_body(content: bytes | None, max_body: int) -> KeptBody:
    """Truncate to max_body, remembering the full size so the loss is visible."""
    if content is None:
        return KeptBody(None, False, None)
    size = len(content)
    if size > max_body:
        return KeptBody(content[:max_body], True, size)
    return KeptBody(content, False, size)


def headers_for_decoded_body(headers: Pairs, length: int) -> Pairs:
    """Headers to go with a body stored decoded: no Content-Encoding, a true Content-Length.

    Stored bodies are what sanitize scans and diff compares, so they are kept decoded; the
    header goes with the decoding, as in mitmproxy's own `decode()`, so replay never sends a
    plain body labelled as gzip.
    """
    out: Pairs = []
    for name, value in headers:
        lower = name.lower()
        if lower == "content-encoding":
            continue
        out.append((name, str(length)) if lower == "content-length" else (name, value))
    return out


def has_content_encoding(headers: Pairs) -> bool:
    return any(name.lower() == "content-encoding" and value for name, value in headers)


def decode_content(raw: bytes, headers: Pairs) -> tuple[bytes, Pairs, bool]:
    """A body as capture stores it: its Content-Encoding undone (and the headers to match),
    or, when the coding is unknown or the bytes do not decode, the bytes as sent with their
    header, and True to say so. For importers that have the wire bytes (packets); the addon
    gets the same from mitmproxy's decoder."""
    if not raw or not has_content_encoding(headers):
        return raw, headers, False
    codings = split_codings(joined(headers, "content-encoding"))
    try:
        content = decode(raw, codings)
    except ContentCodingError:
        return raw, headers, True
    return content, headers_for_decoded_body(headers, len(content)), False
