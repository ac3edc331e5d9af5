"""Getting exchanges to disk without ever making the proxy wait.

The proxy's hook converts a flow and offers it to a bounded queue; a background thread drains
the queue into a `DatasetWriter`. When the queue is full the exchange is dropped and counted:
a recorder that slowed production down would not be allowed to run in front of it.

Files roll by size and by time (a timer, also when no traffic comes) and are finalized
atomically, so after a hard kill every visible file is whole and at most one roll interval of
traffic (plus the time one finalize takes) is lost. A write that fails (a full disk) loses the
open file's rows, which are counted as dropped with their cause; the next rows begin a new file.
Each finalized file carries the counters in its metadata (written + dropped + pending = seen),
so `inspect` can show what was dropped and why.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shadowtape.errors import is_disk_full, os_errno
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

    `seen` counts the exchanges the recorder set out to keep (past the filters and the
    sampling); each of them is, at any moment, written (in a finalized file), dropped (with
    its cause) or pending (queued, or in the file still open):
    written + dropped + pending = seen, and pending is 0 once a capture has stopped.

    Each field is written by one thread only (the proxy's loop or the writer thread), so no
    lock is needed for exact counts.
    """

    seen: int = 0
    written: int = 0
    pending: int = 0
    dropped_queue_full: int = 0
    dropped_disk_full: int = 0
    dropped_write_error: int = 0
    dropped_conversion_error: int = 0  # a flow that could not be turned into an exchange
    dropped_encode_error: int = 0  # an exchange that could not be encoded as Arrow
    skipped_filter: int = 0
    skipped_sample: int = 0
    skipped_invalid: int = 0
    skipped_non_http: int = 0
    truncated_bodies: int = 0
    streamed_bodies: int = 0
    errors: int = 0
    body_bytes: int = 0

    def dropped(self) -> int:
        return (
            self.dropped_queue_full
            + self.dropped_disk_full
            + self.dropped_write_error
            + self.dropped_conversion_error
            + self.dropped_encode_error
        )

    def lost_to_writing(self) -> int:
        """Drops a healthy capture never has: the disk or the encoder failed."""
        return self.dropped_disk_full + self.dropped_write_error + self.dropped_encode_error

    def drop_causes(self) -> dict[str, int]:
        return {
            "queue full": self.dropped_queue_full,
            "disk full": self.dropped_disk_full,
            "write error": self.dropped_write_error,
            "unconvertible": self.dropped_conversion_error,
            "unencodable": self.dropped_encode_error,
        }

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
        """Count the content of one exchange handed to the writer; returns its body bytes."""
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

    Synchronous; the capture thread and the importers both write through it. A write that
    fails (a full disk, an I/O error) loses the open file's rows; they are counted as dropped
    with their cause before the error is raised again, and the next write begins a new file,
    so a capture resumes by itself once space returns.
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
            # Every roll is decided here, never inside DatasetWriter.write_batch, so the
            # counters written into a file's footer are exact for that file.
            roll=RollPolicy(
                max_rows=_NEVER, max_bytes=_NEVER, row_group_rows=settings.row_group_rows
            ),
        )
        self._clock = clock
        self._pending: list[Exchange] = []
        self._pending_bytes = 0
        self._open_bytes = 0
        self._first_row_at: float | None = None
        self.failures: Counter[str] = Counter()
        # Records handed to `write` are counted as seen here, unless a producer in front
        # counts them as it takes them (CaptureWriter, whose queue can drop them first).
        self.counts_seen = True

    def write(self, records: Sequence[Exchange]) -> None:
        """Take records; they are converted to Arrow a row group at a time, because Arrow's
        per-call cost on a handful of rows would make conversion, not the disk, the limit."""
        if not records:
            return
        if self._first_row_at is None:
            self._first_row_at = self._clock()
        if self.counts_seen:
            self.counters.seen += len(records)
        for ex in records:
            self._pending_bytes += self.counters.count_exchange(ex)
        self._pending.extend(records)
        if len(self._pending) >= self.settings.row_group_rows or self._pending_bytes >= min(
            PENDING_BYTES, self.settings.roll_bytes
        ):
            self._flush()

    def warm_up(self) -> None:
        """Encode and write one exchange to memory, so the first real file does not pay for
        Arrow's and Parquet's first-use setup: measured at 0.2 s idle and over a second under
        load, which made the first file of a capture outlive its roll interval."""
        sample = Exchange(
            id="warm-up",
            session_id="warm-up",
            seq=0,
            started_at=0,
            method="GET",
            query=[("q", "v")],
            request_headers=[("Host", "warm-up")],
            request_body=b"",
            response_headers=[("Content-Type", "text/plain")],
            response_body=b"warm-up",
        )
        batch = exchanges_to_batch([sample])
        sink = pa.BufferOutputStream()
        with pq.ParquetWriter(
            sink, self.dataset.schema, compression=self.dataset.compression, write_statistics=True
        ) as writer:
            writer.write_table(pa.Table.from_batches([batch], schema=self.dataset.schema))

    def _encode(self, records: list[Exchange]) -> pa.RecordBatch:
        """One batch; a record Arrow cannot encode is dropped and counted, not its batch."""
        try:
            return exchanges_to_batch(records)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            good = []
            for ex in records:
                try:
                    exchanges_to_batch([ex])
                except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
                    self.counters.dropped_encode_error += 1
                    self.failures[f"unencodable exchange: {exc}"] += 1
                else:
                    good.append(ex)
            return exchanges_to_batch(good)

    def _flush(self) -> None:
        if not self._pending:
            return
        records, self._pending = self._pending, []
        self._pending_bytes = 0
        batch = self._encode(records)
        self._guarded(self.dataset.write_batch, batch)
        # Rolling on the bytes handed over (not only on flushed bytes) keeps what is held in
        # memory under the roll size.
        self._open_bytes += batch.nbytes
        if self._open_bytes >= self.settings.roll_bytes:
            self._finalize()

    def _guarded(self, op: Callable[..., Any], *args: Any) -> Any:
        """Run a dataset operation; on failure count what it lost by cause, then re-raise."""
        lost_before = self.dataset.rows_lost
        try:
            return op(*args)
        except Exception as exc:
            lost = self.dataset.rows_lost - lost_before
            if is_disk_full(exc):
                self.counters.dropped_disk_full += lost
            else:
                self.counters.dropped_write_error += lost
            self.failures[describe_write_error(exc)] += 1
            self._open_bytes = 0
            self._first_row_at = None
            raise
        finally:
            self.counters.written = self.dataset.rows_written

    def due(self) -> bool:
        """Whether the open file has held rows for a whole roll interval."""
        left = self.seconds_until_due()
        return left is not None and left <= 0

    def seconds_until_due(self) -> float | None:
        roll = self.settings.roll_seconds
        first = self._first_row_at
        if roll is None or first is None:
            return None
        return roll - (self._clock() - first)

    def finalize_file(self) -> Path | None:
        self._flush()
        return self._finalize()

    def _finalize(self) -> Path | None:
        c = self.counters
        # The footer's figures are those of the moment this file becomes visible.
        written = self.dataset.rows_written + self.dataset.unfinalized_rows
        c.pending = max(0, c.seen - written - c.dropped())
        self.dataset.set_file_metadata({**c.as_metadata(), _WRITTEN_KEY: str(written)})
        self._open_bytes = 0
        self._first_row_at = None
        return self._guarded(self.dataset.finalize_file)

    def close(self) -> list[Path]:
        self.finalize_file()
        c = self.counters
        c.pending = max(0, c.seen - c.written - c.dropped())
        return list(self.dataset.files)

    def abort(self) -> None:
        """Drop what is not finalized (a failed import removes its files anyway)."""
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


