"""Responses as the bytes the double writes: recorded headers sent as recorded.

Every recorded header goes out in its recorded order, spelling and bytes (non-ASCII values
included: the schema keeps them as surrogate-escaped str), with the recorded reason phrase.
Only message framing is the double's own, because the body it sends is the stored one (decoded,
perhaps truncated), not necessarily the bytes that crossed the wire: Content-Length is set to
the length sent, and a recorded `Transfer-Encoding: chunked` is kept and the body sent as one
chunk. Pre-rendered once per recorded exchange, so answering is one `write`.
"""

from __future__ import annotations

import http
from dataclasses import dataclass

import orjson

from shadowtape.http.headers import encode as encode_header
from shadowtape.schema import Pairs

_NO_BODY_STATUS = frozenset({204, 304})
# Characters that would split a response or break the header block: such a header cannot be
# sent as recorded, so it is left out and counted.
_UNSAFE = frozenset("\r\n\x00")


@dataclass(frozen=True, slots=True)
class Rendered:
    status: int
    full: bytes  # head and body
    head: bytes  # for HEAD requests
    close: bool  # the recorded response said `Connection: close`
    dropped_headers: int


def reason_for(status: int, reason: str | None) -> str:
    if reason:
        return reason
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def render(status: int, reason: str | None, headers: Pairs, body: bytes | None) -> Rendered:
    body = body or b""
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, encode_header(reason_for(status, reason)))]
    has_length = chunked = close = False
    dropped = 0
    no_body = status in _NO_BODY_STATUS or 100 <= status < 200
    for name, value in headers:
        if name.startswith(":") or _UNSAFE.intersection(name) or _UNSAFE.intersection(value):
            dropped += 1  # HTTP/2 pseudo-headers, or bytes that would corrupt the stream
            continue
        lower = name.lower()
        if lower == "content-length":
            if has_length or chunked or no_body:
                continue
            has_length = True
            value = str(len(body))
        elif lower == "transfer-encoding" and "chunked" in value.lower():
            if no_body:
                continue
            chunked = True
            if has_length:
                lines = [ln for ln in lines if not ln.lower().startswith(b"content-length:")]
                has_length = False
        elif lower == "connection" and "close" in value.lower():
            close = True
        lines.append(encode_header(name) + b": " + encode_header(value) + b"\r\n")
    if not (has_length or chunked or no_body):
        lines.append(b"Content-Length: %d\r\n" % len(body))
    lines.append(b"\r\n")
    head = b"".join(lines)
    if no_body:
        payload = b""
    elif chunked:
        payload = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    else:
        payload = body
    return Rendered(status, head + payload, head, close, dropped)


def json_response(status: int, payload: dict, extra: Pairs = ()) -> Rendered:
    """The double's own answers (misses, injected errors, its endpoints): small JSON bodies
    with a header that says who answered, so a test never mistakes them for recorded ones."""
    body = orjson.dumps(payload)
    headers: Pairs = [("Content-Type", "application/json"), *extra]
    return render(status, None, headers, body)
