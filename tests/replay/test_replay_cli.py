"""The `replay` and `correlate` commands: one clear line on refusal, a summary, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner
from replay_testkit import exchange, write_dataset

from shadowtape.cli import main
from shadowtape.schema import batch_to_rows, dataset_metadata, iter_batches


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _replay(src: Path, target: str, out: Path, *extra: str):
    return _invoke("replay", str(src), "--target", target, "--out", str(out), *extra)


def test_replay_prints_summary(tmp_path: Path, staging) -> None:
    records = [exchange("s1", i, i * 10, "GET", f"/a/{i}") for i in range(5)]
    records.append(exchange("s1", 5, 60, "POST", "/a", body=b"{}"))
    src = write_dataset(tmp_path / "in", records)
    result = _replay(src, staging.url, tmp_path / "out", "--speed", "max", "--correlate", "off")
    assert result.exit_code == 0, result.output
    assert "replay complete: 6 results rows" in result.output
    assert "sent 5 (2xx 5)" in result.output
    assert "skipped 1 (write_not_allowed 1)" in result.output


def test_replay_with_a_baseline_prints_both_sides(tmp_path: Path, staging, baseline) -> None:
    records = [exchange("s1", i, i * 10, "GET", f"/a/{i}") for i in range(4)]
    src = write_dataset(tmp_path / "in", records)
    extra = ("--baseline", baseline.url, "--speed", "max", "--correlate", "off")
    result = _replay(src, staging.url, tmp_path / "out", *extra)
    assert result.exit_code == 0, result.output
    assert "sent 4 (2xx 4)" in result.output
    assert "  baseline: sent 4 (2xx 4), failed 0, retries 0" in result.output
    plan = _replay(src, staging.url, tmp_path / "plan", *extra, "--dry-run")
    assert f"every request goes to 2 sides: candidate {staging.url}, baseline" in plan.output
    assert len(staging.received) == len(baseline.received) == 4


def test_dry_run_sends_nothing(tmp_path: Path, staging) -> None:
    records = [
        exchange(f"s{s}", i, s * 1000 + i * 2000, "GET", "/x") for s in range(3) for i in range(3)
    ]
    records.append(exchange("s0", 9, 100, "DELETE", "/x"))
    src = write_dataset(tmp_path / "in", records)
    result = _replay(src, staging.url, tmp_path / "out", "--speed", "2", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "3 sessions, 10 requests, speed x2" in result.output
    assert "send 9, skip 1 writes" in result.output
    assert "dispatch takes 3.0 s" in result.output  # recorded span 6 s / 2
    assert staging.received == [] and not (tmp_path / "out").exists()


def test_refusals_are_one_line_with_exit_2(tmp_path: Path, staging) -> None:
    src = write_dataset(tmp_path / "in", [exchange("s1", 0, 0)])
    out = str(tmp_path / "out")
    cases = [
        (["--target", "http://prod.example.com"], "--allow-host prod.example.com"),
        (["--target", staging.url, "--speed", "fast"], "--speed 'fast'"),
        (["--target", staging.url, "--shard", "4/4"], "--shard '4/4'"),
        (["--target", staging.url, "--header", "nocolon"], "'Name: value'"),
        (["--target", "ftp://127.0.0.1"], "base URL"),
        (["--target", staging.url, "--baseline-2", staging.url], "--baseline-2 needs --baseline"),
        (["--target", staging.url, "--baseline", staging.url], "the same URL as --target"),
        (["--target", staging.url, "--baseline", "http://prod.example.com"], "--baseline http"),
    ]
    for extra, expected in cases:
        result = CliRunner().invoke(main, ["replay", str(src), "--out", out, *extra])
        assert result.exit_code == 2, (extra, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("shadowtape: error: ")
        assert expected in lines[0]
    unsanitized = write_dataset(tmp_path / "raw", [exchange("s1", 0, 0)], sanitized=False)
    result = CliRunner().invoke(
        main, ["replay", str(unsanitized), "--target", staging.url, "--out", out]
    )
    assert result.exit_code == 2 and "--allow-unsanitized" in result.output
    assert staging.received == []


def test_breaker_trip_exits_1_and_keeps_results(tmp_path: Path, dead_url: str) -> None:
    src = write_dataset(tmp_path / "in", [exchange("s1", i, i, "GET", "/") for i in range(30)])
    result = CliRunner().invoke(
        main,
        [
            "replay",
            str(src),
            "--target",
            dead_url,
            "--out",
            str(tmp_path / "out"),
            "--speed",
            "max",
            "--retries",
            "0",
            "--breaker-failures",
            "3",
        ],
    )
    assert result.exit_code == 1
    assert "shadowtape: error: circuit breaker opened" in result.output
    assert dataset_metadata(tmp_path / "out", "results")
    rows = [r for b in iter_batches(tmp_path / "out", "results") for r in batch_to_rows(b)]
    assert len(rows) == 30


def test_correlate_command_writes_rules(tmp_path: Path) -> None:
    records = []
    for s in range(2):
        tok = f"tok-{s}-8a7sd6f5"
        records += [
            exchange(
                f"s{s}", 0, 0, "POST", "/login", response_body=json.dumps({"token": tok}).encode()
            ),
            exchange(f"s{s}", 1, 10, "GET", "/me", headers=[("Authorization", f"Bearer {tok}")]),
        ]
    src = write_dataset(tmp_path / "in", records)
    result = _invoke("correlate", str(src), "--out", str(tmp_path / "rules.yaml"))
    assert result.exit_code == 0, result.output
    assert "r1: POST /login json:$.token -> header:authorization (support 2)" in result.output
    assert "1 correlation rules" in result.output
    assert (tmp_path / "rules.yaml").exists()


def test_ctrl_c_leaves_a_readable_results_set(tmp_path: Path, staging) -> None:
    # 40 requests over 20 recorded seconds at real time: Ctrl-C lands mid-run.
    records = [exchange(f"s{i % 2}", i // 2, i * 500, "GET", f"/t/{i}") for i in range(40)]
    src = write_dataset(tmp_path / "in", records)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shadowtape",
            "replay",
            str(src),
            "--target",
            staging.url,
            "--out",
            str(out),
            "--speed",
            "1",
            "--grace",
            "5",
            "--correlate",
            "off",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while len(staging.received) < 3 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        assert len(staging.received) >= 3
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (stdout, stderr)
    assert b"replay interrupted" in stdout
    rows = [r for b in iter_batches(out, "results") for r in batch_to_rows(b)]
    assert len(rows) == 40  # every recorded request is accounted for
    sent = [r for r in rows if r["outcome"] == "sent"]
    assert 3 <= len(sent) < 40
    assert {r["skip_reason"] for r in rows if r["outcome"] == "skipped"} == {"interrupted"}
    meta = json.loads(dataset_metadata(out, "results")["shadowtape.replay"])
    assert meta["status"] == "interrupted" and meta["complete"] is True
    assert not list(out.glob(".*"))  # no temporary file left behind
