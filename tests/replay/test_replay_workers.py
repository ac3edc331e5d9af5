"""`replay --workers N`: real worker processes against a real staging server on 127.0.0.1.

The results of N workers are the results of one process (row for row, timings aside); every
request arrives once and in session order; Ctrl-C, a tripped breaker and a killed worker are
seen by the whole run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from replay_testkit import exchange, shop_sessions, write_dataset

from shadowtape.cli.worker_opts import parse_workers
from shadowtape.errors import InputError
from shadowtape.replay import ReplayConfig, run_replay
from shadowtape.replay.config import RetryPolicy, Timing
from shadowtape.replay.plan import in_shard
from shadowtape.replay.workers import run_replay_workers, split_limit
from shadowtape.schema import batch_to_rows, dataset_files, dataset_metadata, iter_batches

TIMING_COLUMNS = {"scheduled_at", "sent_at", "first_byte_at", "done_at", "lateness_us"}


def _config(src: Path, target: str, out: Path, **kw: Any) -> ReplayConfig:
    kw.setdefault("timing", Timing("max"))
    kw.setdefault("correlate", "off")
    return ReplayConfig(str(src), target, str(out), handle_signals=False, **kw)


def _rows(out: Path) -> list[dict[str, Any]]:
    return [r for b in iter_batches(out, "results") for r in batch_to_rows(b)]


def _comparable(row: dict[str, Any]) -> dict[str, Any]:
    """A results row without what differs between any two runs: when, the random replay id,
    and the Date header of staging's answer."""
    kept = {k: v for k, v in row.items() if k not in TIMING_COLUMNS and k != "replay_id"}
    kept["staging_headers"] = [
        (n, v) for n, v in row["staging_headers"] or [] if n.lower() != "date"
    ]
    return kept


def _meta(out: Path) -> dict[str, Any]:
    return json.loads(dataset_metadata(out, "results")["shadowtape.replay"])


def _sessions(n: int, per: int, span_ms: float = 1000) -> list:
    records = []
    for s in range(n):
        for i in range(per):
            records.append(exchange(f"s{s}", i, s * 7 + i * span_ms / per, "GET", f"/s{s}/{i}"))
        if s % 4 == 0:  # a write, skipped without --allow-writes
            records.append(exchange(f"s{s}", per, s * 7 + span_ms, "POST", f"/s{s}/w", body=b"{}"))
    return records


def test_two_workers_write_the_results_one_process_writes(tmp_path: Path, staging) -> None:
    src = write_dataset(tmp_path / "in", _sessions(16, 6), row_group_rows=17)
    common = {"run_id": "run-0001", "noise_sample": 4, "limit": 70, "seed": 3}
    one = run_replay(_config(src, staging.url, tmp_path / "one", **common))
    first_send = len(staging.received)
    staging.received.clear()
    two = run_replay_workers(_config(src, staging.url, tmp_path / "two", **common), 2)

    # Every request arrived once, each session's in recorded order.
    assert len(staging.received) == first_send == two.counts.sent + two.counts.noise_sent
    ids = [r.header("x-shadowtape-replay-id") for r in staging.received]
    assert len(set(ids)) == len(ids)
    for session, got in staging.by_session().items():
        steps = [int(r.path.rsplit("/", 1)[1]) for r in got]
        assert steps == sorted(steps), session  # a noise twin repeats its step right after
    # Both workers sent: the sessions really were split.
    sent_sessions = {r.header("x-session") for r in staging.received}
    assert any(in_shard(s, 0, 2) for s in sent_sessions)
    assert any(in_shard(s, 1, 2) for s in sent_sessions)

    # Row for row the same results, the --limit and --noise-sample choices included.
    def key(r: dict[str, Any]) -> tuple[str, int]:
        return r["id"], r["replay_pass"]

    a = sorted(map(_comparable, _rows(tmp_path / "one")), key=key)
    b = sorted(map(_comparable, _rows(tmp_path / "two")), key=key)
    assert len(a) == len(b) == 16 * 6 + 4 + one.counts.noise_rows
    assert a == b
    assert one.counts.to_json() == two.counts.to_json()
    assert {r["outcome"] for r in a} == {"sent", "skipped"}
    assert one.counts.skipped["limit"] > 0 and two.counts.noise_sent > 0

    # One file, named as one process names it, with the run's summary in its footer.
    assert [f.name for f in dataset_files(tmp_path / "two")] == ["results-000001.parquet"]
    assert not [p for p in (tmp_path / "two").iterdir() if p.name.startswith(".")]
    meta = _meta(tmp_path / "two")
    assert meta["status"] == "complete" and meta["complete"] is True
    assert meta["counts"] == two.counts.to_json()
    assert meta["config"]["engine"] == {"name": "workers", "workers": 2}
    # Lateness comes from the merged distributions, not from the worst worker.
    assert two.lateness.total == two.counts.sent
    assert two.lateness_p99_us == round(two.lateness.quantile_us(0.99) or 0)


