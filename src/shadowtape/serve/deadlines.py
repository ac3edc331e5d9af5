"""Callbacks at precise times on a loop whose timers tick in milliseconds.

libuv (under uvloop) keeps time and fires timers in whole milliseconds, and its clock is read
once per loop iteration, so an answer due in 3.4 ms would leave anywhere from 2.5 to 4.5 ms
after the request: too coarse for a double whose latency must follow the recording on routes
that answer in a few milliseconds. A deadline is therefore set on a loop timer 1.5 ms early and
the last stretch is waited out in naps of at most 0.2 ms, the loop polling its sockets between
naps. A pure spin (no naps) was measured first: it kept a core busy and, on a shared 2-core
machine, lost the CPU to other processes often enough to push p95 lateness to 10-50 ms; the
naps keep lateness near 0.1 ms at the price of other connections' I/O waiting at most one nap
while an answer is in its last 1.5 ms. `--latency none` never gets here.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any

EARLY_S = 0.0015
NAP_S = 0.0002


class Deadline:
    __slots__ = ("when", "callback", "args", "cancelled", "handle")

    def __init__(self, when: float, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False
        self.handle: asyncio.TimerHandle | None = None

    def cancel(self) -> None:
        self.cancelled = True
        if self.handle is not None:
            self.handle.cancel()


class Deadlines:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._spinning = False

    def at(self, when: float, callback: Callable[..., None], *args: Any) -> Deadline:
        """Run `callback(*args)` at monotonic time `when` (at once if it has passed)."""
        deadline = Deadline(when, callback, args)
        early = when - time.monotonic() - EARLY_S
        if early > 0:
            deadline.handle = self.loop.call_later(early, self._arm, deadline)
        else:
            self._arm(deadline)
        return deadline

    def _arm(self, deadline: Deadline) -> None:
        deadline.handle = None
        if deadline.cancelled:
            return
        heapq.heappush(self._heap, (deadline.when, next(self._order), deadline))
        if not self._spinning:
            self._spinning = True
            self.loop.call_soon(self._spin)

    def _spin(self) -> None:
        now = time.monotonic()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, deadline = heapq.heappop(heap)
            if not deadline.cancelled:
                deadline.callback(*deadline.args)
        if heap:
            wait = heap[0][0] - now
            if wait > 0:
                time.sleep(min(wait, NAP_S))
            self.loop.call_soon(self._spin)
        else:
            self._spinning = False
