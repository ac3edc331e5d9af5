"""When the writer cannot keep up, flows are dropped and counted; the proxy keeps serving."""

from __future__ import annotations

import os
import signal
import threading

import httpx
import pytest

from shadowtape.capture.addon import ShadowtapeCapture
from shadowtape.capture.inspection import inspect_dataset
from shadowtape.capture.proxy import ProxySettings, run_capture
from shadowtape.capture.writer import CaptureWriter, ExchangeSink

QUEUE = 2
REQUESTS = 20


class StalledWriter(CaptureWriter):
    """A writer whose disk is stuck until the gate opens (a slow or full volume)."""

    def __init__(self, sink: ExchangeSink, gate: threading.Event) -> None:
        super().__init__(sink, QUEUE)
        self.gate = gate

    def _run(self) -> None:
        self.gate.wait()
        super()._run()


def test_queue_full_drops_are_counted_and_the_proxy_keeps_serving(
    upstream, tmp_path, monkeypatch, capture_env
):
    monkeypatch.setenv("SHADOWTAPE_KEY", capture_env["SHADOWTAPE_KEY"])
    monkeypatch.setenv("HOME", capture_env["HOME"])
    gate = threading.Event()
    addon = ShadowtapeCapture(writer_factory=lambda sink, _size: StalledWriter(sink, gate))
    statuses: list[int] = []
    failures: list[BaseException] = []

    def traffic(url: str) -> None:
        try:
            with httpx.Client(timeout=30.0) as c:
                statuses.extend(c.get(f"{url}/req/{i}").status_code for i in range(REQUESTS))
        except BaseException as exc:  # reported by the test, not lost in a thread
            failures.append(exc)
        finally:
            gate.set()
            # The proxy stops on SIGTERM, as in production.
            os.kill(os.getpid(), signal.SIGTERM)

    def on_listening(url: str) -> None:
        threading.Thread(target=traffic, args=(url,), daemon=True).start()

    out = tmp_path / "raw"
    summary = run_capture(
        ProxySettings(upstream.url, "127.0.0.1", 0),
        {"shadowtape_out": str(out)},
        on_listening=on_listening,
        addon=addon,
    )
    if failures:
        raise failures[0]
    assert statuses == [200] * REQUESTS
    assert len(upstream.seen) == REQUESTS
    c = summary.counters
    assert c.written == QUEUE
    assert c.dropped_queue_full == REQUESTS - QUEUE
    report = inspect_dataset(out)
    assert report.rows == QUEUE
    assert report.capture_counters["dropped_queue_full"] == REQUESTS - QUEUE


def test_writer_offer_never_blocks_and_counts(tmp_path):
    from shadowtape.capture.writer import CaptureCounters, WriterSettings
    from shadowtape.schema import Exchange

    sink = ExchangeSink(WriterSettings(tmp_path, "cid", {}), CaptureCounters())
    writer = CaptureWriter(sink, queue_size=3)  # not started: nothing drains the queue
    ex = Exchange(id="x", session_id="s", seq=0, started_at=1, method="GET")
    accepted = [writer.offer(ex) for _ in range(10)]
    assert accepted == [True] * 3 + [False] * 7
    assert sink.counters.dropped_queue_full == 7
    files = writer.close()  # what was queued still lands
    assert sink.counters.written == 3 and len(files) == 1
    # The byte bound: big bodies fill the buffer before the count does.
    sink = ExchangeSink(WriterSettings(tmp_path / "b", "cid", {}), CaptureCounters())
    writer = CaptureWriter(sink, queue_size=100, buffer_bytes=2500)
    big = Exchange(
        id="y", session_id="s", seq=0, started_at=1, method="GET", response_body=b"b" * 1000
    )
    assert [writer.offer(big) for _ in range(4)] == [True, True, False, False]
    writer.close()
    assert sink.counters.written == 2 and sink.counters.dropped_queue_full == 2
    with pytest.raises(ValueError):
        CaptureWriter(sink, queue_size=0)
