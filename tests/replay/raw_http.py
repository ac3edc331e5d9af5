"""A raw HTTP/1.1 loopback server for the transport tests: it answers each request with the
exact bytes of CANNED[path] (every framing, informational and broken answers) and records the
request bytes it received, per connection. Imported by name (see conftest)."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

from shadowtape.http.target import query_pairs, split_target
from shadowtape.replay.sender import OutgoingRequest, RequestParts, TargetMap, build_request

ZIPPED = gzip.compress(b'{"zipped": true}')
BIG = bytes(range(256)) * 400  # larger than a transport reads with the head

CANNED: dict[str, bytes] = {
    "/length": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A:  spaced  \r\n\r\nhello",
    "/chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n"
    ),
    "/continue": (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    ),
    "/big": b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(BIG)).encode() + b"\r\n\r\n" + BIG,
    "/nocontent": b"HTTP/1.1 204 No Content\r\n\r\n",
    "/head": b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
    "/close": b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbye",
    "/http10": b"HTTP/1.0 200 OK\r\n\r\nuntil the end",
    "/latin1": b"HTTP/1.1 200 OK\r\nX-Name: Jos\xe9\r\nContent-Length: 0\r\n\r\n",
    "/bad-status": b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n",
    "/bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "/short": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
    "/nothing": b"",
    "/gzip": (
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: "
        + str(len(ZIPPED)).encode()
        + b"\r\n\r\n"
        + ZIPPED
    ),
    "/slow": b"",  # answered after a pause, see RawServer
}
CLOSES_AFTER = {"/close", "/http10", "/short", "/nothing"}


class RawServer:
    """Answers each request with CANNED[path]; records (connection number, request bytes)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, bytes]] = []
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                self.seen.append((number, head + body))
                path = head.split(b" ", 2)[1].decode("latin-1").split("?")[0]
                if path == "/slow":
                    await asyncio.sleep(2)
                    writer.write(CANNED["/length"])
                else:
                    writer.write(CANNED.get(path, CANNED["/length"]))
                await writer.drain()
                if path in CLOSES_AFTER:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client hung up, or the test is over
        finally:
            writer.close()


async def with_raw_server(transport: Any, check: Any) -> Any:
    """Run `check(server, transport, base_url)` against a fresh RawServer; close both after."""
    server = RawServer()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        return await check(server, transport, f"http://127.0.0.1:{port}")
    finally:
        await transport.aclose()
        listener.close()
        await listener.wait_closed()


def request_for(
    url: str, method: str = "GET", body: bytes | None = None, headers: list | None = None
) -> OutgoingRequest:
    """What replay would send for a recorded request to `url` (its target verbatim)."""
    scheme, rest = url.split("://", 1)
    netloc, slash, target = rest.partition("/")
    path, query = split_target(slash + target)
    parts = RequestParts(
        method, None, path, query_pairs(query), headers or [("Accept", "*/*")], body, slash + target
    )
    return build_request(parts, TargetMap(f"{scheme}://{netloc}"))