def test_correlation_rules_are_learned_once_and_shared(tmp_path: Path, staging) -> None:
    records = []
    for s in range(6):
        token = f"recorded-token-{s}-0123456789"
        auth = [("Authorization", f"Bearer {token}")]
        login = exchange(
            f"u{s}",
            0,
            s * 10,
            "POST",
            "/login",
            body=b'{"user": "u1"}',
            response_body=json.dumps({"token": token}).encode(),
        )
        records += [login, exchange(f"u{s}", 1, s * 10 + 5, "POST", "/logout", headers=auth)]
    src = write_dataset(tmp_path / "in", records)
    summary = run_replay_workers(
        _config(src, staging.url, tmp_path / "out", correlate="auto", allow_writes=True), 2
    )
    rows = _rows(tmp_path / "out")
    # Every logout carried the token staging minted in its own session.
    assert sorted(r["staging_status"] for r in rows) == [200] * 12
    assert sum(summary.counts.substitutions.values()) == 6
    assert _meta(tmp_path / "out")["correlation_rules"] == 1


def test_limit_shares_add_up_to_the_limit(tmp_path: Path) -> None:
    src = write_dataset(tmp_path / "in", _sessions(10, 5))
    config = _config(src, "http://127.0.0.1:9", tmp_path / "out", limit=23)
    assert sum(split_limit(config, 3)) == 23
    assert split_limit(_config(src, "http://127.0.0.1:9", tmp_path / "o", limit=0), 2) == [0, 0]
    assert sum(split_limit(_config(src, "http://x", tmp_path / "o", limit=10**6), 2)) == 50


def test_worker_counts_are_checked() -> None:
    assert parse_workers(None) == 1 and parse_workers("3") == 3
    assert parse_workers("auto") == len(os.sched_getaffinity(0))
    for bad in ("0", "-1", "many"):
        with pytest.raises(InputError, match="--workers"):
            parse_workers(bad)


def test_one_breaker_stops_every_worker(tmp_path: Path, staging) -> None:
    # Worker 0's sessions all hit a failing route; worker 1's are slow and still running
    # when worker 0's breaker opens.
    names = [f"b{i}" for i in range(40)]
    failing = [n for n in names if in_shard(n, 0, 2)][:3]
    slow = [n for n in names if in_shard(n, 1, 2)][:3]
    records = [exchange(s, i, i, "GET", f"/fail/{s}/{i}") for s in failing for i in range(20)]
    records += [exchange(s, i, i, "GET", f"/slow/{s}/{i}") for s in slow for i in range(40)]
    for s in failing:
        for i in range(20):
            staging.fail_first[f"/fail/{s}/{i}"] = 99
    staging.delay = 0.02
    src = write_dataset(tmp_path / "in", records)
    summary = run_replay_workers(
        _config(src, staging.url, tmp_path / "out", retry=RetryPolicy(attempts=1)), 2
    )
    assert summary.status == "circuit_open" and "error rate" in (summary.reason or "")
    rows = _rows(tmp_path / "out")
    assert len(rows) == len(records)  # every row accounted for
    slow_rows = [r for r in rows if r["path"].startswith("/slow/")]
    assert {r["skip_reason"] for r in slow_rows if r["outcome"] == "skipped"} == {"circuit_open"}
    assert sum(r["outcome"] == "sent" for r in slow_rows) < len(slow_rows)


# --- the CLI, as a user runs it: Ctrl-C and a killed worker ----------------------------------


def _start(src: Path, target: str, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "shadowtape", "replay", str(src), "--target", target]
    cmd += ["--out", str(out), "--correlate", "off", "--workers", "2", *extra]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid and b"spawn_main" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return sorted(found)


