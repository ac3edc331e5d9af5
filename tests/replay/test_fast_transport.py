"""The fast HTTP/1.1 transport (asyncio Protocols + httptools) against raw loopback servers:
the exact request bytes on the wire (non-ASCII header values, raw targets: the OutgoingRequest
contract), every body framing, timeouts, TLS, and the same outcome as the h11 path for the
same answers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from raw_http import BIG, RawServer, request_for, with_raw_server  # the kit (see conftest)
from tls_testkit import self_signed

from shadowtape.replay.config import ReplayConfig, RetryPolicy, Timeouts
from shadowtape.replay.engine import Http1Engine, choose_engine, run_loop
from shadowtape.replay.fast_transport import FastHttp1Transport
from shadowtape.replay.guardrails import CircuitBreaker
from shadowtape.replay.sender import Sender

TIMEOUTS = Timeouts(connect=5.0, read=5.0, total=5.0)


async def _with_server(check: Any, timeouts: Timeouts = TIMEOUTS) -> Any:
    return await with_raw_server(FastHttp1Transport(4, timeouts), check)


async def _get(
    transport: FastHttp1Transport,
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: list[tuple[str, str]] | None = None,
    limit: int = 10**7,
) -> tuple[int, list[tuple[bytes, bytes]], bytes, str]:
    answer = await transport.exchange(request_for(url, method, body, headers), limit)
    if answer.streaming:
        response = answer.as_httpx()
        try:
            data = b"".join([c async for c in response.aiter_bytes()])
        finally:
            await response.aclose()
    else:
        assert answer.body is not None
        data = answer.body
    return answer.status, answer.headers, data, answer.http_version


def _run(check: Any, timeouts: Timeouts = TIMEOUTS, loop: str = "uvloop") -> Any:
    return run_loop(_with_server(check, timeouts), Http1Engine("httptools", loop))


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_body_framings_and_connection_reuse(loop: str) -> None:
    async def check(server: RawServer, transport: FastHttp1Transport, base: str) -> None:
        status, headers, body, version = await _get(transport, base + "/length")
        assert (status, body, version) == (200, b"hello", "HTTP/1.1")
        assert headers[-1] == (b"X-A", b"spaced")
        assert (await _get(transport, base + "/chunked"))[2] == b"hello, world"
        assert (await _get(transport, base + "/big"))[2] == BIG
        status, headers, body, _ = await _get(transport, base + "/continue")
        assert (status, body, headers) == (201, b"ok", [(b"Content-Length", b"2")])
        assert (await _get(transport, base + "/nocontent"))[::2] == (204, b"")
        assert (await _get(transport, base + "/head", method="HEAD"))[::2] == (200, b"")
        assert (await _get(transport, base + "/gzip"))[2] == b'{"zipped": true}'
        # HEAD needs a fresh parser afterwards; the connection itself is kept.
        assert (await _get(transport, base + "/length"))[2] == b"hello"
        assert {n for n, _ in server.seen} == {1}
        assert (await _get(transport, base + "/close"))[2] == b"bye"
        _, _, body, version = await _get(transport, base + "/http10")
        assert (version, body) == ("HTTP/1.0", b"until the end")
        await _get(transport, base + "/length")
        # `Connection: close` and an HTTP/1.0 answer were not reused: two new connections.
        assert [n for n, _ in server.seen][-3:] == [1, 2, 3]

    _run(check, loop=loop)


def test_the_exact_bytes_go_on_the_wire() -> None:
    """Targets verbatim (raw reserved characters, a non-ASCII byte, a bare key) and header
    names and values as the bytes they were recorded as (surrogate-escaped text)."""

    async def check(server: RawServer, transport: FastHttp1Transport, base: str) -> None:
        target = "/s/a%2Fb?gcrumb=rY3NFD4=&q=a,b&notify_self&d=/&n=\udce9"
        headers = [
            ("Accept", "*/*"),
            ("X-Name", "Jos\udce9"),  # latin-1 é as recorded
            ("X-Utf8", "José"),
            ("x-lower-Case", "  inner  spaces kept"),
            ("X-Dup", "1"),
            ("X-Dup", "2"),
        ]
        await _get(transport, base + target, "POST", b"pay\x00load", headers)
        (_, raw), *_ = server.seen
        port = base.rsplit(":", 1)[1]
        assert raw == (
            b"POST /s/a%2Fb?gcrumb=rY3NFD4=&q=a,b&notify_self&d=/&n=\xe9 HTTP/1.1\r\n"
            b"Host: 127.0.0.1:" + port.encode() + b"\r\n"
            b"Accept: */*\r\nX-Name: Jos\xe9\r\nX-Utf8: Jos\xc3\xa9\r\n"
            b"x-lower-Case:   inner  spaces kept\r\nX-Dup: 1\r\nX-Dup: 2\r\n"
            b"Content-Length: 8\r\n\r\npay\x00load"
        )

    _run(check)


def test_response_header_bytes_are_kept() -> None:
    async def check(server: RawServer, transport: FastHttp1Transport, base: str) -> None:
        _, headers, _, _ = await _get(transport, base + "/latin1")
        assert (b"X-Name", b"Jos\xe9") in headers

    _run(check)


def test_after_a_broken_answer_the_connection_is_not_reused() -> None:
    async def check(server: RawServer, transport: FastHttp1Transport, base: str) -> None:
        broken = ["/bad-status", "/bad-chunk", "/short", "/nothing"]
        for n, path in enumerate(broken, start=1):
            with pytest.raises(httpx.RemoteProtocolError):
                await _get(transport, base + path)
            await _get(transport, base + "/length")
            assert server.connections == n + 1

    _run(check)


def test_a_body_past_the_limit_is_cut_and_the_connection_dropped() -> None:
    async def check(server: RawServer, transport: FastHttp1Transport, base: str) -> None:
        answer = await transport.exchange(request_for(base + "/big"), 1000)
        assert (answer.body, answer.truncated) == (BIG[:1000], True)
        await _get(transport, base + "/length")
        assert server.connections == 2

    _run(check)


def test_a_silent_server_times_out_on_the_deadline() -> None:
    async def check(server: RawServer, transport: FastHttp1Transport, base: str) -> None:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await _get(transport, base + "/slow")
        assert time.monotonic() - started < 1.5

    first = Timeouts(connect=1.0, read=5.0, total=0.4)
    _run(check, first)

    async def read_first(server: RawServer, transport: FastHttp1Transport, base: str) -> None:
        with pytest.raises(httpx.ReadTimeout):
            await transport.exchange(request_for(base + "/slow"), 100)

    _run(read_first, Timeouts(connect=1.0, read=0.3, total=5.0))


def test_nobody_listening_is_a_connect_error(dead_url: str) -> None:
    async def check() -> None:
        transport = FastHttp1Transport(2, TIMEOUTS)
        try:
            with pytest.raises(httpx.ConnectError):
                await transport.exchange(request_for(dead_url + "/"), 100)
        finally:
            await transport.aclose()

    run_loop(check(), Http1Engine("httptools", "uvloop"))


def _outcomes(base: str, engine: str, paths: list[str]) -> list[tuple]:
    config = ReplayConfig(
        source="unused",
        target=base,
        out="unused",
        http1_engine=engine,
        http="1.1",
        retry=RetryPolicy(attempts=1),
        max_body=1000,
    )

    async def main() -> list[tuple]:
        sender = Sender(config, CircuitBreaker(config.breaker))
        out = []
        try:
            for path in paths:
                method = "HEAD" if path == "/head" else "GET"
                o = await sender.send(request_for(base + path, method), path)
                out.append(
                    (
                        o.status,
                        o.reason,
                        o.http_version,
                        o.headers,
                        o.body,
                        o.body_truncated,
                        o.undecodable,
                        (o.error or "").split(":")[0],
                    )  # fmt: skip
                )
        finally:
            await sender.aclose()
        return out

    return run_loop(main(), choose_engine(engine))


def test_the_sender_records_the_same_outcome_on_both_engines() -> None:
    paths = ["/length", "/chunked", "/continue", "/big", "/nocontent", "/head", "/gzip"]
    paths += ["/close", "/http10", "/latin1", "/short", "/nothing", "/bad-status", "/bad-chunk"]

    async def serve() -> tuple[asyncio.AbstractServer, str]:
        server = RawServer()
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        return listener, f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"

    import threading

    loop = asyncio.new_event_loop()
    listener, base = loop.run_until_complete(serve())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        fast = _outcomes(base, "httptools", paths)
        lean = _outcomes(base, "h11", paths)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    for path, a, b in zip(paths, fast, lean, strict=True):
        assert a == b, path
    assert fast[paths.index("/big")][4:6] == (BIG[:1000], True)


def test_tls_connections_are_kept_alive(tmp_path: Path) -> None:
    import ssl

    from shadowtape.replay.transport import tls_context

    cert, key = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)

    async def check() -> None:
        server = RawServer()
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=server_tls)
        port = listener.sockets[0].getsockname()[1]
        transport = FastHttp1Transport(2, TIMEOUTS, ssl_context=tls_context(verify=False))
        try:
            for _ in range(3):
                status, _, body, _ = await _get(transport, f"https://127.0.0.1:{port}/chunked")
                assert (status, body) == (200, b"hello, world")
            assert server.connections == 1
        finally:
            await transport.aclose()
            listener.close()
            await listener.wait_closed()

    run_loop(check(), Http1Engine("httptools", "uvloop"))


def test_a_replay_sends_the_recorded_bytes_and_fails_only_the_unsendable_row(
    tmp_path: Path, staging
) -> None:
    import dataclasses

    from replay_testkit import exchange, write_dataset

    from shadowtape.http.target import query_pairs
    from shadowtape.replay import run_replay
    from shadowtape.replay.config import Timing
    from shadowtape.schema import batch_to_rows, iter_batches

    raw_query = "x=%2C&bare&n=\udce9"
    recorded = exchange(
        "s1", 0, 0, "GET", "/s/a/b", query=query_pairs(raw_query), headers=[("X-Name", "Jos\udce9")]
    )
    records = [
        dataclasses.replace(recorded, request_target="/s/a%2Fb?" + raw_query),
        exchange("s1", 1, 10, "GET", "/bad", headers=[("X-Bad", "1\r\nInjected: yes")]),
        exchange("s1", 2, 20, "GET", "/after"),
    ]
    src = write_dataset(tmp_path / "in", records)
    config = ReplayConfig(
        str(src), staging.url, str(tmp_path / "out"), timing=Timing("max"), correlate="off"
    )
    summary = run_replay(dataclasses.replace(config, handle_signals=False))
    first, after = staging.received  # the unsendable one never reached the server
    # http.server reads the request line and headers as latin-1: these are the wire bytes.
    assert first.path.encode("latin-1") == b"/s/a%2Fb?x=%2C&bare&n=\xe9"
    assert first.header("x-name").encode("latin-1") == b"Jos\xe9"
    assert after.path == "/after"
    batches = iter_batches(tmp_path / "out", "results")
    rows = {r["seq"]: r for b in batches for r in batch_to_rows(b)}
    assert rows[1]["outcome"] == "failed" and "line break" in rows[1]["staging_error"]
    assert (summary.counts.sent, summary.counts.failed) == (2, 1)
