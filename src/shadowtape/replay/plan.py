"""Which recorded requests are replayed and when: pure functions and small state machines.

Nothing here touches a socket, a file or a clock, so ordering and offsets are tested directly.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from shadowtape.http.routes import infer_template, route_label
from shadowtape.http.target import target_path
from shadowtape.replay.config import WRITE_METHODS, Timing


def stable_hash(*parts: str | int) -> int:
    """A 64-bit hash that is the same on every machine and run (Python's hash() is salted)."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(str(p).encode("utf-8", "surrogateescape"))
        h.update(b"\x00")
    return int.from_bytes(h.digest(), "big")


def in_shard(session_id: str, index: int, count: int) -> bool:
    return count == 1 or stable_hash("shard", session_id) % count == index


def is_write(method: str) -> bool:
    return method.upper() in WRITE_METHODS


def step_key(method: str, path: str | None, route: str | None = None) -> str:
    """What makes two requests 'the same step' in different sessions: the route template when
    capture or sanitize knew it, else the path with id-like segments folded to {id}."""
    if route:
        return route if " " in route else route_label(method, route)
    return route_label(method, infer_template(target_path(path or "/"), fold=True))


class SessionSampler:
    """Picks `n` sessions reproducibly: the n smallest seeded hashes of distinct session ids.

    Streaming and O(n): a session is kept only while its hash is among the n smallest seen.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self._heap: list[tuple[int, str]] = []  # max-heap by negated hash
        self._members: set[str] = set()

    def offer(self, session_id: str) -> None:
        if session_id in self._members or self.n <= 0:
            return
        h = stable_hash("sample", self.seed, session_id)
        if len(self._heap) < self.n:
            heapq.heappush(self._heap, (-h, session_id))
            self._members.add(session_id)
        elif h < -self._heap[0][0]:
            _, dropped = heapq.heapreplace(self._heap, (-h, session_id))
            self._members.discard(dropped)
            self._members.add(session_id)

    def selected(self) -> frozenset[str]:
        return frozenset(self._members)


NOISE_METHODS = frozenset({"GET", "HEAD"})


class NoiseSampler:
    """Picks the `--noise-sample` requests before anything is sent: a seeded sample of
    GET/HEAD requests, spread over steps (routes or id-folded paths).

    Streaming and bounded: per step only the n smallest seeded hashes are kept (any step can
    give all n if it must), and at most `max_steps` steps are tracked.
    """

    def __init__(self, n: int, seed: int, max_steps: int = 10_000) -> None:
        self.n = n
        self.seed = seed
        self.max_steps = max_steps
        self._heaps: dict[str, list[tuple[int, str]]] = {}  # max-heaps by negated hash

    def offer(self, exchange_id: str, method: str, step: str) -> None:
        if self.n <= 0 or method.upper() not in NOISE_METHODS:
            return
        heap = self._heaps.get(step)
        if heap is None:
            if len(self._heaps) >= self.max_steps:
                return
            heap = self._heaps[step] = []
        h = stable_hash("noise", self.seed, exchange_id)
        if len(heap) < self.n:
            heapq.heappush(heap, (-h, exchange_id))
        elif h < -heap[0][0]:
            heapq.heapreplace(heap, (-h, exchange_id))

    def selected(self) -> frozenset[str]:
        """Round robin over steps (sorted), smallest hash first: a spread sample of n."""
        queues = [
            [i for _, i in sorted(heap, key=lambda e: (-e[0], e[1]))]
            for _, heap in sorted(self._heaps.items())
        ]
        chosen: list[str] = []
        depth = 0
        while len(chosen) < self.n and any(depth < len(q) for q in queues):
            for q in queues:
                if depth < len(q) and len(chosen) < self.n:
                    chosen.append(q[depth])
            depth += 1
        return frozenset(chosen)


@dataclass(slots=True)
class OrderTracker:
    """How far back in time records jump in storage order: the reorder window that makes a
    bounded buffer emit them exactly sorted."""

    count: int = 0
    first_us: int | None = None
    last_us: int | None = None
    running_max: int | None = None
    disorder_us: int = 0

    def add(self, started_at: Iterable[int]) -> None:
        for v in started_at:
            self.count += 1
            if self.first_us is None or v < self.first_us:
                self.first_us = v
            if self.last_us is None or v > self.last_us:
                self.last_us = v
            if self.running_max is None or v > self.running_max:
                self.running_max = v
            elif self.running_max - v > self.disorder_us:
                self.disorder_us = self.running_max - v


@dataclass(order=True, slots=True)
class _Held:
    started_at: int
    session_id: str
    seq: int
    arrival: int
    row: Any = field(compare=False)


class ReorderBuffer:
    """Puts rows back in recorded order (started_at, then session and seq).

    A row is released once no row still to come can sort before it: rows arrive at most
    `window_us` earlier than the latest seen (measured in a first pass). `max_rows` caps memory
    for datasets stored in a wildly different order; rows released early that way are counted.
    """

    def __init__(self, window_us: int, max_rows: int) -> None:
        self.window_us = window_us
        self.max_rows = max_rows
        self._heap: list[_Held] = []
        self._latest: int | None = None
        self._arrivals = 0
        self._released_at: int | None = None
        self.forced = 0  # released before their window closed (buffer full)
        self.late = 0  # arrived after a later row was already released

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        started = row["started_at"]
        if self._released_at is not None and started < self._released_at:
            self.late += 1
        self._arrivals += 1
        heapq.heappush(
            self._heap, _Held(started, row["session_id"], row["seq"], self._arrivals, row)
        )
        if self._latest is None or started > self._latest:
            self._latest = started
        while self._heap and (
            self._heap[0].started_at <= self._latest - self.window_us
            or len(self._heap) > self.max_rows
        ):
            if self._heap[0].started_at > self._latest - self.window_us:
                self.forced += 1
            yield self._release()

    def drain(self) -> Iterator[dict[str, Any]]:
        while self._heap:
            yield self._release()

    def _release(self) -> dict[str, Any]:
        held = heapq.heappop(self._heap)
        self._released_at = held.started_at
        return held.row


class OffsetClock:
    """Recorded time -> seconds after the replay origin, for rows given in recorded order.

    Offsets come from one fixed origin (never from summed sleeps), so small oversleeps cannot
    add up to drift. Idle gaps longer than `max_gap` are cut to `max_gap` before scaling.
    """

    def __init__(self, timing: Timing, origin_us: int, max_gap: float | None = None) -> None:
        self.timing = timing
        self.origin_us = origin_us
        self.max_gap_us = None if max_gap is None else int(max_gap * 1_000_000)
        self._prev_us: int | None = None
        self._compressed_us = 0
        self._count = 0

    def offset(self, started_at_us: int) -> float:
        """Seconds after the origin at which this row is due (0 for `max`)."""
        if self._prev_us is None:
            # The first row of a shard may come after the shared origin; keep that gap too.
            gap = max(0, started_at_us - self.origin_us)
        else:
            gap = max(0, started_at_us - self._prev_us)
        if self.max_gap_us is not None:
            gap = min(gap, self.max_gap_us)
        self._prev_us = (
            started_at_us if self._prev_us is None else max(self._prev_us, started_at_us)
        )
        self._compressed_us += gap
        index = self._count
        self._count += 1
        if self.timing.mode == "speed":
            return self._compressed_us / 1_000_000 / self.timing.speed
        if self.timing.mode == "rate":
            return index / self.timing.rate
        return 0.0

    @property
    def recorded_span(self) -> float:
        """Recorded seconds covered so far, after gap capping."""
        return self._compressed_us / 1_000_000


def planned_duration(
    timing: Timing, started_at_sorted: Iterable[int], origin_us: int, max_gap: float | None
) -> float | None:
    """How long dispatch takes at this timing; None for `max` (it depends on the target)."""
    if timing.mode == "max":
        return None
    clock = OffsetClock(timing, origin_us, max_gap)
    last = 0.0
    for v in started_at_sorted:
        last = clock.offset(v)
    return last