def _midway(proc: subprocess.Popen, staging, n: int, act: Any) -> tuple[bytes, bytes]:
    """Once staging has seen `n` requests, `act()`; then the run's output."""
    try:
        deadline = time.monotonic() + 60
        while len(staging.received) < n and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        assert len(staging.received) >= n
        act()
        return proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_ctrl_c_stops_every_worker_and_keeps_every_row(tmp_path: Path, staging) -> None:
    records = [exchange(f"s{i % 4}", i // 4, i * 250, "GET", f"/t/{i}") for i in range(60)]
    src = write_dataset(tmp_path / "in", records)
    out = tmp_path / "out"
    proc = _start(src, staging.url, out, "--speed", "1", "--grace", "5")
    stdout, stderr = _midway(proc, staging, 4, lambda: proc.send_signal(signal.SIGINT))
    assert (proc.returncode, b"replay interrupted" in stdout) == (130, True), (stdout, stderr)
    rows = _rows(out)
    assert len(rows) == 60
    assert {r["skip_reason"] for r in rows if r["outcome"] == "skipped"} == {"interrupted"}
    meta = _meta(out)
    assert meta["status"] == "interrupted" and meta["complete"] is True


def test_a_killed_worker_is_reported_with_the_rows_it_took(tmp_path: Path, staging) -> None:
    staging.delay = 0.02
    records = [exchange(f"k{i % 8}", i // 8, i, "GET", f"/k/{i}") for i in range(400)]
    src = write_dataset(tmp_path / "in", records)
    out = tmp_path / "out"
    proc = _start(src, staging.url, out, "--speed", "max", "--concurrency", "4")
    workers: list[int] = []

    def kill_one() -> None:
        workers.extend(_children(proc.pid))
        assert len(workers) == 2
        os.kill(workers[1], signal.SIGKILL)

    stdout, stderr = _midway(proc, staging, 10, kill_one)
    text = stderr.decode()
    assert proc.returncode == 1, (stdout, stderr)
    assert f"worker 1 of 2 (pid {workers[1]}) died (killed by SIGKILL)" in text
    assert "rows not written" in text and "Traceback" not in text
    rows = _rows(out)
    meta = _meta(out)
    assert meta["status"] == "worker_lost" and meta["complete"] is False
    lost = meta["counts"]["rows_not_written"]
    assert lost > 0 and len(rows) + lost == 400  # written + lost = seen
    assert {r["skip_reason"] for r in rows if r["outcome"] == "skipped"} <= {"worker_lost"}


@pytest.mark.parametrize("given", [False, True])
def test_workers_keep_one_schedule(tmp_path: Path, staging, given: bool) -> None:
    records = [
        exchange(f"o{s}", i, s * 7 + i * 40, "GET", f"/o/{s}/{i}")
        for s in range(12)
        for i in range(3)
    ]
    src = write_dataset(tmp_path / "in", records)
    start_at = time.time() + 2.0 if given else None
    config = _config(
        src, staging.url, tmp_path / "out", timing=Timing("speed", 1.0), start_at=start_at
    )
    summary = run_replay_workers(config, 2)
    assert summary.counts.sent == len(records)
    rows = _rows(tmp_path / "out")
    assert {in_shard(r["session_id"], 0, 2) for r in rows} == {True, False}
    # One origin for both workers: each row is due at origin + its recorded offset.
    origins = [r["scheduled_at"] - (r["started_at"] - records[0].started_at) for r in rows]
    assert max(origins) - min(origins) < 2_000
    if given:
        assert abs(origins[0] - int(start_at * 1_000_000)) < 2_000


def test_workers_send_to_a_baseline_as_one_process_does(tmp_path: Path, staging, baseline) -> None:
    src = write_dataset(tmp_path / "in", shop_sessions(6))
    config = _config(
        src, staging.url, tmp_path / "out", baseline=baseline.url, allow_writes=True,
        correlate="auto", concurrency=4,
    )  # fmt: skip
    summary = run_replay_workers(config, 2)
    assert summary.status == "complete"
    assert len(staging.received) == len(baseline.received) == 24
    counts = summary.counts
    assert counts.sent == 24 and counts.baseline_sent["baseline"] == 24
    rows = _rows(tmp_path / "out")
    assert len(rows) == 24 and {r["baseline_outcome"] for r in rows} == {"sent"}
    # Each side's tokens stayed with that side, in both workers' sessions.
    assert not staging.tokens & baseline.tokens
    assert {in_shard(r["session_id"], 0, 2) for r in rows} == {True, False}
