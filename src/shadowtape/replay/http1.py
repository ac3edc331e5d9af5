"""HTTP/1.1 request heads as bytes: what both HTTP/1.1 transports put on the wire.

An `OutgoingRequest` holds its target, header names and values as wire text (surrogate-escaped
`str`, see `shadowtape.http.headers`); `headers.encode` gives back the exact bytes that were
recorded, non-ASCII and obs-text included. The headers a client must add are added the way
httpx adds them (Host when missing; Content-Length for a body, or 0 for a bodiless
POST/PUT/PATCH), so every transport sends the same bytes for the same request.

What would change the meaning of the message on the wire (a CR or LF inside a value, a name
that is not a token, whitespace in the target) is refused before anything is written.
"""

from __future__ import annotations

import re

from shadowtape.http.headers import encode

RawFields = list[tuple[bytes, bytes]]

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A target may hold any recorded byte but whitespace and controls: those end the request line.
_TARGET = re.compile(rb"[^\x00-\x20\x7f]+")


class UnsendableRequest(ValueError):
    """The request cannot be written as HTTP/1.1 without changing what it says."""


def request_fields(
    method: str, headers: list[tuple[str, str]], body: bytes | None, netloc: str
) -> RawFields:
    """The header fields to send, as bytes, with the ones the client adds."""
    raw: RawFields = []
    has_host = has_length = False
    for name, value in headers:
        lower = name.lower()
        if lower == "host":
            has_host = True
        elif lower == "content-length" or lower == "transfer-encoding":
            has_length = True
        raw.append((encode(name), encode(value)))
    if body and not has_length:
        raw.append((b"Content-Length", str(len(body)).encode("ascii")))
        has_length = True
    auto: RawFields = []
    if not has_host and netloc:
        auto.append((b"Host", encode(netloc)))
    if not has_length and method in _BODY_METHODS:
        auto.append((b"Content-Length", b"0"))
    return auto + raw if auto else raw


def request_head(method: str, target: str, fields: RawFields) -> bytes:
    """Request line and header block, checked; raises UnsendableRequest."""
    method_bytes = encode(method)
    target_bytes = encode(target)
    if _TOKEN.fullmatch(method_bytes) is None:
        raise UnsendableRequest(f"method {method!r} is not an HTTP token")
    if _TARGET.fullmatch(target_bytes) is None:
        raise UnsendableRequest(f"request target {target!r} holds whitespace or a control byte")
    parts = [method_bytes, b" ", target_bytes, b" HTTP/1.1\r\n"]
    for name, value in fields:
        if _TOKEN.fullmatch(name) is None:
            raise UnsendableRequest(f"header name {name!r} is not an HTTP token")
        if b"\r" in value or b"\n" in value or b"\x00" in value:
            raise UnsendableRequest(f"header {name.decode('latin-1')}: value holds CR, LF or NUL")
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
