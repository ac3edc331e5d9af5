"""The lean HTTP/1.1 transport (asyncio streams + h11) against a raw loopback server that
answers with exact bytes: body framings (length, chunked, close), informational answers,
bodiless answers, connection reuse, and requests that must never reach the wire."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

import httpx
import pytest

from shadowtape.http.target import query_pairs, split_target
from shadowtape.replay.h11transport import H11Transport
from shadowtape.replay.sender import (
    OutgoingRequest,
    RequestParts,
    TargetMap,
    UnsendableRequest,
    build_request,
)

TIMEOUTS = {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}
ZIPPED = gzip.compress(b'{"zipped": true}')
BIG = bytes(range(256)) * 400  # larger than the transport reads with the head

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
                path = head.split(b" ", 2)[1].decode().split("?")[0]
                writer.write(CANNED[path])
                await writer.drain()
                if path in CLOSES_AFTER:
                    break
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()


async def _with_server(check: Any) -> Any:
    server = RawServer()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    transport = H11Transport(4)
    try:
        return await check(server, transport, f"http://127.0.0.1:{port}")
    finally:
        await transport.aclose()
        listener.close()
        await listener.wait_closed()


def _request(
    url: str, method: str = "GET", body: bytes | None = None, headers: list | None = None
) -> OutgoingRequest:
    scheme, rest = url.split("://", 1)
    netloc, slash, target = rest.partition("/")
    path, query = split_target(slash + target)
    parts = RequestParts(
        method, None, path, query_pairs(query), headers or [("Accept", "*/*")], body, slash + target
    )
    return build_request(parts, TargetMap(f"{scheme}://{netloc}"))


async def _get(
    transport: H11Transport, url: str, method: str = "GET", body: bytes | None = None
) -> tuple[httpx.Response, bytes]:
    response = await transport.send(_request(url, method, body), TIMEOUTS)
    try:
        data = b"".join([c async for c in response.aiter_bytes()])
    finally:
        await response.aclose()
    return response, data


def test_body_framings_and_connection_reuse() -> None:
    async def check(server: RawServer, transport: H11Transport, base: str) -> None:
        r, body = await _get(transport, base + "/length")
        assert (r.status_code, body) == (200, b"hello")
        assert r.headers.raw[-1] == (b"X-A", b"spaced")
        assert r.http_version == "HTTP/1.1" and r.reason_phrase == "OK"
        r, body = await _get(transport, base + "/chunked")
        assert body == b"hello, world"
        r, body = await _get(transport, base + "/big")
        assert body == BIG
        r, body = await _get(transport, base + "/continue")
        assert (r.status_code, body) == (201, b"ok")
        r, body = await _get(transport, base + "/nocontent")
        assert (r.status_code, body) == (204, b"")
        r, body = await _get(transport, base + "/head", method="HEAD")
        assert (r.status_code, body) == (200, b"")
        r, body = await _get(transport, base + "/gzip")
        assert body == b'{"zipped": true}'
        # All of the above kept one keep-alive connection.
        assert {n for n, _ in server.seen} == {1}
        r, body = await _get(transport, base + "/close")
        assert body == b"bye"
        r, body = await _get(transport, base + "/http10")
        assert (r.http_version, body) == ("HTTP/1.0", b"until the end")
        r, body = await _get(transport, base + "/length")
        # `Connection: close` and an HTTP/1.0 answer were not reused: two new connections.
        assert [n for n, _ in server.seen][-3:] == [1, 2, 3]

    asyncio.run(_with_server(check))


def test_request_bytes_on_the_wire() -> None:
    async def check(server: RawServer, transport: H11Transport, base: str) -> None:
        await _get(transport, base + "/length?a=1&b=x+y", method="POST", body=b"payload")
        (_, raw), *_ = server.seen
        port = base.rsplit(":", 1)[1]
        assert raw == (
            b"POST /length?a=1&b=x+y HTTP/1.1\r\nHost: 127.0.0.1:" + port.encode() + b"\r\n"
            b"Accept: */*\r\nContent-Length: 7\r\n\r\npayload"
        )

    asyncio.run(_with_server(check))


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/bad-status", "illegal status line"),
        ("/bad-chunk", "illegal chunk header"),
        ("/short", "without sending complete message body"),
        ("/nothing", "without sending a response"),
    ],
)
def test_broken_answers_raise_httpx_protocol_errors(path: str, error: str) -> None:
    async def check(server: RawServer, transport: H11Transport, base: str) -> None:
        with pytest.raises(httpx.RemoteProtocolError, match=error):
            await _get(transport, base + path)
        # The connection is not reused after a broken answer.
        await _get(transport, base + "/length")
        assert server.connections == 2

    asyncio.run(_with_server(check))


def test_a_line_break_in_a_header_never_reaches_the_wire() -> None:
    with pytest.raises(UnsendableRequest, match="line break"):
        _request("http://127.0.0.1:1/length", headers=[("X-A", "1\r\n2")])
    with pytest.raises(UnsendableRequest, match="line break"):
        OutgoingRequest("GET", "http", "h", 80, b"/", [(b"X-A", b"1\n2")], b"", "http://h/")
