"""Result rows -> the results dataset (schema.RESULT_SCHEMA), written off the event loop.

Files are finalized every roll interval, each with the run's figures so far in its footer
(`"status": "running"`); the last one has the final figures. A replay killed hard leaves whole
files that say they are from an unfinished run, and loses at most one roll interval of rows.

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

import pyarrow as pa
import pyarrow.compute as pc

from shadowtape.errors import InputError
from shadowtape.replay.config import WRITE_METHODS
from shadowtape.schema import (
    KIND_RESULTS,
    META_REPLAY,
    RESULT_SCHEMA,
    DatasetWriter,
    RollPolicy,
    dataset_files,
    foreign_content,
)

# Where a baseline's answer goes: the candidate's columns, renamed (see schema._BASELINE_FIELDS).
BASELINE_NAMES = {
    "outcome": "baseline_outcome",
    "target_url": "baseline_target_url",
    "span_id": "baseline_span_id",
    "sent_at": "baseline_sent_at",
    "first_byte_at": "baseline_first_byte_at",
    "done_at": "baseline_done_at",
    "attempts": "baseline_attempts",
    "retries": "baseline_retries",
    "staging_status": "baseline_status",
    "staging_reason": "baseline_reason",
    "staging_http_version": "baseline_http_version",
    "staging_headers": "baseline_headers",
    "staging_body": "baseline_body",
    "staging_body_truncated": "baseline_body_truncated",
    "staging_error": "baseline_error",
    "substitutions": "baseline_substitutions",
}
# The candidate's columns in a row that holds only a baseline's answer (a replay_pass 2 row of
# a baseline run): not sent, and saying why, so a reader that knows nothing of baselines
# skips the row instead of reading an empty answer.
BASELINE_ONLY = "baseline_only"


def as_baseline(fields: dict[str, Any]) -> dict[str, Any]:
    """A side's result fields under the baseline_* column names."""
    return {BASELINE_NAMES[k]: v for k, v in fields.items() if k in BASELINE_NAMES}


def result_row(recorded: dict[str, Any], **replay: Any) -> dict[str, Any]:
    """The recorded row with the replay columns added. The row is taken over, not copied
    (a copy per row was the biggest cost of streaming skipped rows): callers pass rows that
    hold exchange columns only and do not use them afterwards."""
    recorded.update(replay)
    return recorded


def in_sample(batch: pa.RecordBatch, sampled: frozenset[str]) -> pa.Array:
    return pc.is_in(batch.column("session_id"), value_set=pa.array(sorted(sampled), pa.string()))


def skip_reasons(
    batch: pa.RecordBatch,
    reason: str | None,
    *,
    sampled: frozenset[str] | None,
    allow_writes: bool,
    scenario: frozenset[str] | None = None,
) -> pa.Array:
    """Per row, the reason the row-by-row path would give: outside the scenario first, then
    outside the sample, then a write or a truncated body (checked before --limit), then
    `reason`."""
    n = batch.num_rows
    reasons = pa.array([reason] * n, pa.string())
    if reason == "limit":
        truncated = pc.fill_null(batch.column("request_body_truncated"), False)
        reasons = pc.if_else(truncated, "request_body_truncated", reasons)
        if not allow_writes:
            methods = pc.utf8_upper(batch.column("method"))
            writes = pc.is_in(methods, value_set=pa.array(sorted(WRITE_METHODS)))
            reasons = pc.if_else(writes, "write_not_allowed", reasons)
    if sampled is not None:
        reasons = pc.if_else(in_sample(batch, sampled), reasons, "not_sampled")
    if scenario is not None:
        reasons = pc.if_else(in_sample(batch, scenario), reasons, "not_in_scenario")
    return reasons


def count_values(values: pa.Array) -> dict[str, int]:
    return {
        str(item["values"]): int(item["counts"]) for item in pc.value_counts(values).to_pylist()
    }


def skipped_batch(
    batch: pa.RecordBatch, reasons: pa.Array, run_id: str, baseline: bool = False
) -> pa.RecordBatch:
    """Exchange columns as they are, replay columns for rows that were not sent (to any side:
    with a baseline, `baseline_outcome` says so too)."""
    n = batch.num_rows
    fixed = {
        "run_id": pa.array([run_id] * n, pa.string()),
        "replay_pass": pa.array([1] * n, pa.int32()),
        "outcome": pa.array(["skipped"] * n, pa.string()),
        "skip_reason": reasons,
        "attempts": pa.array([0] * n, pa.int32()),
        "retries": pa.array([0] * n, pa.int32()),
        "substitutions": pa.array([[]] * n, RESULT_SCHEMA.field("substitutions").type),
    }
    if baseline:
        fixed["baseline_outcome"] = pa.array(["skipped"] * n, pa.string())
    columns = []
    for f in RESULT_SCHEMA:
        if f.name in batch.schema.names:
            columns.append(batch.column(f.name))
        elif f.name in fixed:
            columns.append(fixed[f.name])
        else:
            columns.append(pa.nulls(n, f.type))
    return pa.RecordBatch.from_arrays(columns, schema=RESULT_SCHEMA)


def prepare_out_dir(out: str | os.PathLike[str], prefix: str, overwrite: bool) -> Path:
    """Refuse to mix two runs' results in one directory, unless told to replace them, and
    never write results into a directory that holds anything but results: another dataset
    there (a raw capture) would be polluted and read back with rows counted twice. With
    --overwrite only the earlier run's results files go, nothing else."""
    directory = Path(out)
    if directory.exists() and not directory.is_dir():
        raise InputError(f"--out {directory}: exists and is not a directory")
    existing: list[Path] = []
    if directory.exists():
        # Hidden entries (a _diff of these results) are not results and are left alone.
        reason = foreign_content(directory, [KIND_RESULTS], ignore_hidden=True)
        if reason is not None:
            raise InputError(
                f"--out {directory}: {reason}; results go in a directory of their own "
                "(a new or empty one)"
            )
        existing = sorted(directory.glob(f"{prefix}-*.parquet"))
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

    async def add_batch(self, batch: pa.RecordBatch) -> None:
        if self._rows:
            self._submit()
        self.rows += batch.num_rows
        self._pending.append(self._executor.submit(self.writer.write_batch, batch))
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

    def roll(self, summary: Mapping[str, Any]) -> None:
        """Finalize the open file now, with `summary` (the run so far) in its footer: what is
        finalized survives a kill -9."""
        if self._rows:
            self._submit()
        self.set_summary(summary)
        self._pending.append(self._executor.submit(self.writer.finalize_file))

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
