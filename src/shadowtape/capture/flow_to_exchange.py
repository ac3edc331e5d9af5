"""A finished mitmproxy flow as an exchange record: pure conversion, no I/O.

Bodies are stored decoded (gzip, br, zstd undone): see `bodies.headers_for_decoded_body`.
The request target is kept as the bytes of the request line (HTTP/1.x) or `:path` (HTTP/2),
`path` and `query` are parsed from it with `http.target`, the same parser the importers use.
"""

from __future__ import annotations

from dataclasses import dataclass

from mitmproxy import http

from shadowtape.capture.bodies import (
    DEFAULT_MAX_BODY,
    has_content_encoding,
    headers_for_decoded_body,
    keep_body,
)
from shadowtape.capture.credentials import CredentialScrubber
from shadowtape.http.headers import decode, pairs_from_fields
from shadowtape.http.target import query_pairs, split_target, target_path
from shadowtape.schema import Exchange, Pairs


def micros(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1_000_000)


@dataclass(frozen=True, slots=True)
class CapturedBody:
    body: bytes | None
    truncated: bool
    size: int | None
    # mitmproxy does not keep bodies it streams (stream_large_bodies): counted, never guessed.
    streamed: bool
    headers: Pairs
    # Content-Encoding could not be undone: the bytes are as sent, the header kept with them.
    undecodable: bool = False


def header_pairs(headers: http.Headers) -> Pairs:
    """Headers in wire order, duplicates kept, as wire text (http.headers: no byte is lost);
    done directly on the raw fields because this runs in the proxy's hook for every flow."""
    return pairs_from_fields(headers.fields)


def capture_body(message: http.Message, max_body: int) -> CapturedBody:
    headers = header_pairs(message.headers)
    raw = message.raw_content
    if raw is None:
        return CapturedBody(None, False, None, True, headers)
    content = raw
    undecodable = False
    if raw and has_content_encoding(headers):
        try:
            content = message.get_content(strict=True) or b""
            headers = headers_for_decoded_body(headers, len(content))
        except ValueError:
            # An unknown or broken Content-Encoding: keep the bytes as sent, and the header
            # with them, so the record still says what the bytes are.
            content = raw
            undecodable = True
    kept = keep_body(content, max_body)
    return CapturedBody(kept.body, kept.truncated, kept.size, False, headers, undecodable)


def request_target(req: http.Request) -> str:
    """The target exactly as it came (`:path` for HTTP/2), as wire text."""
    return decode(req.data.path)


def split_path(path: str) -> str:
    """The path without its query string (kept apart, as ordered pairs)."""
    return target_path(path) or "/"


def server_address(flow: http.HTTPFlow) -> str | None:
    """The address actually connected to, kept apart from the Host name."""
    peer = flow.server_conn.peername if flow.server_conn else None
    if not peer:
        return None
    host = str(peer[0])
    return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"


def client_address(flow: http.HTTPFlow) -> str | None:
    peer = flow.client_conn.peername
    return str(peer[0]) if peer else None


@dataclass(frozen=True, slots=True)
class ConvertedFlow:
    exchange: Exchange
    streamed_bodies: int


def flow_to_exchange(
    flow: http.HTTPFlow,
    *,
    exchange_id: str,
    session_id: str,
    seq: int,
    capture_id: str,
    scrubber: CredentialScrubber,
    max_body: int = DEFAULT_MAX_BODY,
) -> ConvertedFlow:
    req = flow.request
    request_body = capture_body(req, max_body)
    started = micros(req.timestamp_start)
    target = request_target(req)
    path, raw_query = split_target(target)
    query = scrubber.query(query_pairs(raw_query))
    ex = Exchange(
        id=exchange_id,
        session_id=session_id,
        seq=seq,
        started_at=started if started is not None else 0,
        request_sent_at=micros(req.timestamp_end),
        method=req.method,
        scheme=req.scheme,
        host=req.host,
        port=req.port,
        server_address=server_address(flow),
        path=path or "/",
        query=query,
        request_target=scrubber.target(target, query),
        http_version=req.http_version,
        request_headers=scrubber.headers(request_body.headers),
        request_body=request_body.body,
        request_body_truncated=request_body.truncated,
        request_body_size=request_body.size,
        request_body_undecodable=request_body.undecodable,
        capture_id=capture_id,
    )
    streamed = int(request_body.streamed)
    resp = flow.response
    if resp is not None:
        response_body = capture_body(resp, max_body)
        ex.status = resp.status_code
        ex.reason = resp.reason
        ex.response_headers = scrubber.headers(response_body.headers)
        ex.response_body = response_body.body
        ex.response_body_truncated = response_body.truncated
        ex.response_body_size = response_body.size
        ex.response_body_undecodable = response_body.undecodable
        ex.response_started_at = micros(resp.timestamp_start)
        ex.response_ended_at = micros(resp.timestamp_end)
        streamed += int(response_body.streamed)
    if flow.error is not None:
        ex.error = flow.error.msg
    elif resp is None:
        ex.error = "no response"
    return ConvertedFlow(ex, streamed)