_NEVER = 2**62
_WRITTEN_KEY = f"{META_COUNTER_PREFIX}written"


def describe_write_error(exc: BaseException) -> str:
    """One short phrase per kind of failure, so repeats of one cause count as one."""
    code = os_errno(exc)
    if code is not None:
        return f"{os.strerror(code)} (errno {code})"
    return f"{type(exc).__name__}: {exc}"


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

    The roll interval is a timer: the thread sleeps until the open file is due (or the next
    poll, whichever comes first) and checks it between chunks of a long drain too, so a file
    is finalized on time whether or not more flows arrive. That bounds what a kill -9 loses.
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
        sink.counts_seen = False  # counted in `offer`, before the queue can drop one
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
        self._poll = POLL_SECONDS if roll is None else max(0.005, min(POLL_SECONDS, roll / 4))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shadowtape-writer", daemon=True)
        self._closed = False
        self._failing = False

    @property
    def failures(self) -> Counter[str]:
        return self.sink.failures

    def start(self) -> CaptureWriter:
        self.sink.warm_up()
        self._thread.start()
        return self

    def offer(self, ex: Exchange) -> bool:
        """Never blocks: a full buffer drops the exchange and counts it."""
        self.counters.seen += 1
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
            if self.sink.due():
                self._finalize()

    def _wait(self) -> float:
        left = self.sink.seconds_until_due()
        return self._poll if left is None else max(0.0, min(self._poll, left))

    def _run(self) -> None:
        while not self._stop.wait(self._wait()):
            self._drain_all()
            if self.sink.due():
                self._finalize()
        self._drain_all()
        self._finalize()

    def _write(self, batch: list[Exchange]) -> None:
        try:
            self.sink.write(batch)
        except Exception as exc:  # a full disk must not take the proxy down with it
            self._failed(exc)

    def _finalize(self) -> None:
        try:
            final = self.sink.finalize_file()
        except Exception as exc:
            self._failed(exc)
        else:
            if final is not None:
                self._recovered()

    def _failed(self, exc: Exception) -> None:
        # The sink has counted the loss; the log says so once per episode, not per batch.
        if not self._failing:
            self._failing = True
            logger.error(
                "shadowtape: writing to %s failed (%s); exchanges are dropped and counted "
                "until writing works again",
                self.sink.settings.out_dir,
                describe_write_error(exc),
            )

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            logger.warning("shadowtape: writing to %s works again", self.sink.settings.out_dir)

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
            c = self.counters
            c.pending = max(0, c.seen - c.written - c.dropped())
        return list(self.sink.files)

    def snapshot(self) -> dict[str, int]:
        c = self.counters
        return {
            "seen": c.seen,
            "written": c.written,
            "queued": len(self.buffer),
            "dropped": c.dropped(),
            "bytes": c.body_bytes,
            "files": len(self.sink.files),
        }
