"""Rows to disk without making the double wait: the served-requests log and fallback recordings.

The event loop hands rows to a bounded queue and goes on answering; a thread turns them into
Arrow and Parquet. A full queue drops the row and counts it (a double that slowed down because
of its own log would not behave like the dependency). Files roll every few seconds and are
finalized atomically; `close()` drains everything still queued, so a SIGINT or SIGTERM loses
nothing that was accepted.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shadowtape.schema import (
    KIND_EXCHANGES,
    DatasetWriter,
    Exchange,
    RollPolicy,
    exchanges_to_batch,
    rows_to_batch,
)

logger = logging.getLogger(__name__)

QUEUE_ROWS = 50_000
BATCH_ROWS = 2000
_STOP = object()


class BackgroundRows:
    """A DatasetWriter fed from any thread, written on its own."""

    def __init__(
        self,
        directory: str | Path,
        kind: str,
        metadata: Mapping[str, str],
        roll_seconds: float,
        prefix: str,
        queue_rows: int = QUEUE_ROWS,
    ) -> None:
        self.writer = DatasetWriter(
            directory,
            kind,
            metadata=metadata,
            prefix=prefix,
            roll=RollPolicy(max_seconds=roll_seconds, row_group_rows=5000),
        )
        self.kind = kind
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_rows)
        self.dropped = 0
        self.write_errors = 0
        self.error: str | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"serve-{kind}", daemon=True)
        self._thread.start()

    @property
    def written(self) -> int:
        return self.writer.rows_written

    def put(self, row: dict[str, Any] | Exchange) -> bool:
        if self._closed:
            self.dropped += 1  # too late: counted, never queued where nothing reads
            return False
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def _batch(self, rows: list[Any]) -> None:
        if not rows:
            return
        try:
            if self.kind == KIND_EXCHANGES:
                self.writer.write_batch(exchanges_to_batch(rows))
            else:
                self.writer.write_batch(rows_to_batch(rows, self.writer.schema))
        except Exception as exc:  # disk full, a bad value: counted, and the double keeps serving
            self.write_errors += len(rows)
            self.error = f"{type(exc).__name__}: {exc}"
            logger.error("writing %s rows failed: %s", self.kind, self.error)

    def _run(self) -> None:
        rows: list[Any] = []
        while True:
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                self._batch(rows)
                rows = []
                if self.writer.due():
                    self.writer.finalize_file()
                continue
            if item is _STOP:
                break
            rows.append(item)
            if len(rows) >= BATCH_ROWS:
                self._batch(rows)
                rows = []
                # Under steady load the queue is never idle: the roll interval is checked here
                # too, so rows become readable every few seconds however busy the double is.
                if self.writer.due():
                    self.writer.finalize_file()
        # Whatever was queued before the stop marker is written before the files close.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                rows.append(item)
        self._batch(rows)

    def close(self) -> list[Path]:
        # The stop marker must get in even when the queue is full: wait for room.
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()
        return self.writer.close()
