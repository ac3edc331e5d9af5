"""Scheduling logic against a fake clock, and the pure planning pieces."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from shadowtape.replay.config import BreakerPolicy, RewriteRule, Timing
from shadowtape.replay.guardrails import CircuitBreaker
from shadowtape.replay.plan import (
    OffsetClock,
    OrderTracker,
    ReorderBuffer,
    SessionSampler,
    in_shard,
    planned_duration,
    stable_hash,
    step_key,
)
from shadowtape.replay.scheduler import Lane, SessionScheduler, Work
from shadowtape.replay.sender import RequestParts, TargetMap, build_request
from shadowtape.replay.stats import Quantiles
from shadowtape.replay.traceparent import span_id, trace_id, traceparent


class FakeClock:
    """Virtual time: a sleep jumps to its deadline plus a fixed oversleep, as a busy OS would."""

    def __init__(self, oversleep: float = 0.0) -> None:
        self.t = 1000.0
        self.oversleep = oversleep
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep_until(self, deadline: float) -> None:
        self.sleeps.append(deadline)
        for _ in range(3):  # let what is already due run at the current virtual time
            await asyncio.sleep(0)
        if deadline > self.t:
            self.t = deadline + self.oversleep
        await asyncio.sleep(0)


def _scheduler(clock: FakeClock, handle: Any, max_pending: int = 100) -> SessionScheduler:
    return SessionScheduler(
        clock,
        handle,
        new_state=lambda sid: {"sid": sid},
        abandon=lambda lane, work: None,
        max_pending=max_pending,
        idle_us=10**12,
        stop=asyncio.Event(),
    )


def test_schedule_comes_from_one_origin_so_oversleeps_do_not_drift() -> None:
    async def main() -> list[tuple[float, float]]:
        clock = FakeClock(oversleep=0.0003)
        seen: list[tuple[float, float]] = []

        async def handle(lane: Lane, work: Work) -> None:
            seen.append((work.scheduled, clock.now()))

        sched = _scheduler(clock, handle)
        offsets = OffsetClock(Timing("speed", 10.0), origin_us=0)
        origin = clock.now()
        for i in range(200):
            recorded = i * 100_000  # every 100 ms recorded -> every 10 ms replayed
            due = origin + offsets.offset(recorded)
            await sched.submit(Work("s", {"i": i}, due), recorded)
        await sched.join()
        return seen

    seen = asyncio.run(main())
    assert len(seen) == 200
    for i, (scheduled, sent) in enumerate(seen):
        assert scheduled == pytest.approx(1000.0 + i * 0.01)
        # Each is late by one oversleep, never by the sum of all earlier ones.
        assert sent - scheduled == pytest.approx(0.0003 if i else 0.0, abs=1e-9)


def test_session_order_and_waiting_for_previous_answer() -> None:
    async def main() -> list[str]:
        clock = FakeClock()
        log: list[str] = []
        release = asyncio.Event()

        async def handle(lane: Lane, work: Work) -> None:
            log.append(f"start {work.session_id}{work.row['seq']}")
            if work.session_id == "a" and work.row["seq"] == 0:
                await release.wait()  # a slow answer holds session a only
            log.append(f"end {work.session_id}{work.row['seq']}")

        sched = _scheduler(clock, handle)
        for seq in range(2):
            for sid in ("a", "b"):
                await sched.submit(Work(sid, {"seq": seq}, None), 0)
        for _ in range(5):
            await asyncio.sleep(0)
        assert "end b1" in log and "start a1" not in log
        release.set()
        await sched.join()
        return log

    log = asyncio.run(main())
    assert log.index("end a0") < log.index("start a1")


def test_pending_work_is_bounded() -> None:
    async def main() -> None:
        clock = FakeClock()
        release = asyncio.Event()

        async def handle(lane: Lane, work: Work) -> None:
            await release.wait()

        sched = _scheduler(clock, handle, max_pending=2)
        await sched.submit(Work("a", {}, None), 0)
        await sched.submit(Work("b", {}, None), 0)
        third = asyncio.ensure_future(sched.submit(Work("c", {}, None), 0))
        await asyncio.sleep(0.01)
        assert not third.done()  # the dispatcher waits instead of queueing without bound
        release.set()
        assert await third
        await sched.join()

    asyncio.run(main())


def test_reorder_buffer_sorts_within_the_measured_window() -> None:
    rng = random.Random(1)
    rows = [
        {"started_at": i * 1000 + rng.randint(-5000, 5000), "session_id": "s", "seq": i}
        for i in range(500)
    ]
    tracker = OrderTracker()
    tracker.add(r["started_at"] for r in rows)
    buf = ReorderBuffer(tracker.disorder_us, max_rows=10_000)
    out = [r for row in rows for r in buf.push(row)] + list(buf.drain())
    assert [r["started_at"] for r in out] == sorted(r["started_at"] for r in rows)
    assert buf.forced == 0 and buf.late == 0
    assert len(buf) == 0


def test_reorder_buffer_memory_cap_is_counted() -> None:
    rows = [{"started_at": t, "session_id": "s", "seq": t} for t in range(100, 0, -1)]
    buf = ReorderBuffer(window_us=10**9, max_rows=10)
    out = [r for row in rows for r in buf.push(row)] + list(buf.drain())
    assert len(out) == 100 and buf.forced == 90 and buf.late > 0


def test_offsets_cap_gaps_and_rate_mode() -> None:
    clock = OffsetClock(Timing("speed", 2.0), origin_us=0, max_gap=1.0)
    got = [clock.offset(t * 1_000_000) for t in (0, 1, 61, 62)]
    assert got == [0.0, 0.5, 1.0, 1.5]  # the 60 s idle gap counts as 1 s
    rate = OffsetClock(Timing("rate", rate=4.0), origin_us=0)
    assert [rate.offset(t) for t in (5, 5, 9, 100)] == [0.0, 0.25, 0.5, 0.75]
    assert planned_duration(Timing("speed", 1.0), [0, 2_000_000], 0, None) == 2.0
    assert planned_duration(Timing("max"), [0, 1], 0, None) is None


def test_sampling_and_shards_are_stable() -> None:
    ids = [f"session-{i}" for i in range(300)]
    a, b = SessionSampler(20, seed=3), SessionSampler(20, seed=3)
    for sid in ids:
        a.offer(sid)
    for sid in reversed(ids * 2):
        b.offer(sid)
    assert a.selected() == b.selected() and len(a.selected()) == 20
    other = SessionSampler(20, seed=4)
    for sid in ids:
        other.offer(sid)
    assert other.selected() != a.selected()
    shards = [[sid for sid in ids if in_shard(sid, i, 3)] for i in range(3)]
    assert sorted(sum(shards, [])) == sorted(ids) and all(shards)
    assert stable_hash("x") == stable_hash("x") != stable_hash("y")


def test_step_keys_fold_ids() -> None:
    assert step_key("get", "/orders/4000000001/items") == "GET /orders/{id}/items"
    assert step_key("GET", "/u/0b0c9c4e-5f3a-4c11-9a3e-2f7b8a1d2c3e?x=1") == "GET /u/{id}"
    assert step_key("POST", "/login") == "POST /login"
    assert step_key("GET", "/x/1", route="GET /x/{n}") == "GET /x/{n}"


def test_build_request_rewrites_and_keeps_host_when_asked() -> None:
    targets = TargetMap(
        "http://127.0.0.1:8000/base",
        (
            RewriteRule("host", "auth.example.com", "http://auth.staging:9000"),
            RewriteRule("path", "/v1/", "/v2/"),
        ),
    )
    parts = RequestParts(
        "get", "api.example.com", "/v1/items", [("q", "a b")], [("Host", "api.example.com")], None
    )
    req = build_request(parts, targets)
    assert req.method == "get"  # methods are case-sensitive: sent as recorded
    assert req.url == "http://127.0.0.1:8000/base/v2/items?q=a+b"
    assert req.target == b"/base/v2/items?q=a+b"
    assert req.headers == [(b"Host", b"127.0.0.1:8000")]
    auth = RequestParts(
        "POST", "AUTH.example.com", "/login", [], [("host", "auth.example.com")], b"x"
    )
    req = build_request(auth, targets, keep_host=True, extra_headers=(("X-A", "1"),))
    assert req.url == "http://auth.staging:9000/login"
    assert (req.host, req.port) == ("auth.staging", 9000)
    # The recording had a body but no length: Content-Length is added (the body is sent whole).
    assert req.headers == [
        (b"host", b"auth.example.com"),
        (b"Content-Length", b"1"),
        (b"X-A", b"1"),
    ]


def test_breaker_trips_on_error_rate_and_on_connection_failures() -> None:
    b = CircuitBreaker(BreakerPolicy(error_rate=0.5, window=10, min_requests=10))
    for i in range(9):
        b.record(error=i % 2 == 0)
    assert not b.open
    b.record(error=True)
    assert b.open and "error rate" in b.trip.reason
    c = CircuitBreaker(BreakerPolicy(connection_failures=3, min_requests=100))
    c.record(error=True, connect_failure=True)
    c.record(error=True, connect_failure=True)
    c.record(error=False)
    c.record(error=True, connect_failure=True)
    assert not c.open
    c.record(error=True, connect_failure=True)
    c.record(error=True, connect_failure=True)
    assert c.open


def test_trace_ids_and_quantiles() -> None:
    t, s = trace_id("run", "sess"), span_id("run", "ex", 1)
    assert (
        len(t) == 32 and len(s) == 16 and t == trace_id("run", "sess") != trace_id("run2", "sess")
    )
    assert traceparent(t, s) == f"00-{t}-{s}-01"
    q = Quantiles()
    for v in range(1, 1001):
        q.add(v)
    assert q.quantile(0.5) == pytest.approx(500, rel=0.03)
    assert q.quantile(0.99) == pytest.approx(990, rel=0.03) and q.max == 1000


def test_idle_sessions_are_forgotten() -> None:
    async def main() -> SessionScheduler:
        clock = FakeClock()

        async def handle(lane: Lane, work: Work) -> None:
            return None

        sched = SessionScheduler(
            clock,
            handle,
            new_state=lambda sid: {},
            abandon=lambda lane, work: None,
            max_pending=10,
            idle_us=1_000_000,
            stop=asyncio.Event(),
        )
        for i in range(2048):  # one short session per recorded millisecond
            await sched.submit(Work(f"s{i}", {}, None), i * 1000)
        await sched.join()
        return sched

    sched = asyncio.run(main())
    assert sched.lanes_created == 2048
    assert len(sched.lanes) < 1100  # sessions quiet for more than 1 recorded second are gone
