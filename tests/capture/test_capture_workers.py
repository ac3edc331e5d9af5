"""`capture --workers N`: real mitmproxy processes on one listen address, real clients.

Every exchange is recorded once under one capture id; a session whose requests reach both
processes keeps one id and one seq order; a worker killed mid-capture is reported, and the
other keeps serving."""

from __future__ import annotations

import os
import signal
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq

from shadowtape.schema import META_CAPTURE_WORKER, batch_to_rows, dataset_files, iter_batches


def _get(url: str, **headers: str) -> httpx.Response:
    """One request on a connection of its own: each is a new choice for the kernel."""
    return httpx.get(url, headers={"Connection": "close", **headers}, trust_env=False, timeout=30)


def _rows_by_worker(out: Path) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for f in dataset_files(out):
        worker = (pq.ParquetFile(f).metadata.metadata or {})[META_CAPTURE_WORKER.encode()]
        for batch in iter_batches(out, files=[f]):
            rows += [(worker.decode(), r) for r in batch_to_rows(batch)]
    return rows


def _workers_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if ppid == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def test_sessions_spanning_both_workers_come_out_whole_and_in_order(start_capture, upstream):
    cap = start_capture("--workers", "2")
    clients, steps = 6, 15

    def client(s: int) -> None:
        for k in range(steps):
            assert _get(f"{cap.url}/s/{s}/{k}", Cookie=f"session=c{s}").status_code == 200

    threads = [threading.Thread(target=client, args=(s,)) for s in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for k in range(10):  # no cookie: one session by client address, whichever process
        assert _get(f"{cap.url}/anon/{k}").status_code == 200
    rc, out, err = cap.stop(signal.SIGINT)
    assert rc == 0, (out, err)
    total = clients * steps + 10
    assert f"captured {total} exchanges" in out and "(2 proxy processes)" in out

    rows = _rows_by_worker(cap.out_dir)
    assert len(rows) == total == len(upstream.seen)  # every exchange once
    assert len({r["id"] for _, r in rows}) == total
    assert len({r["capture_id"] for _, r in rows}) == 1
    sessions: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for worker, r in rows:
        sessions[r["session_id"]].append((worker, r))
    assert len(sessions) == clients + 1
    spanning = 0
    for got in sessions.values():
        got.sort(key=lambda wr: wr[1]["seq"])
        steps_seen = [int(r["path"].rsplit("/", 1)[1]) for _, r in got]
        # seq is 0..n-1 and follows the order the client sent them in, on either process
        assert [r["seq"] for _, r in got] == list(range(len(got)))
        assert steps_seen == list(range(len(got)))
        spanning += len({w for w, _ in got}) == 2
    assert spanning >= clients // 2  # the kernel really spread the sessions over both


def test_a_killed_worker_is_reported_and_the_other_keeps_serving(start_capture, upstream):
    cap = start_capture("--workers", "2", "--roll-interval", "0.2")
    for k in range(20):
        assert _get(f"{cap.url}/before/{k}").status_code == 200
    workers = _workers_of(cap.proc.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    for k in range(20):  # the dead worker's socket is closed: the kernel sends these on
        assert _get(f"{cap.url}/after/{k}").status_code == 200
    rc, out, err = cap.stop(signal.SIGINT)
    assert rc == 1, (out, err)
    assert f"capture worker 1 of 2 (pid {workers[1]}) died (killed by SIGKILL)" in err
    assert "exchanges it had taken are not on disk" in err and "Traceback" not in err
    paths = {r["path"] for _, r in _rows_by_worker(cap.out_dir)}
    assert {f"/after/{k}" for k in range(20)} <= paths
