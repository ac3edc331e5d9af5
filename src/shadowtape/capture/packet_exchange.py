"""A request and its response from packets as an exchange record: pure conversion.

The same rules as the addon's `flow_to_exchange`: bodies stored decoded (Content-Encoding
undone where it decodes, with headers to match), truncated at max_body with the size kept,
credentials tokenized before the record exists. What differs is where host and port come
from: the request's authority (Host or :authority, or an absolute target), and the TCP
server port when the authority names none, since that is the port the packets went to.
"""

from __future__ import annotations

from shadowtape.bodies import decode_content, keep_body
from shadowtape.capture.packet_wire import Address, WireRequest, WireResponse
from shadowtape.credentials import CredentialScrubber
from shadowtape.http.target import query_pairs, split_target
from shadowtape.schema import Exchange

NO_RESPONSE = "no response in the packet capture"


def split_authority(authority: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]` or `[v6]:port` -> (host, port or None)."""
    host, port = authority, None
    if authority.startswith("["):
        end = authority.find("]")
        if end > 0:
            host, rest = authority[1:end], authority[end + 1 :]
            if rest.startswith(":") and rest[1:].isdigit():
                port = int(rest[1:])
            return host, port
    name, sep, digits = authority.rpartition(":")
    if sep and digits.isdigit() and ":" not in name:
        host, port = name, int(digits)
    return host, port


def request_url_parts(req: WireRequest) -> tuple[str, str, int, str]:
    """(scheme, host, port, target) of a request, as a client addressed it; an absolute-form
    target (sent to proxies) gives its origin-form part, as mitmproxy records it."""
    scheme = req.scheme or ("https" if req.tls else "http")
    target = req.target
    authority = req.authority
    if "://" in target and not target.startswith("/"):
        # absolute-form, as clients send to proxies
        scheme, _, rest = target.partition("://")
        authority, slash, path = rest.partition("/")
        target = slash + path if slash else "/"
    elif authority is None:
        authority = req.header("host")
    host, port = split_authority(authority) if authority else (req.server[0], None)
    return scheme, host or req.server[0], port or req.server[1], target


def address_text(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def packet_exchange(
    req: WireRequest,
    resp: WireResponse | None,
    *,
    exchange_id: str,
    session_id: str,
    seq: int,
    capture_id: str,
    scrubber: CredentialScrubber,
    max_body: int,
    error: str | None = None,
) -> Exchange:
    scheme, host, port, target = request_url_parts(req)
    path, raw_query = split_target(target)
    query = scrubber.query(query_pairs(raw_query))
    body, headers, undecodable = decode_content(req.body, req.headers)
    kept = keep_body(body, max_body)
    ex = Exchange(
        id=exchange_id,
        session_id=session_id,
        seq=seq,
        started_at=req.started_us,
        request_sent_at=req.ended_us,
        method=req.method,
        scheme=scheme,
        host=host,
        port=port,
        server_address=address_text(req.server),
        path=path or "/",
        query=query,
        request_target=scrubber.target(target, query),
        http_version=req.http_version,
        request_headers=scrubber.headers(headers),
        request_body=kept.body,
        request_body_truncated=kept.truncated,
        request_body_size=kept.size,
        request_body_undecodable=undecodable,
        capture_id=capture_id,
    )
    if resp is None:
        ex.error = error or NO_RESPONSE
        return ex
    ex.status = resp.status
    ex.reason = resp.reason
    if resp.body is None:
        ex.response_headers = scrubber.headers(resp.headers)
    else:
        body, headers, undecodable = decode_content(resp.body, resp.headers)
        kept = keep_body(body, max_body)
        ex.response_headers = scrubber.headers(headers)
        ex.response_body = kept.body
        ex.response_body_truncated = kept.truncated
        ex.response_body_size = kept.size
        ex.response_body_undecodable = undecodable
    ex.response_started_at = resp.started_us
    ex.response_ended_at = resp.ended_us
    ex.error = error
    return ex
