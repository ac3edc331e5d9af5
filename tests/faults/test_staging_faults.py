"""A staging that hangs, a staging that dies, and a replay killed with -9: every request is
accounted for, a hung staging costs one read timeout per request (timeouts are not retried,
as --retries says), and the results already written survive a hard kill (case 11)."""

from __future__ import annotations

import json
import signal
import threading
import time

import faultkit

from shadowtape import schema


def _rows(out):
    return [r for b in schema.iter_batches(out, "results") for r in b.to_pylist()]


def test_a_hung_staging_costs_one_read_timeout_per_request(tmp_path, staging):
    clean = faultkit.sanitized_dataset(tmp_path / "clean", rows=4)
    staging.hang.set()
    out = tmp_path / "results"
    started = time.monotonic()
    result = faultkit.run_inprocess(
        "replay", clean, "--target", staging.url, "--out", out, "--speed", "max",
        "--concurrency", "1", "--read-timeout", "0.5",
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    rows = _rows(out)
    assert [r["outcome"] for r in rows] == ["failed"] * 4
    assert [r["attempts"] for r in rows] == [1] * 4
    assert all("Timeout" in r["staging_error"] for r in rows)
    assert elapsed < 4 * 0.5 + 2.0  # three tries each would be over 6 s
    assert len(staging.received) == 4


def test_retries_help_says_what_is_retried():
    text = faultkit.run_inprocess("replay", "--help").stdout
    flat = " ".join(text.split())
    assert "Timeouts after sending are not retried" in flat
    assert "502/503/504" in flat and "never reached staging" in flat


def test_a_staging_that_dies_opens_the_breaker_and_keeps_every_row(tmp_path, staging):
    clean = faultkit.sanitized_dataset(tmp_path / "clean", rows=60)
    out = tmp_path / "results"
    threading.Timer(0.6, staging.die).start()
    result = faultkit.run_inprocess(
        "replay", clean, "--target", staging.url, "--out", out, "--rate", "40",
        "--breaker-failures", "5",
    )  # fmt: skip
    assert result.exit_code == 1
    faultkit.assert_one_line(result.stderr, "circuit breaker opened", "results kept")
    rows = _rows(out)
    assert len(rows) == 60  # sent, failed or skipped: every recorded row has its results row
    outcomes = {r["outcome"] for r in rows}
    assert {"sent", "failed", "skipped"} <= outcomes


def test_replay_killed_with_9_keeps_what_it_finalized(tmp_path, env, staging):
    clean = faultkit.sanitized_dataset(tmp_path / "clean", rows=200)
    out = tmp_path / "results"
    proc = faultkit.start(
        ["replay", clean, "--target", staging.url, "--out", out, "--rate", "50",
         "--roll-interval", "0.4"],
        env,
    )  # fmt: skip
    faultkit.wait_for(lambda: len(staging.received) >= 60, 60, "the replay to be under way")
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    sent = len(staging.received)
    rows = _rows(out)  # every visible file reads whole
    assert len(rows) >= sent - 50 * (0.4 + 0.5), (len(rows), sent)
    last = schema.read_files(out, "results")[-1].metadata
    assert json.loads(last["shadowtape.replay"])["status"] == "running"
