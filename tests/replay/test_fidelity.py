"""Replay sends the recorded bytes: raw targets, header bytes of any encoding, on HTTP/1.1 and
HTTP/2; a request that cannot be sent is one failed row and the run goes on."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from click.testing import CliRunner
from replay_testkit import exchange, mitmdump_reverse, write_dataset

from shadowtape.cli import main
from shadowtape.http.headers import decode
from shadowtape.http.target import query_pairs, split_target
from shadowtape.schema import batch_to_rows, iter_batches

ODD_TARGET = b'/d/%zz/caf\xc3\xa9?a=|"&b=%zz&bare&c=\xe9&d=rY3NFD4=&e=%2C,'


def _results(out: Path) -> list[dict[str, Any]]:
    return [r for b in iter_batches(out, "results") for r in batch_to_rows(b)]


def _raw(session: str, seq: int, target: bytes, headers: list[tuple[bytes, bytes]], **kw: Any):
    text = decode(target)
    path, query = split_target(text)
    ex = exchange(session, seq, seq * 10, "GET", path, query=query_pairs(query), **kw)
    ex.request_target = text
    ex.request_headers += [(decode(n), decode(v)) for n, v in headers]
    return ex


def _replay(src: Path, target: str, out: Path, *extra: str):
    args = ["replay", str(src), "--target", target, "--out", str(out), "--speed", "max"]
    return CliRunner().invoke(main, [*args, "--correlate", "off", *extra], catch_exceptions=False)


def test_one_unsendable_request_is_a_failed_row_and_the_run_goes_on(tmp_path, raw_staging):
    records = [
        _raw("s1", 0, b"/a?x=1", []),
        _raw("s1", 1, b"/latin", [(b"X-Name", b"Jos\xe9"), (b"X-Obs", b"\x80\xff obs")]),
        _raw("s1", 2, b"/b c", []),  # a space in the target cannot be framed
        _raw("s1", 3, b"/e", [(b"X-Split", b"one\r\nInjected: yes")]),
        _raw("s1", 4, ODD_TARGET, [(b"N\xe4me", b"v")]),
        _raw("s2", 0, b"/other-session", []),
    ]
    src = write_dataset(tmp_path / "in", records)
    done = _replay(src, raw_staging.url, tmp_path / "out")
    assert done.exit_code == 0, done.output
    assert "sent 4 (2xx 4), failed 2" in done.output
    assert "not sendable (failed rows; staging_error says why): 2" in done.output
    lines = [r.line for r in raw_staging.received]
    assert sorted(lines) == sorted(
        [
            b"GET /a?x=1 HTTP/1.1",
            b"GET /latin HTTP/1.1",
            b"GET " + ODD_TARGET + b" HTTP/1.1",
            b"GET /other-session HTTP/1.1",
        ]
    )
    by_line = {r.line: r for r in raw_staging.received}
    latin = by_line[b"GET /latin HTTP/1.1"]
    assert (b"X-Name", b"Jos\xe9") in latin.fields() and (
        b"X-Obs",
        b"\x80\xff obs",
    ) in latin.fields()
    assert (b"N\xe4me", b"v") in by_line[b"GET " + ODD_TARGET + b" HTTP/1.1"].fields()
    assert not any(b"Injected" in h for r in raw_staging.received for h in r.headers)
    rows = {(r["session_id"], r["seq"]): r for r in _results(tmp_path / "out")}
    assert len(rows) == 6
    space, split = rows[("s1", 2)], rows[("s1", 3)]
    assert space["outcome"] == split["outcome"] == "failed"
    assert space["staging_error"] == (
        "not sent: request target b'/b c' holds whitespace or NUL (or is empty)"
    )
    assert "line break" in split["staging_error"] and split["attempts"] == 0
    assert space["target_url"] == raw_staging.url + "/b c"
    assert {k: r["outcome"] for k, r in rows.items() if k not in (("s1", 2), ("s1", 3))} == {
        ("s1", 0): "sent",
        ("s1", 1): "sent",
        ("s1", 4): "sent",
        ("s2", 0): "sent",
    }


def test_an_exception_preparing_one_request_fails_that_row_only(tmp_path, raw_staging, monkeypatch):
    """Whatever goes wrong with one row (here: the request builder raising, as a bug would),
    that row is failed with the reason and the run completes; the scheduler no longer stops
    the run and drops every results row."""
    import shadowtape.replay.runner as runner

    real = runner.parts_of

    def choke_on_seq_1(row):
        if row["seq"] == 1:
            raise RuntimeError("cannot read this row")
        return real(row)

    monkeypatch.setattr(runner, "parts_of", choke_on_seq_1)
    src = write_dataset(tmp_path / "in", [_raw("s1", i, f"/r{i}".encode(), []) for i in range(3)])
    done = _replay(src, raw_staging.url, tmp_path / "out")
    assert done.exit_code == 0, done.output
    assert sorted(r.line for r in raw_staging.received) == [
        b"GET /r0 HTTP/1.1",
        b"GET /r2 HTTP/1.1",
    ]
    failed = [r for r in _results(tmp_path / "out") if r["outcome"] == "failed"]
    assert [(r["seq"], r["staging_error"]) for r in failed] == [
        (1, "not sent: RuntimeError: cannot read this row")
    ]


# --- HTTP/2 (prior knowledge on cleartext): the :path is the recorded target ---------------


class H2Recorder:
    """An h2c server that keeps each request's header block exactly as decoded from HPACK."""

    def __init__(self) -> None:
        self.requests: list[list[tuple[bytes, bytes]]] = []
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
        )
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        while data := await reader.read(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    self.requests.append(list(event.headers))
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    conn.send_headers(
                        event.stream_id, [(b":status", b"200"), (b"content-length", b"2")]
                    )
                    conn.send_data(event.stream_id, b"ok", end_stream=True)
            writer.write(conn.data_to_send())
            await writer.drain()
        writer.close()


@pytest.fixture
def h2_staging() -> Iterator[H2Recorder]:
    recorder = H2Recorder()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop = loop.create_future()

    async def main() -> None:
        server = await asyncio.start_server(recorder.handle, "127.0.0.1", 0)
        recorder.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        started.set()
        async with server:
            await stop

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    assert started.wait(10)
    yield recorder
    loop.call_soon_threadsafe(stop.set_result, None)
    thread.join(10)


def test_http2_sends_the_recorded_target_as_path_and_header_bytes_as_recorded(tmp_path, h2_staging):
    records = [
        _raw("s1", 0, ODD_TARGET, [(b"X-Name", b"Jos\xe9"), (b"X-Dup", b"1"), (b"X-Dup", b"2")]),
        _raw("s1", 1, b"/plain?q=1", [(b"Cookie", b"a=1; b=2")]),
    ]
    src = write_dataset(tmp_path / "in", records)
    done = _replay(src, h2_staging.url, tmp_path / "out", "--http", "2")
    assert done.exit_code == 0, done.output
    assert "sent 2 (2xx 2), failed 0" in done.output
    odd, plain = h2_staging.requests
    pseudo = {n: v for n, v in odd if n.startswith(b":")}
    assert pseudo[b":path"] == ODD_TARGET
    assert pseudo[b":authority"] == h2_staging.url.removeprefix("http://").encode()
    assert pseudo[b":method"] == b"GET" and pseudo[b":scheme"] == b"http"
    fields = [(n, v) for n, v in odd if not n.startswith(b":")]
    # Recorded order and bytes; names lower-cased (HTTP/2 requires it): a documented rewrite.
    assert fields[:4] == [
        (b"x-session", b"s1"),
        (b"x-name", b"Jos\xe9"),
        (b"x-dup", b"1"),
        (b"x-dup", b"2"),
    ]
    assert [v for n, v in plain if n == b"cookie"] == [b"a=1; b=2"]


def test_http11_over_tls_in_auto_mode_keeps_the_bytes(tmp_path, raw_staging):
    """A TLS server that does not speak HTTP/2: `--http auto` sends HTTP/1.1 through the lean
    transport (not httpcore's h11 writer, which would refuse the raw target and move Host)."""
    records = [_raw("s1", 0, ODD_TARGET, [(b"X-Name", b"Jos\xe9")])]
    src = write_dataset(tmp_path / "in", records)
    with mitmdump_reverse(raw_staging.url, tmp_path / "mitm", "http2=false") as port:
        done = _replay(src, f"https://127.0.0.1:{port}", tmp_path / "out", "--insecure")
    assert done.exit_code == 0, done.output
    (got,) = raw_staging.received
    assert got.line == b"GET " + ODD_TARGET + b" HTTP/1.1"
    assert got.fields()[:3] == [
        (b"Host", raw_staging.url.removeprefix("http://").encode()),  # mitmproxy's rewrite
        (b"X-Session", b"s1"),
        (b"X-Name", b"Jos\xe9"),
    ]
    (row,) = _results(tmp_path / "out")
    assert row["staging_http_version"] == "HTTP/1.1"


def test_keep_host_without_a_recorded_host_sends_the_recorded_authority():
    from shadowtape.replay.correlate import parts_of
    from shadowtape.replay.sender import TargetMap, build_request

    # An HTTP/2 recording: no Host header, the authority kept as host and port.
    row = {
        "method": "GET",
        "scheme": "https",
        "host": "api.example.com",
        "port": 8443,
        "path": "/x",
        "query": [],
        "request_target": "/x",
        "request_headers": [("accept", "*/*")],
        "request_body": None,
    }
    targets = TargetMap("http://127.0.0.1:9000")
    kept = build_request(parts_of(row), targets, keep_host=True)
    assert kept.headers == [(b"Host", b"api.example.com:8443"), (b"accept", b"*/*")]
    plain = build_request(parts_of(row), targets)
    assert plain.headers[0] == (b"Host", b"127.0.0.1:9000")
