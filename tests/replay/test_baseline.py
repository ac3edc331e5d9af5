"""`replay --baseline`: every request to the candidate and the baseline, two real servers on
loopback, each with its own state; what each side minted stays with that side."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from replay_testkit import exchange, serve_staging, shop_sessions, write_dataset

from shadowtape.errors import InputError
from shadowtape.replay import ReplayConfig, run_replay
from shadowtape.replay.config import BreakerPolicy, RetryPolicy, RewriteRule, Timing
from shadowtape.schema import batch_to_rows, dataset_metadata, iter_batches


def _config(src: Path, target: str, out: Path, **kw: Any) -> ReplayConfig:
    kw.setdefault("timing", Timing("max"))
    kw.setdefault("allow_writes", True)
    kw.setdefault("concurrency", 4)
    return ReplayConfig(str(src), target, str(out), handle_signals=False, **kw)


def _results(out: Path) -> list[dict[str, Any]]:
    return [r for b in iter_batches(out, "results") for r in batch_to_rows(b)]


def test_each_side_gets_every_request_and_keeps_its_own_tokens_and_ids(
    tmp_path: Path, staging, baseline
) -> None:
    src = write_dataset(tmp_path / "in", shop_sessions(6))
    summary = run_replay(_config(src, staging.url, tmp_path / "out", baseline=baseline.url))
    assert summary.status == "complete"
    for side in (staging, baseline):
        assert len(side.received) == 24
        # Every authorised request carried a token this side minted, every order id read
        # was one this side created: nothing crossed over from the other side.
        tokens = {r.header("authorization")[7:] for r in side.received if r.path != "/login"}
        assert tokens and tokens <= side.tokens
        read = {r.path.split("?")[0].split("/")[2] for r in side.received if r.method == "GET"}
        assert read == side.orders
    assert not staging.tokens & baseline.tokens
    rows = _results(tmp_path / "out")
    assert len(rows) == 24 and {r["replay_pass"] for r in rows} == {1}
    for r in rows:
        # One row, both answers, both timings.
        assert r["outcome"] == r["baseline_outcome"] == "sent"
        assert r["staging_status"] in (200, 201) and r["baseline_status"] == r["staging_status"]
        assert r["target_url"].startswith(staging.url)
        assert r["baseline_target_url"].startswith(baseline.url)
        assert r["done_at"] >= r["sent_at"] and r["baseline_done_at"] >= r["baseline_sent_at"]
        assert r["baseline_span_id"] and r["baseline_span_id"] != r["span_id"]
    subs = [s for r in rows for s in r["baseline_substitutions"]]
    assert subs and all(s["outcome"] == "substituted" for s in subs)
    counts = summary.counts
    assert counts.sent == 24 and counts.baseline_sent["baseline"] == 24
    assert counts.baseline_status_classes["baseline 2xx"] == 24
    assert counts.baseline_substitutions["baseline"] == sum(counts.substitutions.values())


def test_both_sides_keep_session_order(tmp_path: Path, staging, baseline) -> None:
    records = [
        exchange(f"s{s}", seq, s + seq * 0.01, "GET", f"/step/{s}/{seq}")
        for s in range(8)
        for seq in range(6)
    ]
    src = write_dataset(tmp_path / "in", records)
    run_replay(_config(src, staging.url, tmp_path / "out", baseline=baseline.url, concurrency=8))
    for side in (staging, baseline):
        sessions = side.by_session()
        assert len(sessions) == 8
        for sid, received in sessions.items():
            seqs = [int(r.path.rsplit("/", 1)[1]) for r in received]
            assert seqs == list(range(6)), (side.url, sid, seqs)


def test_a_baseline_that_is_down_trips_the_breaker(tmp_path: Path, staging, dead_url) -> None:
    records = [exchange(f"s{i % 4}", i // 4, i, "GET", f"/x/{i}") for i in range(120)]
    src = write_dataset(tmp_path / "in", records)
    summary = run_replay(
        _config(
            src,
            staging.url,
            tmp_path / "out",
            baseline=dead_url,
            retry=RetryPolicy(2, 0.01, 0.02),
            breaker=BreakerPolicy(connection_failures=5),
        )
    )
    assert summary.status == "circuit_open" and summary.exit_code == 1
    assert summary.reason.startswith(f"--baseline {dead_url}: ")
    assert "connection attempts in a row failed" in summary.reason
    rows = _results(tmp_path / "out")
    assert len(rows) == 120  # every input row accounted for, results kept whole
    sent = [r for r in rows if r["outcome"] == "sent"]
    assert all(r["baseline_outcome"] == "failed" and r["baseline_error"] for r in sent)
    assert summary.counts.skipped["circuit_open"] >= 90
    assert all(r["baseline_outcome"] == "skipped" for r in rows if r["outcome"] == "skipped")
    meta = json.loads(dataset_metadata(tmp_path / "out", "results")["shadowtape.replay"])
    assert meta["status"] == "circuit_open" and meta["config"]["baseline"] == dead_url


def test_a_second_baseline_answers_in_pass_two_rows(tmp_path: Path, staging, baseline) -> None:
    src = write_dataset(tmp_path / "in", shop_sessions(3))
    with serve_staging() as second:
        summary = run_replay(
            _config(
                src,
                staging.url,
                tmp_path / "out",
                baseline=baseline.url,
                baseline_2=second.url,
            )
        )
        assert len(second.received) == 12
        tokens = {r.header("authorization")[7:] for r in second.received if r.path != "/login"}
        assert tokens and tokens <= second.tokens
    rows = _results(tmp_path / "out")
    first = {r["id"]: r for r in rows if r["replay_pass"] == 1}
    twins = [r for r in rows if r["replay_pass"] == 2]
    assert len(first) == len(twins) == 12 and {r["id"] for r in twins} == set(first)
    for r in twins:
        # The candidate was not sent in this row: a reader that ignores baselines skips it.
        assert r["outcome"] == "skipped" and r["skip_reason"] == "baseline_only"
        assert r["staging_status"] is None and r["baseline_outcome"] == "sent"
        assert r["baseline_target_url"].startswith(second.url)
        assert r["baseline_status"] == first[r["id"]]["baseline_status"]
    c = summary.counts
    assert c.noise_rows == 12 and c.noise_sent == 12 and c.baseline_sent["baseline-2"] == 12
    assert c.rows == 24


def test_noise_sample_asks_the_baseline_again_not_the_candidate(
    tmp_path: Path, staging, baseline
) -> None:
    records = [exchange(f"s{i}", 0, i, "GET", f"/item/{i}") for i in range(20)]
    src = write_dataset(tmp_path / "in", records)
    summary = run_replay(
        _config(src, staging.url, tmp_path / "out", baseline=baseline.url, noise_sample=5)
    )
    assert len(staging.received) == 20 and len(baseline.received) == 25
    twins = [r for r in _results(tmp_path / "out") if r["replay_pass"] == 2]
    assert len(twins) == 5 and summary.counts.noise_sent == 5
    assert all(r["skip_reason"] == "baseline_only" and r["baseline_status"] == 200 for r in twins)


def test_rows_not_sent_say_so_for_the_baseline_too(tmp_path: Path, staging, baseline) -> None:
    src = write_dataset(tmp_path / "in", shop_sessions(2))
    run_replay(
        _config(src, staging.url, tmp_path / "out", baseline=baseline.url, allow_writes=False)
    )
    rows = _results(tmp_path / "out")
    writes = [r for r in rows if r["method"] == "POST"]
    assert writes and all(
        r["outcome"] == r["baseline_outcome"] == "skipped"
        and r["skip_reason"] == "write_not_allowed"
        for r in writes
    )
    assert not [r for r in staging.received + baseline.received if r.method == "POST"]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"baseline_2": "http://127.0.0.1:9"}, "--baseline-2 needs --baseline"),
        ({"baseline": "http://127.0.0.1:9/"}, "the same URL as --target"),
        ({"baseline": "http://prod.example.com"}, "--baseline http://prod.example.com: host"),
        ({"baseline": "ftp://127.0.0.1:9"}, "--baseline 'ftp://127.0.0.1:9'"),
        (
            {
                "baseline": "http://127.0.0.2:9",
                "baseline_2": "http://127.0.0.3:9",
                "noise_sample": 3,
            },
            "--noise-sample with --baseline-2",
        ),
        (
            {
                "baseline": "http://127.0.0.2:9",
                "rewrites": (RewriteRule("host", "api.example.com", "http://127.0.0.5:1"),),
            },
            "path rewrites only",
        ),
    ],
)
def test_refusals(tmp_path: Path, kw: dict[str, Any], message: str) -> None:
    src = write_dataset(tmp_path / "in", shop_sessions(1))
    with pytest.raises(InputError, match=re.escape(message)):
        run_replay(_config(src, "http://127.0.0.1:9", tmp_path / "out", **kw))
    assert not (tmp_path / "out").exists()


def test_a_request_that_cannot_be_sent_goes_to_no_side(tmp_path: Path, staging, baseline) -> None:
    """The comparison needs both answers: a row one side cannot be sent is sent to none, and
    its row says so for each side; the run goes on."""
    bad = exchange("s1", 1, 1, "GET", "/b c")
    bad.request_target = "/b c"  # a space in the target cannot be framed
    records = [exchange("s1", 0, 0, "GET", "/a"), bad, exchange("s1", 2, 2, "GET", "/c")]
    src = write_dataset(tmp_path / "in", records)
    summary = run_replay(_config(src, staging.url, tmp_path / "out", baseline=baseline.url))
    assert summary.status == "complete" and summary.counts.unsendable == 1
    assert summary.counts.baseline_failed["baseline"] == 1
    assert [r.path for r in staging.received] == [r.path for r in baseline.received] == ["/a", "/c"]
    (row,) = [r for r in _results(tmp_path / "out") if r["seq"] == 1]
    assert row["outcome"] == row["baseline_outcome"] == "failed"
    assert row["staging_error"] == row["baseline_error"]
    assert row["staging_error"].startswith("not sent: request target b'/b c'")
