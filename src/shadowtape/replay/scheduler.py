"""When requests go out: a dispatcher that waits for each request's due time and per-session
lanes that keep a session's requests in order, each waiting for the previous response.

Due times come from one fixed origin (see plan.OffsetClock), never from summed sleeps. The
clock is injected, so the timing is tested against a fake clock and run against a real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep_until(self, deadline: float) -> None: ...


class MonotonicClock:
    """The real clock. asyncio's timers wake up to a millisecond late, so the last stretch
    is spent yielding to the loop instead, which keeps dispatch lateness well under 1 ms."""

    SPIN = 0.0015

    def now(self) -> float:
        return time.monotonic()

    async def sleep_until(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining > self.SPIN:
            await asyncio.sleep(remaining - self.SPIN)
        while time.monotonic() < deadline:
            await asyncio.sleep(0)


@dataclass(slots=True)
class Work:
    """One recorded row on its way through a lane; `due` None means 'do not wait'."""

    session_id: str
    row: dict[str, Any]
    due: float | None = None
    skip_reason: str | None = None
    scheduled: float | None = None  # when it was due (or handed over, for `max`)


@dataclass(slots=True)
class Lane:
    """One session's queue and its state; the state object belongs to the caller."""

    session_id: str
    state: Any
    queue: deque[Work] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None
    last_recorded_us: int = 0


class SessionScheduler:
    """Dispatches work at its due time into per-session FIFO lanes, run concurrently.

    `max_pending` bounds the rows handed over but not yet handled, so a slow target cannot
    make memory grow: the dispatcher waits instead, and that wait shows up as lateness.
    Idle lanes are forgotten once their session has been quiet for `idle_us` of recorded time.
    """

    def __init__(
        self,
        clock: Clock,
        handle: Callable[[Lane, Work], Awaitable[None]],
        *,
        new_state: Callable[[str], Any],
        abandon: Callable[[Lane, Work], None],
        max_pending: int,
        idle_us: int,
        stop: asyncio.Event,
    ) -> None:
        self.clock = clock
        self.handle = handle
        self.new_state = new_state
        self.abandon = abandon
        self.idle_us = idle_us
        self.stop = stop
        self._room = asyncio.Semaphore(max_pending)
        self.lanes: dict[str, Lane] = {}
        self.lanes_created = 0
        self._submitted = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._running = 0
        self.failure: BaseException | None = None

    async def submit(self, work: Work, recorded_us: int) -> bool:
        """Hand `work` to its session's lane at its due time; False if stopped first."""
        await self._room.acquire()
        if work.due is not None and not await self._wait(work.due):
            self._room.release()
            return False
        if self.stop.is_set() and work.skip_reason is None:
            self._room.release()
            return False
        work.scheduled = work.due if work.due is not None else self.clock.now()
        lane = self.lanes.get(work.session_id)
        if lane is None:
            lane = Lane(work.session_id, self.new_state(work.session_id))
            self.lanes[work.session_id] = lane
            self.lanes_created += 1
        lane.last_recorded_us = max(lane.last_recorded_us, recorded_us)
        lane.queue.append(work)
        if lane.task is None:
            self._running += 1
            self._idle.clear()
            lane.task = asyncio.ensure_future(self._drain(lane))
        self._submitted += 1
        if self._submitted % 1024 == 0:
            self._forget_idle(recorded_us)
        return True

    async def _wait(self, due: float) -> bool:
        """Sleep until `due`, but wake early if the run is stopped during a long wait."""
        if self.stop.is_set():
            return False
        if due - self.clock.now() < 0.05:
            await self.clock.sleep_until(due)
            return not self.stop.is_set()
        sleeper = asyncio.ensure_future(self.clock.sleep_until(due))
        stopper = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (sleeper, stopper):
                t.cancel()
        return not self.stop.is_set()

    async def _drain(self, lane: Lane) -> None:
        try:
            while lane.queue:
                work = lane.queue[0]
                try:
                    await self.handle(lane, work)
                finally:
                    lane.queue.popleft()
                    self._room.release()
        except asyncio.CancelledError:
            # Cancelled after the grace period: what never got its turn is still accounted.
            while lane.queue:
                self.abandon(lane, lane.queue.popleft())
                self._room.release()
            raise
        except Exception as exc:  # a bug in a handler: stop the run rather than lose rows
            self.failure = self.failure or exc
            self.stop.set()
            while lane.queue:
                self.abandon(lane, lane.queue.popleft())
                self._room.release()
        finally:
            lane.task = None
            self._running -= 1
            if self._running == 0:
                self._idle.set()

    def _forget_idle(self, recorded_us: int) -> None:
        horizon = recorded_us - self.idle_us
        stale = [
            sid
            for sid, lane in self.lanes.items()
            if lane.task is None and not lane.queue and lane.last_recorded_us < horizon
        ]
        for sid in stale:
            del self.lanes[sid]

    async def join(self) -> None:
        await self._idle.wait()

    def cancel_all(self) -> None:
        for lane in list(self.lanes.values()):
            if lane.task is not None:
                lane.task.cancel()

    async def join_cancelled(self) -> None:
        tasks = [lane.task for lane in self.lanes.values() if lane.task is not None]
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
