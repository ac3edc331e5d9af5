"""The lean HTTP/1.1 transport (asyncio streams + h11) against a raw loopback server that
answers with exact bytes: body framings (length, chunked, close), informational answers,
bodiless answers, connection reuse, and requests that must never reach the wire."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from raw_http import BIG, RawServer, request_for, with_raw_server  # the kit (see conftest)

from shadowtape.replay.h11transport import H11Transport
from shadowtape.replay.sender import OutgoingRequest, UnsendableRequest

TIMEOUTS = {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}


async def _with_server(check: Any) -> Any:
    return await with_raw_server(H11Transport(4), check)


async def _get(
    transport: H11Transport, url: str, method: str = "GET", body: bytes | None = None
) -> tuple[httpx.Response, bytes]:
    response = await transport.send(request_for(url, method, body), TIMEOUTS)
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
        request_for("http://127.0.0.1:1/length", headers=[("X-A", "1\r\n2")])
    with pytest.raises(UnsendableRequest, match="line break"):
        OutgoingRequest("GET", "http", "h", 80, b"/", [(b"X-A", b"1\n2")], b"", "http://h/")
