"""Getting exchanges to disk without ever making the proxy wait.

The proxy's hook converts a flow and offers it to a bounded queue; a background thread drains
the queue into a `DatasetWriter`. When the queue is full the exchange is dropped and counted:
a recorder that slowed production down would not be allowed to run in front of it.

Files roll by size and by time and are finalized atomically, so after a hard kill every visible
file is whole and at most one roll interval of traffic is lost. Each finalized file carries the
running counters in its metadata, so `inspect` can show what was dropped and why.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shadowtape.governance.access import FileAccess
from shadowtape.schema import (
    KIND_EXCHANGES,
    DatasetWriter,
    Exchange,
    RollPolicy,
    exchanges_to_batch,
)

logger = logging.getLogger(__name__)

META_COUNTER_PREFIX = "shadowtape.capture."

DEFAULT_QUEUE_SIZE = 4096
DEFAULT_ROLL_BYTES = 64 * 1024 * 1024
DEFAULT_ROLL_SECONDS = 60.0
# Rows per Parquet row group; small enough that a reader streaming a live capture's files
# holds little, large enough that zstd has something to work with.
ROW_GROUP_ROWS = 5000
# The thread takes up to this many exchanges off the queue at a time.
DRAIN_MAX = 2000
# Exchanges held before conversion to Arrow: a row group's worth, or this many body bytes.
PENDING_BYTES = 16 * 1024 * 1024


@dataclass(slots=True)
class CaptureCounters:
    """What happened to every flow the recorder saw; nothing is lost without a count here.

    Each field is written by one thread only (the proxy's loop or the writer thread), so no
    lock is needed for exact counts.
    """

    recorded: int = 0
    dropped_queue_full: int = 0
    dropped_write_error: int = 0
    dropped_conversion_error: int = 0
    skipped_filter: int = 0
    skipped_sample: int = 0
    skipped_invalid: int = 0
    skipped_non_http: int = 0
    truncated_bodies: int = 0
    streamed_bodies: int = 0
    errors: int = 0
    body_bytes: int = 0

    def dropped(self) -> int:
        return self.dropped_queue_full + self.dropped_write_error + self.dropped_conversion_error

    def add(self, other: CaptureCounters) -> None:
        for name in CaptureCounters.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_metadata(self) -> dict[str, str]:
        return {f"{META_COUNTER_PREFIX}{k}": str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> CaptureCounters | None:
        values = {}
        for name in cls.__dataclass_fields__:
            raw = meta.get(f"{META_COUNTER_PREFIX}{name}")
            if raw is not None and raw.isdigit():
                values[name] = int(raw)
        return cls(**values) if values else None

    def count_exchange(self, ex: Exchange) -> int:
        """Count one recorded exchange; returns its body bytes."""
        self.recorded += 1
        self.truncated_bodies += int(ex.request_body_truncated) + int(ex.response_body_truncated)
        self.errors += int(ex.error is not None)
        size = len(ex.request_body or b"") + len(ex.response_body or b"")
        self.body_bytes += size
        return size


@dataclass(frozen=True, slots=True)
class WriterSettings:
    out_dir: Path
    capture_id: str
    metadata: Mapping[str, str]
    roll_bytes: int = DEFAULT_ROLL_BYTES
    roll_seconds: float | None = DEFAULT_ROLL_SECONDS
    row_group_rows: int = ROW_GROUP_ROWS
    # Raw exchanges hold personal data: owner-only unless a group is named (--group).
    access: FileAccess = field(default_factory=FileAccess)
    worker: int | None = None  # which process of a `capture --workers N` writes these files

    @property
    def prefix(self) -> str:
        # The capture id in every name lets several proxies share one output directory; the
        # worker number lets the processes of one capture share its id.
        if self.worker is None:
            return f"capture-{self.capture_id}"
        return f"capture-{self.capture_id}-w{self.worker}"


class ExchangeSink:
    """Exchanges into a rolling dataset with the counters in every finalized file.

    Synchronous; the capture thread and the importers both write through it.
    """

    def __init__(
        self,
        settings: WriterSettings,
        counters: CaptureCounters,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.counters = counters
        self.dataset = DatasetWriter(
            settings.out_dir,
            KIND_EXCHANGES,
            metadata=settings.metadata,
            prefix=settings.prefix,
            access=settings.access,
            roll=RollPolicy(
                max_bytes=settings.roll_bytes,
                # The roll interval is timed here, from the first row of each file:
                # DatasetWriter.due() counts from when the file was opened on disk, which
                # happens only at the first row-group flush.
                max_seconds=None,
                row_group_rows=settings.row_group_rows,
            ),
        )
        self._clock = clock
        self._pending: list[Exchange] = []
        self._pending_bytes = 0
        self._open_bytes = 0
        self._first_row_at: float | None = None

    def write(self, records: Sequence[Exchange]) -> None:
        """Take records; they are converted to Arrow a row group at a time, because Arrow's
        per-call cost on a handful of rows would make conversion, not the disk, the limit."""
        if not records:
            return
        if self._first_row_at is None:
            self._first_row_at = self._clock()
        for ex in records:
            self._pending_bytes += self.counters.count_exchange(ex)
        self._pending.extend(records)
        if len(self._pending) >= self.settings.row_group_rows or self._pending_bytes >= min(
            PENDING_BYTES, self.settings.roll_bytes
        ):
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        # The dataset writer may finalize a file inside write_batch: the counters must be
        # current before, so every file's figures include its own rows.
        self.dataset.set_file_metadata(self.counters.as_metadata())
        batch = exchanges_to_batch(self._pending)
        self._pending = []
        self._pending_bytes = 0
        self.dataset.write_batch(batch)
        # Rolling on the bytes handed over (not only on flushed bytes) keeps what is held in
        # memory under the roll size.
        self._open_bytes += batch.nbytes
        if self._open_bytes >= self.settings.roll_bytes:
            self._finalize()

    def due(self) -> bool:
        """Whether the open file has held rows for a whole roll interval."""
        roll = self.settings.roll_seconds
        first = self._first_row_at
        return roll is not None and first is not None and self._clock() - first >= roll

    def finalize_file(self) -> Path | None:
        self._flush()
        return self._finalize()

    def _finalize(self) -> Path | None:
        self.dataset.set_file_metadata(self.counters.as_metadata())
        self._open_bytes = 0
        self._first_row_at = None
        return self.dataset.finalize_file()

    def close(self) -> list[Path]:
        self.finalize_file()
        return list(self.dataset.files)

    def abort(self) -> None:
        self._pending = []
        self._pending_bytes = 0
        self._open_bytes = 0
        self._first_row_at = None
        self.dataset.abort()

    @property
    def files(self) -> list[Path]:
        return self.dataset.files

    @property
    def bytes_written(self) -> int:
        return self.dataset.bytes_written


# Besides the count bound (--queue-size), bodies waiting for the writer may hold at most this
# much memory: 4096 exchanges of 1 MiB bodies would otherwise be 8 GiB.
BUFFER_BYTES = 256 * 1024 * 1024
# How often the writer thread wakes to take what the proxy queued. Waking per exchange (a
# Condition notify per put, as queue.Queue does) costs the proxy's thread a lock and a
# thread switch on every flow; polling a deque costs it one append.
POLL_SECONDS = 0.05


class CaptureWriter:
    """A background thread that drains a bounded buffer into an `ExchangeSink`.

    The proxy side only appends to a deque (atomic under the GIL, never blocks); the bound is
    checked before the append, so a burst can overshoot it by at most the number of threads
    appending at once (one, in mitmproxy).
    """

    def __init__(
        self,
        sink: ExchangeSink,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        drain_max: int = DRAIN_MAX,
        buffer_bytes: int = BUFFER_BYTES,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue size must be at least 1")
        self.sink = sink
        self.counters = sink.counters
        self.queue_size = queue_size
        self.buffer_bytes = buffer_bytes
        self.buffer: deque[Exchange] = deque()
        # Body bytes put in (proxy thread) and taken out (writer thread): each counter has one
        # writer, so no lock; their difference is what the buffer holds.
        self._bytes_in = 0
        self._bytes_out = 0
        self.drain_max = drain_max
        roll = sink.settings.roll_seconds
        # Wake often enough that a file is finalized close to its roll interval even when
        # traffic stops, which bounds what a kill -9 can lose.
        self._poll = POLL_SECONDS if roll is None else max(0.005, min(POLL_SECONDS, roll / 4))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shadowtape-writer", daemon=True)
        self._closed = False
        self.failure: str | None = None

    def start(self) -> CaptureWriter:
        self._thread.start()
        return self

    def offer(self, ex: Exchange) -> bool:
        """Never blocks: a full buffer drops the exchange and counts it."""
        size = len(ex.request_body or b"") + len(ex.response_body or b"")
        if (
            self._closed
            or len(self.buffer) >= self.queue_size
            or (self.buffer and self._bytes_in - self._bytes_out + size > self.buffer_bytes)
        ):
            self.counters.dropped_queue_full += 1
            return False
        self._bytes_in += size
        self.buffer.append(ex)
        return True

    def _take(self) -> list[Exchange]:
        taken: list[Exchange] = []
        buffer = self.buffer
        while buffer and len(taken) < self.drain_max:
            ex = buffer.popleft()
            self._bytes_out += len(ex.request_body or b"") + len(ex.response_body or b"")
            taken.append(ex)
        return taken

    def _drain_all(self) -> None:
        while self.buffer:
            self._write(self._take())

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            self._drain_all()
            if self.sink.due():
                self._finalize()
        self._drain_all()
        self._finalize()

    def _write(self, batch: list[Exchange]) -> None:
        try:
            self.sink.write(batch)
        except Exception as exc:  # a full disk must not take the proxy down with it
            logger.error("shadowtape: writing %d exchanges failed: %s", len(batch), exc)
            self.failure = str(exc)
            self.counters.dropped_write_error += len(batch)
            self.sink.abort()

    def _finalize(self) -> None:
        try:
            self.sink.finalize_file()
        except Exception as exc:
            logger.error("shadowtape: finalizing a capture file failed: %s", exc)
            self.failure = str(exc)
            self.sink.abort()

    def close(self, timeout: float | None = None) -> list[Path]:
        """Flush what is buffered, finalize the open file, stop the thread."""
        if not self._closed:
            self._closed = True
            if self._thread.is_alive():
                self._stop.set()
                self._thread.join(timeout)
            else:
                # Never started (or died): drain here so buffered exchanges still land.
                self._drain_all()
                self._finalize()
        return list(self.sink.files)

    def snapshot(self) -> dict[str, int]:
        c = self.counters
        return {
            "recorded": c.recorded,
            "queued": len(self.buffer),
            "dropped": c.dropped(),
            "bytes": c.body_bytes,
            "files": len(self.sink.files),
        }
