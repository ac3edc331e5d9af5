"""The lean HTTP/1.1 transport against a raw loopback server that answers with exact bytes:
body framings (length, chunked, close), informational answers, bodiless answers, connection
reuse, and requests that must never reach the wire."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

import httpx
import pytest

from shadowtape.replay.http1 import (
    ProtocolViolation,
    body_framing,
    encode_request,
    parse_head,
    request_head,
)
from shadowtape.replay.http1transport import Http1Transport

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
    transport = Http1Transport(4)
    try:
        return await check(server, transport, f"http://127.0.0.1:{port}")
    finally:
        await transport.aclose()
        listener.close()
        await listener.wait_closed()


async def _get(
    transport: Http1Transport, url: str, method: str = "GET", body: bytes | None = None
) -> tuple[httpx.Response, bytes]:
    response = await transport.send(method, url, [("Accept", "*/*")], body, TIMEOUTS)
    try:
        data = b"".join([c async for c in response.aiter_bytes()])
    finally:
        await response.aclose()
    return response, data


def test_body_framings_and_connection_reuse() -> None:
    async def check(server: RawServer, transport: Http1Transport, base: str) -> None:
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
    async def check(server: RawServer, transport: Http1Transport, base: str) -> None:
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
        ("/short", "closed the connection"),
        ("/nothing", "without sending a response"),
    ],
)
def test_broken_answers_raise_httpx_protocol_errors(path: str, error: str) -> None:
    async def check(server: RawServer, transport: Http1Transport, base: str) -> None:
        with pytest.raises(httpx.RemoteProtocolError, match=error):
            await _get(transport, base + path)
        # The connection is not reused after a broken answer.
        await _get(transport, base + "/length")
        assert server.connections == 2

    asyncio.run(_with_server(check))


def test_a_line_break_in_a_header_never_reaches_the_wire() -> None:
    with pytest.raises(ProtocolViolation, match="Illegal header"):
        encode_request(b"GET", b"/", [(b"Host", b"h"), (b"X-A", b"1\r\nX-Injected: 1")], b"")
    with pytest.raises(ProtocolViolation, match="Illegal header"):
        encode_request(b"GET", b"/", [(b"Host", b"h"), (b"X-A", b" padded")], b"")
    with pytest.raises(ProtocolViolation, match="Host"):
        encode_request(b"GET", b"/", [(b"Accept", b"*/*")], b"")
    with pytest.raises(ProtocolViolation, match="target"):
        encode_request(b"GET", b"/a b", [(b"Host", b"h")], b"")

    async def check(server: RawServer, transport: Http1Transport, base: str) -> None:
        with pytest.raises(httpx.LocalProtocolError):
            await transport.send("GET", base + "/length", [("X-A", "1\r\n2")], None, TIMEOUTS)
        assert server.seen == []

    asyncio.run(_with_server(check))


def test_request_head_matches_what_httpx_would_send() -> None:
    urls = [
        "http://127.0.0.1:8080/items/7?a=1&b=x+y&a=2",
        "http://127.0.0.1:80/",
        "http://Example.COM/a/./b",
        "http://h/a/../b?x",
        "http://h/a%20b",
        "http://h/a b",
        "http://h/\u00fc",
        "http://h/a?x=%zz",
        "http://h",
        "http://h/.well-known/x",
        "http://h/a/..",
        "http://[::1]:8080/x",
        "https://h:443/p?q=[1]",
        "http://h/p#f",
        "http://h/~user/x;y=1",
    ]
    for url in urls:
        for method, headers, body in [
            ("GET", [("Accept", "x")], None),
            ("POST", [("Host", "zz")], b""),
            ("PUT", [], b"abc"),
        ]:
            ref = httpx.Request(method, url, headers=headers, content=body)
            port = ref.url.port or (443 if ref.url.scheme == "https" else 80)
            expected = ((ref.url.scheme, ref.url.host, port), ref.url.raw_path, ref.headers.raw)
            assert request_head(method, url, headers, body) == expected, (url, method)


def test_framing_rules() -> None:
    def framing(head: bytes, method: bytes = b"GET") -> tuple[str, int, bool]:
        f = body_framing(parse_head(head), method)
        return f.mode, f.length, f.keep_alive

    assert framing(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n") == ("length", 3, True)
    assert framing(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", b"HEAD") == ("length", 0, True)
    assert framing(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n")[:2] == ("length", 0)
    chunked = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    assert framing(chunked)[0] == "chunked"
    assert framing(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\n\r\n") == (
        "close",
        0,
        False,
    )
    with pytest.raises(ProtocolViolation):
        framing(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n")
    with pytest.raises(ProtocolViolation):
        framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n")
    with pytest.raises(ProtocolViolation):
        parse_head(b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n")
