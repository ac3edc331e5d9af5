"""Result rows -> the results dataset (schema.RESULT_SCHEMA), written off the event loop.

A results row is the recorded exchange, copied column for column, plus what staging did. The
staging body is stored decoded (httpx undoes gzip, br, deflate), the recorded body as it was
recorded; the run's configuration and counts go in the file metadata under
`shadowtape.replay`.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from shadowtape.errors import InputError
from shadowtape.schema import (
    KIND_RESULTS,
    DatasetWriter,
    RollPolicy,
    dataset_files,
)

META_REPLAY = "shadowtape.replay"


def result_row(recorded: dict[str, Any], **replay: Any) -> dict[str, Any]:
    """The recorded row with the replay columns added. The row is taken over, not copied
    (a copy per row was the biggest cost of streaming skipped rows): callers pass rows that
    hold exchange columns only and do not use them afterwards."""
    recorded.update(replay)
    return recorded


def prepare_out_dir(out: str | os.PathLike[str], prefix: str, overwrite: bool) -> Path:
    """Refuse to mix two runs' results in one directory, unless told to replace them."""
    directory = Path(out)
    if directory.exists() and not directory.is_dir():
        raise InputError(f"--out {directory}: exists and is not a directory")
    existing = sorted(directory.glob(f"{prefix}-*.parquet")) if directory.exists() else []
    if existing and not overwrite:
        raise InputError(
            f"--out {directory}: already holds {len(existing)} {prefix}-*.parquet files from an "
            "earlier run; pick an empty directory or pass --overwrite"
        )
    for f in existing:
        f.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def same_dataset(source: str, out: str) -> bool:
    src = Path(source).resolve()
    dst = Path(out).resolve()
    return src == dst or (src.is_dir() and dst.is_relative_to(src) and bool(dataset_files(src)))


class ResultSink:
    """Buffers rows and writes them as batches on one background thread.

    At most `max_batches` batches wait for the writer: `add` then waits, so a slow disk slows
    the replay rather than growing memory.
    """

    def __init__(
        self,
        directory: Path,
        prefix: str,
        metadata: Mapping[str, str],
        batch_rows: int = 2000,
        max_batches: int = 2,
        roll: RollPolicy | None = None,
    ) -> None:
        self.writer = DatasetWriter(
            directory, KIND_RESULTS, metadata=metadata, prefix=prefix, roll=roll
        )
        self.batch_rows = batch_rows
        self.max_batches = max_batches
        self._rows: list[dict[str, Any]] = []
        self._pending: deque[Future[None]] = deque()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="shadowtape-results")
        self.rows = 0

    def add_nowait(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        self.rows += 1
        if len(self._rows) >= self.batch_rows:
            self._submit()

    async def add(self, row: dict[str, Any]) -> None:
        self.add_nowait(row)
        while len(self._pending) > self.max_batches:
            await asyncio.wrap_future(self._pending.popleft())

    def _submit(self) -> None:
        rows, self._rows = self._rows, []
        self._pending.append(self._executor.submit(self.writer.write_rows, rows))

    def set_summary(self, summary: Mapping[str, Any]) -> None:
        payload = json.dumps(summary, sort_keys=True, default=str)
        self._pending.append(
            self._executor.submit(self.writer.set_file_metadata, {META_REPLAY: payload})
        )

    async def close(self) -> list[Path]:
        if self._rows:
            self._submit()
        while self._pending:
            await asyncio.wrap_future(self._pending.popleft())
        files = await asyncio.wrap_future(self._executor.submit(self.writer.close))
        self._executor.shutdown(wait=True)
        return files

    def abort(self) -> None:
        for f in self._pending:
            f.cancel()
        self._executor.shutdown(wait=True)
        self.writer.abort()
