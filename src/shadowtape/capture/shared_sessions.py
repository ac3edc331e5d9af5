"""Session state shared by the processes of one `capture --workers N`.

Several proxy processes serve one listen address; the kernel spreads connections over them,
so the requests of one session (a browser opens several connections; a client reconnects)
arrive at different processes. What must not depend on which process saw a request:
- `seq`, the order of a request inside its session: one counter per session, for all;
- the session of a client recognised by its address and a silence gap: one (start, last
  seen) per client address, for all, since the start time is part of the session's id.

Both live in one file mapped into every worker (`mmap`, MAP_SHARED; on /dev/shm where there
is one), fixed-size open-addressing tables keyed by 64 bits of a digest, guarded by an
`flock` on that file: the kernel drops a lock whose holder dies, so a worker killed by
SIGKILL cannot wedge the others (a table entry it was writing may be left half-updated: at
worst one session's next seq repeats). One assignment takes ~7 µs with the lock (measured;
the in-process tracker's ~9 µs is mostly the keyed digest both pay), against the
milliseconds mitmproxy spends per request.

Why not order at read time and renumber `seq` in a finalize step: files are final when they
roll (a reader, or `replay`, may take them during a long capture), a crash before the step
would leave provisional numbers, and client-address sessions would still get a different id
in each process. Here every file is right when written, as in one process.

A table that is full (more live sessions than it holds) forgets the least recently used
entry near the new one; an older session seen again then restarts its count, as the
in-process tracker's bound does.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Slots per table: a power of two, about 2.6x the in-process tracker's 200,000 sessions.
DEFAULT_SLOTS = 1 << 19
PROBE = 16  # slots looked at per key before the least recently used one is reused
_FIELDS = 3  # key, then two values: (next seq, last used) or (session start, last seen)


@dataclass(frozen=True, slots=True)
class SharedSessionsHandle:
    """What a worker process needs to attach to the table (picklable)."""

    path: str
    slots: int


def _key(text: str) -> int:
    # 0 marks an empty slot.
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") or 1


class _Table:
    """Keys and two int64 values per slot, in three columns of the shared block."""

    def __init__(self, buf: memoryview, offset: int, slots: int) -> None:
        size = 8 * slots
        self.keys = buf[offset : offset + size].cast("Q")
        self.first = buf[offset + size : offset + 2 * size].cast("q")
        self.second = buf[offset + 2 * size : offset + 3 * size].cast("q")
        self.mask = slots - 1

    def slot(self, key: int, stamp_of: Callable[[int], int]) -> tuple[int, bool]:
        """(index, found): the key's slot, else the first free one, else the stalest."""
        keys = self.keys
        mask = self.mask
        start = key & mask
        stalest, stalest_stamp = start, None
        for step in range(PROBE):
            i = (start + step) & mask
            k = keys[i]
            if k == key:
                return i, True
            if k == 0:
                return i, False
            stamp = stamp_of(i)
            if stalest_stamp is None or stamp < stalest_stamp:
                stalest, stalest_stamp = i, stamp
        return stalest, False


class SharedSessionTable:
    """Per-session seq counters and per-client sessions, shared across processes."""

    def __init__(self, handle: SharedSessionsHandle, owner: bool = False) -> None:
        self.handle = handle
        self._owner = owner
        self._fd = os.open(handle.path, os.O_RDWR)
        self._map = mmap.mmap(self._fd, self.size(handle.slots))
        buf = memoryview(self._map)
        self._buf = buf
        slots = handle.slots
        self._clock = buf[0:8].cast("q")  # a use counter: the "recently" of recently used
        table_bytes = 8 * slots * _FIELDS
        self._seqs = _Table(buf, 64, slots)
        self._clients = _Table(buf, 64 + table_bytes, slots)

    @staticmethod
    def size(slots: int) -> int:
        return 64 + 2 * 8 * slots * _FIELDS

    @classmethod
    def create(cls, directory: Path, slots: int = DEFAULT_SLOTS) -> SharedSessionTable:
        """A new, empty table in `directory` (private to this capture: owner-only)."""
        if slots & (slots - 1):
            raise ValueError("slots must be a power of two")
        path = directory / "sessions.table"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, cls.size(slots))  # zero-filled: every slot empty
        finally:
            os.close(fd)
        return cls(SharedSessionsHandle(str(path), slots), owner=True)

    @classmethod
    def attach(cls, handle: SharedSessionsHandle) -> SharedSessionTable:
        return cls(handle)

    def assign(
        self,
        session_id: str | None,
        client: str,
        at_us: int,
        gap_us: int,
        name_client_session: Callable[[str, int], str],
    ) -> tuple[str, int]:
        """(session id, seq) for a request: `session_id` when a cookie or header named it,
        else the client's session (a new one after `gap_us` of silence)."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            self._clock[0] += 1
            now = self._clock[0]
            if session_id is None:
                start = self._client_session(_key(client), at_us, gap_us)
                session_id = name_client_session(client, start)
            seq = self._next_seq(int(session_id[:16], 16) or 1, now)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        return session_id, seq

    def _client_session(self, key: int, at_us: int, gap_us: int) -> int:
        t = self._clients
        last_seen = t.second
        i, found = t.slot(key, lambda j: last_seen[j])
        if found and at_us - last_seen[i] <= gap_us:
            last_seen[i] = max(last_seen[i], at_us)
            return t.first[i]
        # A new session starts now; the key goes in last, so a half-written slot is unused.
        t.first[i] = at_us
        last_seen[i] = at_us
        t.keys[i] = key
        return at_us

    def _next_seq(self, key: int, now: int) -> int:
        t = self._seqs
        used = t.second
        i, found = t.slot(key, lambda j: used[j])
        seq = t.first[i] if found else 0
        t.first[i] = seq + 1
        used[i] = now
        t.keys[i] = key
        return seq

    def close(self) -> None:
        for view in (self._clock, *self._views(), self._buf):
            view.release()
        self._map.close()
        os.close(self._fd)
        if self._owner:
            Path(self.handle.path).unlink(missing_ok=True)

    def _views(self) -> list[memoryview]:
        return [v for t in (self._seqs, self._clients) for v in (t.keys, t.first, t.second)]
