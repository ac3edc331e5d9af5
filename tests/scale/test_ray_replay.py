"""`replay --engine ray`: N sender actors share sessions by id, send every request exactly once
in session order, write one results dataset, and stop together (breaker, Ctrl-C)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from replay_testkit import exchange, write_dataset

from shadowtape.cli import main
from shadowtape.replay import ReplayConfig
from shadowtape.replay.config import BreakerPolicy, RetryPolicy, Timing
from shadowtape.replay.plan import in_shard
from shadowtape.replay.ray_engine import run_replay_ray
from shadowtape.schema import batch_to_rows, iter_batches

SESSIONS, STEPS = 12, 5


def _config(src: Path, target: str, out: Path, **kw: Any) -> ReplayConfig:
    kw.setdefault("timing", Timing("speed", 10.0))
    kw.setdefault("correlate", "off")
    return ReplayConfig(str(src), target, str(out), handle_signals=False, **kw)


def _results(out: Path) -> list[dict[str, Any]]:
    return [row for batch in iter_batches(out, "results") for row in batch_to_rows(batch)]


def _sessions(tmp_path: Path) -> Path:
    # Steps of different sessions interleave in time, so order must be kept per session.
    records = [
        exchange(f"sess-{s:02d}", step, step * 100 + s * 7, "GET", f"/step/{step}")
        for step in range(STEPS)
        for s in range(SESSIONS)
    ]
    return write_dataset(tmp_path / "in", records, row_group_rows=16)


def test_two_senders_send_each_request_once_in_session_order(
    ray_instance, staging, tmp_path: Path
) -> None:
    src = _sessions(tmp_path)
    out = tmp_path / "results"
    env = {"SHADOWTAPE_NO_CONFIG": "1"}
    args = ["replay", str(src), "--target", staging.url, "--out", str(out), "--speed", "10",
            "--correlate", "off", "--engine", "ray", "--senders", "2"]  # fmt: skip
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    total = SESSIONS * STEPS
    assert f"replay complete: {total} results rows" in result.output
    assert f"sent {total} (2xx {total})" in result.output

    got = staging.by_session()
    assert sorted(got) == [f"sess-{s:02d}" for s in range(SESSIONS)]
    for session, received in got.items():
        assert [r.path for r in received] == [f"/step/{i}" for i in range(STEPS)], session
    replay_ids = [r.header("x-shadowtape-replay-id") for r in staging.received]
    assert len(replay_ids) == len(set(replay_ids)) == total

    rows = _results(out)
    assert len(rows) == total
    assert len({r["id"] for r in rows}) == total
    assert {r["outcome"] for r in rows} == {"sent"}
    assert len({r["run_id"] for r in rows}) == 1
    assert sorted(r["replay_id"] for r in rows) == sorted(replay_ids)
    names = sorted(p.name for p in out.glob("*.parquet"))
    assert any(n.startswith("results-shard-0-of-2") for n in names)
    assert any(n.startswith("results-shard-1-of-2") for n in names)


def test_a_tripped_breaker_stops_every_sender(ray_instance, staging, tmp_path: Path) -> None:
    shard0 = [f"bad-{i}" for i in range(200) if in_shard(f"bad-{i}", 0, 2)][:6]
    shard1 = [f"slow-{i}" for i in range(200) if in_shard(f"slow-{i}", 1, 2)][:4]
    staging.fail_first["/boom"] = 10_000
    # Shard 0 fails at once; shard 1's requests are spread over two recorded minutes and
    # would run that long if nobody stopped it.
    records = [exchange(s, k, k * 10 + i, "GET", "/boom") for i, s in enumerate(shard0)
               for k in range(6)]  # fmt: skip
    records += [exchange(s, k, k * 12_000 + i, "GET", f"/ok/{k}") for i, s in enumerate(shard1)
                for k in range(10)]  # fmt: skip
    src = write_dataset(tmp_path / "in", records)
    config = _config(
        src,
        staging.url,
        tmp_path / "out",
        timing=Timing("speed", 1.0),
        retry=RetryPolicy(1),
        breaker=BreakerPolicy(error_rate=0.5, window=20, min_requests=10),
        grace=2.0,
    )
    summary = run_replay_ray(config, 2)
    assert summary.status == "circuit_open" and summary.exit_code == 1
    assert "error rate" in (summary.reason or "")  # the tripped shard's reason, not a sibling's
    rows = _results(tmp_path / "out")
    assert len(rows) == len(records) == summary.counts.rows
    slow = [r for r in rows if r["session_id"].startswith("slow-")]
    assert {r["skip_reason"] for r in slow if r["outcome"] == "skipped"} == {"circuit_open"}
    assert sum(r["outcome"] == "skipped" for r in slow) >= 30  # most never went out
    assert summary.counts.skipped["circuit_open"] >= 30


def test_ctrl_c_on_the_driver_stops_every_sender(ray_instance, staging, tmp_path: Path) -> None:
    # Two recorded minutes at real speed: only a stop ends this run in test time.
    records = [exchange(f"s{i % 6}", i // 6, i * 2000, "GET", f"/x/{i}") for i in range(60)]
    src = write_dataset(tmp_path / "in", records)
    config = _config(src, staging.url, tmp_path / "out", timing=Timing("speed", 1.0), grace=1.0)

    def interrupt_once_sending() -> None:
        deadline = time.monotonic() + 120
        while not staging.received and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C at the terminal does to the driver

    threading.Thread(target=interrupt_once_sending, daemon=True).start()
    summary = run_replay_ray(config, 2)
    assert summary.status == "interrupted" and summary.exit_code == 130
    rows = _results(tmp_path / "out")
    assert len(rows) == len(records)  # every row accounted for, in both shards' files
    assert summary.counts.skipped["interrupted"] >= 40
    assert 1 <= summary.counts.sent < 20


def test_senders_beyond_the_cluster_are_refused(ray_instance, staging, tmp_path: Path) -> None:
    src = _sessions(tmp_path)
    out = tmp_path / "out"
    args = ["replay", str(src), "--target", staging.url, "--out", str(out),
            "--engine", "ray", "--senders", "64"]  # fmt: skip
    result = CliRunner().invoke(main, args, env={"SHADOWTAPE_NO_CONFIG": "1"})
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("shadowtape: error: --senders 64:")
    assert staging.received == []
    assert list(out.glob("*.parquet")) == [] if out.exists() else True


def test_senders_need_the_ray_engine(staging, tmp_path: Path) -> None:
    src = _sessions(tmp_path)
    args = ["replay", str(src), "--target", staging.url, "--out", str(tmp_path / "o"),
            "--senders", "2"]  # fmt: skip
    result = CliRunner().invoke(main, args, env={"SHADOWTAPE_NO_CONFIG": "1"})
    assert result.exit_code == 2 and "--engine ray" in result.output
    assert staging.received == []


def test_a_senders_error_comes_back_as_its_one_line(ray_instance) -> None:
    from shadowtape.errors import InputError
    from shadowtape.replay.ray_engine import _shard_error

    @ray_instance.remote
    def refuse() -> None:
        raise InputError("clean/: dataset has no Parquet files")

    try:
        ray_instance.get(refuse.remote())
    except Exception as exc:  # Ray's wrapper, whose message is the remote traceback
        error = _shard_error(exc, 1, 4)
    assert isinstance(error, InputError)
    assert str(error) == "sender 1 of 4: clean/: dataset has no Parquet files"
