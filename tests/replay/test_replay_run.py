"""run_replay against a real staging server on 127.0.0.1: what arrives, when, and what is kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from replay_testkit import exchange, mitmdump_reverse, write_dataset

from shadowtape.errors import InputError
from shadowtape.replay import ReplayConfig, run_replay
from shadowtape.replay.config import BreakerPolicy, RetryPolicy, Timing
from shadowtape.schema import batch_to_rows, dataset_metadata, iter_batches


def _config(src: Path, target: str, out: Path, **kw: Any) -> ReplayConfig:
    kw.setdefault("timing", Timing("max"))
    kw.setdefault("correlate", "off")
    return ReplayConfig(str(src), target, str(out), handle_signals=False, **kw)


def _results(out: Path) -> list[dict[str, Any]]:
    rows = []
    for batch in iter_batches(out, "results"):
        rows.extend(batch_to_rows(batch))
    return rows


def test_requests_arrive_as_recorded(tmp_path: Path, staging) -> None:
    records = [
        exchange(
            "s1",
            0,
            0,
            "POST",
            "/items/7",
            query=[("a", "1"), ("b", "x y"), ("a", "2")],
            headers=[
                ("X-Dup", "one"),
                ("Content-Type", "application/octet-stream"),
                ("X-Dup", "two"),
                ("Content-Length", "999"),
                ("Connection", "keep-alive"),
            ],
            body=bytes(range(256)),
        )
    ]
    src = write_dataset(tmp_path / "in", records)
    summary = run_replay(
        _config(src, staging.url, tmp_path / "out", allow_writes=True, headers=(("X-Extra", "1"),))
    )
    assert summary.status == "complete" and summary.counts.sent == 1
    (got,) = staging.received
    assert got.method == "POST"
    assert got.path == "/items/7?a=1&b=x+y&a=2"
    assert got.body == bytes(range(256))
    names = [n.lower() for n, _ in got.headers]
    # Recorded order and repeats kept, Host rewritten in place, length made true, hop header gone.
    assert names[:5] == ["host", "x-session", "x-dup", "content-type", "x-dup"]
    assert [v for n, v in got.headers if n.lower() == "x-dup"] == ["one", "two"]
    assert got.header("host") == staging.url.removeprefix("http://")
    assert got.header("content-length") == "256"
    assert "connection" not in names[:6]
    assert got.header("x-extra") == "1"
    assert got.header("user-agent") is None  # no client defaults added
    (row,) = _results(tmp_path / "out")
    tp = got.header("traceparent")
    assert tp == f"00-{row['trace_id']}-{row['span_id']}-01"
    assert got.header("x-shadowtape-replay-id") == row["replay_id"]
    assert row["outcome"] == "sent" and row["staging_status"] == 200
    assert json.loads(row["staging_body"]) == {"method": "POST", "path": got.path}
    assert row["request_body"] == bytes(range(256))  # the recorded exchange is kept as is
    assert row["replay_pass"] == 1 and row["lateness_us"] is not None
    meta = dataset_metadata(tmp_path / "out", "results")
    assert meta["shadowtape.kind"] == "results"
    replay_meta = json.loads(meta["shadowtape.replay"])
    assert replay_meta["status"] == "complete"
    assert replay_meta["counts"]["sent"] == 1
    assert replay_meta["config"]["target"] == staging.url


def test_session_order_holds_under_concurrency(tmp_path: Path, staging) -> None:
    staging.delay = 0.01
    records = [
        exchange(f"s{s}", i, i * 3 + s, "GET", f"/s{s}/step/{i}")
        for s in range(6)
        for i in range(8)
    ]
    src = write_dataset(tmp_path / "in", records[::-1], row_group_rows=7)  # stored backwards
    summary = run_replay(_config(src, staging.url, tmp_path / "out", concurrency=8))
    assert summary.counts.sent == 48
    for session, got in staging.by_session().items():
        steps = [int(r.path.rsplit("/", 1)[1]) for r in got]
        assert steps == list(range(8)), session
    # The next request of a session goes out only after the previous answer came back.
    rows = _results(tmp_path / "out")
    by_session: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_session.setdefault(r["session_id"], []).append(r)
    for rs in by_session.values():
        rs.sort(key=lambda r: r["seq"])
        for prev, nxt in zip(rs, rs[1:], strict=False):
            assert nxt["sent_at"] >= prev["done_at"]
    # Sessions ran concurrently: one trace per session, distinct across sessions.
    assert len({r["trace_id"] for r in rows}) == 6


def test_speed_compresses_the_recorded_schedule(tmp_path: Path, staging) -> None:
    offsets_ms = [0, 500, 1200, 2500, 3100, 4000, 5000]
    records = [exchange("s1", i, ms, "GET", f"/p/{i}") for i, ms in enumerate(offsets_ms)]
    src = write_dataset(tmp_path / "in", records)
    summary = run_replay(_config(src, staging.url, tmp_path / "out", timing=Timing("speed", 10.0)))
    rows = sorted(_results(tmp_path / "out"), key=lambda r: r["seq"])
    first = rows[0]["scheduled_at"]
    # The schedule is exactly recorded offset / 10, from one origin.
    assert [r["scheduled_at"] - first for r in rows] == [ms * 100 for ms in offsets_ms]
    lateness = [r["lateness_us"] for r in rows]
    assert all(x >= 0 for x in lateness)
    assert max(lateness) < 250_000  # generous: the machine is shared; the bench measures it
    assert summary.lateness_max_us == pytest.approx(max(lateness), rel=0.03)
    spread = rows[-1]["sent_at"] - rows[0]["sent_at"]
    assert 450_000 <= spread < 1_500_000


def test_writes_are_skipped_by_default(tmp_path: Path, staging) -> None:
    records = [
        exchange("s1", 0, 0, "GET", "/a"),
        exchange("s1", 1, 1, "POST", "/b", body=b"{}"),
        exchange("s1", 2, 2, "DELETE", "/c"),
        exchange("s1", 3, 3, "HEAD", "/d"),
    ]
    src = write_dataset(tmp_path / "in", records)
    summary = run_replay(_config(src, staging.url, tmp_path / "out"))
    assert [r.method for r in staging.received] == ["GET", "HEAD"]
    assert summary.counts.skipped == {"write_not_allowed": 2}
    frame = pl.read_parquet(tmp_path / "out" / "*.parquet").sort("seq")
    assert frame["outcome"].to_list() == ["sent", "skipped", "skipped", "sent"]
    assert frame["skip_reason"].to_list() == [None, "write_not_allowed", "write_not_allowed", None]


def test_retries_503_then_succeeds(tmp_path: Path, staging) -> None:
    staging.fail_first["/flaky"] = 2
    src = write_dataset(tmp_path / "in", [exchange("s1", 0, 0, "GET", "/flaky")])
    summary = run_replay(
        _config(src, staging.url, tmp_path / "out", retry=RetryPolicy(3, 0.01, 0.05))
    )
    assert len(staging.received) == 3
    (row,) = _results(tmp_path / "out")
    assert row["staging_status"] == 200 and row["attempts"] == 3 and row["retries"] == 2
    assert summary.counts.retries == 2


def test_post_is_not_retried_on_503(tmp_path: Path, staging) -> None:
    staging.fail_first["/pay"] = 5
    src = write_dataset(tmp_path / "in", [exchange("s1", 0, 0, "POST", "/pay", body=b"x")])
    run_replay(
        _config(src, staging.url, tmp_path / "out", allow_writes=True, retry=RetryPolicy(3, 0.01))
    )
    assert len(staging.received) == 1
    (row,) = _results(tmp_path / "out")
    assert row["staging_status"] == 503 and row["retries"] == 0


def test_circuit_breaker_trips_on_dead_target(tmp_path: Path, dead_url: str) -> None:
    records = [exchange(f"s{i % 4}", i // 4, i, "GET", f"/x/{i}") for i in range(200)]
    src = write_dataset(tmp_path / "in", records)
    summary = run_replay(
        _config(
            src,
            dead_url,
            tmp_path / "out",
            concurrency=4,
            retry=RetryPolicy(2, 0.01, 0.02),
            breaker=BreakerPolicy(connection_failures=5),
        )
    )
    assert summary.status == "circuit_open" and summary.exit_code == 1
    assert "connection attempts in a row failed" in (summary.reason or "")
    rows = _results(tmp_path / "out")
    assert len(rows) == 200  # every input row is accounted for, results kept
    outcomes = {r["outcome"] for r in rows}
    assert outcomes <= {"failed", "skipped"}
    assert summary.counts.skipped["circuit_open"] >= 150
    assert all(r["staging_error"] for r in rows if r["outcome"] == "failed")
    meta = json.loads(dataset_metadata(tmp_path / "out", "results")["shadowtape.replay"])
    assert meta["status"] == "circuit_open"


def test_allowlist_refuses_other_hosts(tmp_path: Path) -> None:
    src = write_dataset(tmp_path / "in", [exchange("s1", 0, 0)])
    with pytest.raises(InputError, match="not in the allowlist.*--allow-host api.prod.example"):
        run_replay(_config(src, "https://api.prod.example", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_unsanitized_dataset_is_refused(tmp_path: Path, staging) -> None:
    src = write_dataset(tmp_path / "in", [exchange("s1", 0, 0)], sanitized=False)
    with pytest.raises(InputError, match="not sanitized.*--allow-unsanitized"):
        run_replay(_config(src, staging.url, tmp_path / "out"))
    assert staging.received == []
    summary = run_replay(_config(src, staging.url, tmp_path / "out", allow_unsanitized=True))
    assert summary.counts.sent == 1


def test_limit_sessions_and_every_row_accounted(tmp_path: Path, staging) -> None:
    records = [
        exchange(f"s{s}", i, s * 10 + i, "GET", f"/{s}/{i}") for s in range(10) for i in range(3)
    ]
    src = write_dataset(tmp_path / "in", records)
    run_replay(_config(src, staging.url, tmp_path / "a", sessions=4, seed=7))
    again = {r.header("x-session") for r in staging.received}
    staging.received.clear()
    run_replay(_config(src, staging.url, tmp_path / "b", sessions=4, seed=7))
    assert {r.header("x-session") for r in staging.received} == again and len(again) == 4
    rows = _results(tmp_path / "b")
    assert len(rows) == 30
    assert sum(r["skip_reason"] == "not_sampled" for r in rows) == 18
    staging.received.clear()
    summary = run_replay(_config(src, staging.url, tmp_path / "c", limit=5))
    assert len(staging.received) == 5 and summary.counts.skipped == {"limit": 25}
    # Small row groups: once the limit is reached, later row groups are skipped as whole
    # Arrow batches, with the same reasons the row-by-row path gives.
    records.append(exchange("s9", 9, 999, "POST", "/late-write", body=b"{}"))
    small = write_dataset(tmp_path / "small", records, row_group_rows=4)
    staging.received.clear()
    summary = run_replay(_config(small, staging.url, tmp_path / "d", limit=5, sessions=8))
    rows = _results(tmp_path / "d")
    assert len(rows) == 31 and len(staging.received) == 5
    assert summary.counts.skipped == {
        "limit": sum(r["skip_reason"] == "limit" for r in rows),
        "not_sampled": 6,
        "write_not_allowed": 1,
    }
    assert sum(summary.counts.skipped.values()) == 26
    assert {r["run_id"] for r in rows} == {summary.run_id}
    skipped = [r for r in rows if r["outcome"] == "skipped"]
    assert all(r["attempts"] == 0 and r["substitutions"] == [] for r in skipped)


def test_out_dir_with_results_is_refused(tmp_path: Path, staging) -> None:
    src = write_dataset(tmp_path / "in", [exchange("s1", 0, 0)])
    run_replay(_config(src, staging.url, tmp_path / "out"))
    with pytest.raises(InputError, match="--overwrite"):
        run_replay(_config(src, staging.url, tmp_path / "out"))
    run_replay(_config(src, staging.url, tmp_path / "out", overwrite=True))
    assert len(_results(tmp_path / "out")) == 1


def test_shards_split_sessions_and_share_one_results_dir(tmp_path: Path, staging) -> None:
    import time

    records = [
        exchange(f"s{s}", i, s * 7 + i * 50, "GET", f"/{s}/{i}")
        for s in range(12)
        for i in range(3)
    ]
    src = write_dataset(tmp_path / "in", records)
    start_at = time.time() + 0.3
    summaries = [
        run_replay(
            _config(
                src,
                staging.url,
                tmp_path / "out",
                timing=Timing("speed", 1.0),
                shard_index=i,
                shard_count=3,
                start_at=start_at,
            )
        )
        for i in range(3)
    ]
    names = sorted(p.name for p in (tmp_path / "out").glob("*.parquet"))
    assert names == [f"results-shard-{i}-of-3-000001.parquet" for i in range(3)]
    rows = _results(tmp_path / "out")
    assert sorted(r["id"] for r in rows) == sorted(r.id for r in records)  # each row exactly once
    sessions_per_run = [
        {r["session_id"] for r in rows if r["run_id"] == s.run_id} for s in summaries
    ]
    assert all(sessions_per_run)
    assert sum(len(x) for x in sessions_per_run) == 12  # no session in two shards
    # One shared origin: a row's schedule is start_at + its recorded offset, in every shard.
    for r in rows:
        expected = int(start_at * 1_000_000) + (r["started_at"] - records[0].started_at)
        assert abs(r["scheduled_at"] - expected) < 2_000


def test_noise_sample_resends_a_spread_of_gets(tmp_path: Path, staging) -> None:
    records = [
        exchange(f"s{s}", i, s * 10 + i, "GET", f"/route{i % 3}/{s}")
        for s in range(8)
        for i in range(3)
    ]
    records.append(exchange("s0", 9, 500, "POST", "/write", body=b"{}"))
    src = write_dataset(tmp_path / "in", records)
    summary = run_replay(
        _config(src, staging.url, tmp_path / "out", allow_writes=True, noise_sample=6, seed=5)
    )
    rows = _results(tmp_path / "out")
    first = [r for r in rows if r["replay_pass"] == 1]
    second = [r for r in rows if r["replay_pass"] == 2]
    assert len(first) == 25 and len(second) == 6
    assert summary.counts.noise_sent == 6 and summary.counts.sent == 25
    by_id = {r["id"]: r for r in first}
    assert all(r["method"] == "GET" and r["staging_status"] == 200 for r in second)
    assert all(r["replay_id"] != by_id[r["id"]]["replay_id"] for r in second)
    assert all(r["trace_id"] == by_id[r["id"]]["trace_id"] for r in second)
    assert len({r["path"].split("/")[1] for r in second}) == 3  # spread over the routes
    # Seeded: the same seed picks the same exchanges.
    run_replay(
        _config(src, staging.url, tmp_path / "again", allow_writes=True, noise_sample=6, seed=5)
    )
    again = {r["id"] for r in _results(tmp_path / "again") if r["replay_pass"] == 2}
    assert again == {r["id"] for r in second}


def test_duration_stops_cleanly(tmp_path: Path, staging) -> None:
    records = [exchange("s1", i, i * 1000, "GET", f"/d/{i}") for i in range(20)]
    src = write_dataset(tmp_path / "in", records)
    summary = run_replay(
        _config(src, staging.url, tmp_path / "out", timing=Timing("speed", 10.0), duration=0.55)
    )
    assert summary.status == "complete" and summary.exit_code == 0
    assert summary.reason == "duration reached"
    rows = _results(tmp_path / "out")
    assert len(rows) == 20
    sent = [r for r in rows if r["outcome"] == "sent"]
    assert 3 <= len(sent) <= 6 and summary.counts.skipped == {"duration": 20 - len(sent)}
    # Whatever was sent was due before the deadline; everything due later was skipped.
    assert all(r["started_at"] - records[0].started_at <= 5_500_000 for r in sent)
    assert all(r["skip_reason"] == "duration" for r in rows if r["outcome"] != "sent")


def test_config_and_summary_cross_process_boundaries(tmp_path: Path, staging) -> None:
    """run_replay(config) is what a remote worker calls: config and summary pickle, and the
    loop runs outside the main thread (no signal handlers there)."""
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    src = write_dataset(tmp_path / "in", [exchange("s1", i, i, "GET", f"/w/{i}") for i in range(3)])
    config = ReplayConfig(
        str(src), staging.url, str(tmp_path / "out"), timing=Timing("max"), correlate="off"
    )
    config = pickle.loads(pickle.dumps(config))
    with ThreadPoolExecutor(1) as pool:
        summary = pool.submit(run_replay, config).result(timeout=120)
    summary = pickle.loads(pickle.dumps(summary))
    assert summary.status == "complete" and summary.counts.sent == 3
    assert summary.files and Path(summary.files[0]).exists()


def test_a_results_dataset_can_be_replayed_again(tmp_path: Path, staging) -> None:
    src = write_dataset(tmp_path / "in", [exchange("s1", 0, 0, "GET", "/again")])
    run_replay(_config(src, staging.url, tmp_path / "first", allow_unsanitized=True))
    summary = run_replay(
        _config(tmp_path / "first", staging.url, tmp_path / "second", allow_unsanitized=True)
    )
    (row,) = _results(tmp_path / "second")
    assert summary.counts.sent == 1 and row["run_id"] == summary.run_id
    assert row["path"] == "/again" and row["replay_pass"] == 1


def test_rate_mode_spaces_requests_evenly(tmp_path: Path, staging) -> None:
    # Recorded in a burst; --rate 20 sends one every 50 ms whatever the recording says.
    records = [exchange(f"s{i}", 0, i, "GET", f"/r/{i}") for i in range(8)]
    src = write_dataset(tmp_path / "in", records)
    run_replay(_config(src, staging.url, tmp_path / "out", timing=Timing("rate", rate=20.0)))
    rows = sorted(_results(tmp_path / "out"), key=lambda r: r["scheduled_at"])
    first = rows[0]["scheduled_at"]
    assert [r["scheduled_at"] - first for r in rows] == [i * 50_000 for i in range(8)]


def test_total_timeout_fails_the_request_with_a_reason(tmp_path: Path, staging) -> None:
    from shadowtape.replay.config import Timeouts

    staging.delay = 1.5
    src = write_dataset(tmp_path / "in", [exchange("s1", 0, 0, "GET", "/slow")])
    summary = run_replay(
        _config(
            src,
            staging.url,
            tmp_path / "out",
            timeouts=Timeouts(connect=1.0, read=10.0, total=0.3),
            retry=RetryPolicy(1),
        )
    )
    (row,) = _results(tmp_path / "out")
    assert row["outcome"] == "failed" and row["staging_status"] is None
    assert "no complete answer within 0.3 s" in row["staging_error"]
    assert summary.counts.failed == 1


def test_http2_over_tls_through_a_real_mitmproxy(tmp_path: Path, staging) -> None:
    """TLS with ALPN: mitmdump in reverse mode offers HTTP/2 in front of the staging server."""
    with mitmdump_reverse(staging.url, tmp_path / "mitm") as port:
        records = [exchange("s1", i, i, "GET", f"/h2/{i}") for i in range(3)]
        src = write_dataset(tmp_path / "in", records)
        summary = run_replay(
            _config(src, f"https://127.0.0.1:{port}", tmp_path / "out", tls_verify=False)
        )
    assert summary.counts.sent == 3
    rows = _results(tmp_path / "out")
    assert {r["staging_http_version"] for r in rows} == {"HTTP/2"}
    assert {r["staging_status"] for r in rows} == {200}
    assert sorted(r.path for r in staging.received) == ["/h2/0", "/h2/1", "/h2/2"]


@pytest.mark.parametrize(
    ("reason", "status"), [("interrupted", "interrupted"), ("circuit_open", "circuit_open")]
)
def test_stop_switch_stops_a_run_from_another_thread(
    tmp_path: Path, staging, reason: str, status: str
) -> None:
    import time
    from concurrent.futures import ThreadPoolExecutor

    from shadowtape.replay.runner import StopSwitch

    records = [exchange("s1", i, i * 200, "GET", f"/sw/{i}") for i in range(50)]
    src = write_dataset(tmp_path / "in", records)
    switch = StopSwitch()
    config = _config(src, staging.url, tmp_path / "out", timing=Timing("speed", 1.0), grace=2.0)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(run_replay, config, None, None, switch)
        deadline = time.monotonic() + 60
        while len(staging.received) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        switch.request(reason)
        summary = future.result(timeout=60)
    assert summary.status == status
    rows = _results(tmp_path / "out")
    assert len(rows) == 50
    skipped = {r["skip_reason"] for r in rows if r["outcome"] == "skipped"}
    assert skipped == {reason}
    assert 2 <= summary.counts.sent < 50
