"""HTTP messages as tshark framed them, read the way mitmproxy reads them: pure, no I/O.

Bytes become wire text (`shadowtape.http.headers`: UTF-8 with surrogate escapes, as the addon
records them), so no byte is lost. The header block is tshark's exact bytes; this module only
splits it into fields, with mitmproxy's rules (a folded line continues the previous value;
values lose surrounding whitespace), so a packet capture and an addon capture of the same
traffic give the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shadowtape.capture.packet_records import H2Frame, Http1Message
from shadowtape.http.headers import decode, get, pairs_from_fields
from shadowtape.schema import Pairs

Address = tuple[str, int]
_NO_BODY_STATUS = frozenset({204, 304})


@dataclass(slots=True)
class WireRequest:
    """A request as seen on the wire, before credentials are scrubbed."""

    method: str
    target: str
    http_version: str
    headers: Pairs
    body: bytes
    started_us: int
    ended_us: int
    client: Address
    server: Address
    tls: bool
    # Where it came from, for a reproducible id: input name, first frame, index in the frame.
    origin: tuple[str, int, int]
    # HTTP/2 carries these as pseudo-headers; HTTP/1 has them in the target or Host.
    scheme: str | None = None
    authority: str | None = None
    head_bytes: int = 0

    def header(self, name: str) -> str | None:
        return get(self.headers, name)


@dataclass(slots=True)
class WireResponse:
    status: int
    reason: str
    http_version: str
    headers: Pairs
    body: bytes | None
    started_us: int
    ended_us: int
    interim: bool = False


@dataclass(slots=True)
class ParsedHead:
    start: list[bytes]
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def parse_head(head: bytes) -> ParsedHead | None:
    """The start line's words and the header fields of an HTTP/1 header block, or None when
    the start line is not a request or status line."""
    lines = head.split(b"\n")
    start = lines[0].rstrip(b"\r").split()
    if len(start) < 2:
        return None
    parsed = ParsedHead(start)
    out = parsed.headers
    for line in lines[1:]:
        line = line.rstrip(b"\r")
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if out:
                name, value = out[-1]
                out[-1] = (name, value + b"\r\n " + line.strip())
            continue
        name, _, value = line.partition(b":")
        out.append((name, value.strip()))
    return parsed


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value.split(b",")[0])
            except ValueError:
                return None
    return None


def _chunked(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(
        name.lower() == b"transfer-encoding" and b"chunked" in value.lower()
        for name, value in headers
    )


def message_body(msg: Http1Message, headers: list[tuple[bytes, bytes]], is_request: bool) -> bytes:
    """The body as framed on the wire, chunked coding undone, content coding left alone."""
    if msg.body is not None:
        return msg.body
    if msg.chunks is not None:
        return b"".join(msg.chunks)
    rest = msg.rest or b""
    length = _content_length(headers)
    if length is not None:
        return rest[:length]
    if is_request or _chunked(headers):
        # A request with neither header has no body; what follows is the next request.
        return b""
    return rest


def http1_request(
    msg: Http1Message,
    client: Address,
    server: Address,
    origin: tuple[str, int, int],
) -> WireRequest | None:
    head = parse_head(msg.head)
    if head is None or len(head.start) != 3:
        return None
    method, target, version = head.start
    request = WireRequest(
        method=decode(method).upper(),
        target=decode(target),
        http_version=decode(version),
        headers=pairs_from_fields(head.headers),
        body=message_body(msg, head.headers, True),
        started_us=msg.first_us,
        ended_us=msg.last_us,
        client=client,
        server=server,
        tls=msg.tls,
        origin=origin,
        head_bytes=len(msg.head),
    )
    return request


def http1_response(msg: Http1Message, request_method: str | None) -> WireResponse | None:
    head = parse_head(msg.head)
    if head is None or not head.start[0].startswith(b"HTTP/"):
        return None
    try:
        status = int(head.start[1])
    except ValueError:
        return None
    # The reason phrase is everything after the status code, spaces included.
    line = msg.head.split(b"\n", 1)[0].rstrip(b"\r")
    reason = line.split(b" ", 2)[2] if line.count(b" ") >= 2 else b""
    no_body = request_method == "HEAD" or status < 200 or status in _NO_BODY_STATUS
    return WireResponse(
        status=status,
        # mitmproxy reads the phrase as ISO-8859-1, as RFC 9112 allows.
        reason=reason.decode("latin-1"),
        http_version=decode(head.start[0]),
        headers=pairs_from_fields(head.headers),
        body=b"" if no_body else message_body(msg, head.headers, False),
        started_us=msg.first_us,
        ended_us=msg.last_us,
        interim=100 <= status < 200 and status != 101,
    )


@dataclass(slots=True)
class H2Headers:
    """A decoded HTTP/2 header block: pseudo-headers apart, the rest in order."""

    pseudo: dict[str, str]
    headers: Pairs


def h2_headers(frame: H2Frame) -> H2Headers:
    pseudo: dict[str, str] = {}
    headers: Pairs = []
    for name, value in zip(frame.names, frame.values, strict=True):
        if name.startswith(b":"):
            pseudo.setdefault(decode(name), decode(value))
        else:
            headers.append((decode(name), decode(value)))
    return H2Headers(pseudo, headers)
