"""The sanitize job's results computed on Ray Data: the same per-unit function, many machines.

`sanitize_dataset(..., results_fn=ray_results(address))` swaps only *where* units (one input
row group each) are scrubbed. Each Ray actor builds the scrubber (Presidio, policy, key) once
and runs the local engine's own unit task (`ScrubTask` for the first pass, `PropagateTask`
with the merged literals for the second), so a row is scrubbed by exactly the same code in
both engines. Both passes run in one Ray session; what each unit learned comes back with its
result and is merged by the driver, as in the local engine. Results come back to the driver
in unit order
(`preserve_order`) and are written there by the local engine's writer; the output is therefore
byte-identical to the local engine's, files and row-group layout included, not only its rows,
and no row order needs normalising.

The trade-off: every scrubbed row group passes through the driver, which writes the output.
Scrubbing (Presidio) costs far more CPU per row than decoding and writing Parquet, so one
driver serves many workers, but not without bound: past some worker count (not measured here,
where only 2 cores were available) the driver's writing is the limit. The input must be
readable at the same path on every node (a shared file system), and so must the directory
the output goes to: the first pass's intermediate dataset is written beside it, and the
second pass's actors read it from there.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from shadowtape.errors import DatasetError, ShadowtapeError
from shadowtape.ray_session import import_ray, ray_session, unwrap_remote_error
from shadowtape.sanitize.pipeline import (
    PropagateTask,
    ResultsFn,
    ScrubTask,
    UnitResult,
    applier_for,
    scrubber_for,
)

Result = UnitResult

# One unit's result travels as one row: an empty row group still yields its row (so results
# stay aligned with units), and Arrow IPC keeps the batch's exact types and schema metadata.
# An expected failure (an unreadable row group) travels as data too, pickled: raised in the
# worker, Ray would wrap it in its own exception, print the traceback and retry the unit.
_RESULT_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("batch", pa.large_binary()),
        ("counts", pa.string()),
        ("literals", pa.large_binary()),
        ("error", pa.binary()),
    ]
)


class UnitScrubber:
    """A Ray Data actor: built once per worker, so Presidio loads once, not once per unit."""

    def __init__(self, task: ScrubTask | PropagateTask) -> None:
        self.task = task
        if isinstance(task, PropagateTask):
            applier_for(task.config, task.literals)
        else:
            scrubber_for(task.config)

    def __call__(self, units: pa.Table) -> pa.Table:
        rows = []
        for unit in units.to_pylist():
            row = {"index": unit["index"], "batch": None, "counts": None, "literals": None}
            row["error"] = None
            try:
                batch, unit_counts, literals = self.task(unit["source"], unit["row_group"])
            except ShadowtapeError as exc:
                row["error"] = pickle.dumps(exc)
            else:
                row.update(
                    batch=_to_ipc(batch),
                    counts=json.dumps(unit_counts, sort_keys=True),
                    literals=pickle.dumps(literals) if literals is not None else None,
                )
            rows.append(row)
        return pa.Table.from_pylist(rows, schema=_RESULT_SCHEMA)


def _to_ipc(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _from_ipc(blob: bytes) -> pa.RecordBatch:
    table = pa.ipc.open_stream(blob).read_all().combine_chunks()
    batches = table.to_batches()
    return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)


class RayResults:
    """A results function for `sanitize_dataset`: units worked on by `workers` Ray actors.
    Entered once for the job, so both passes share one Ray session."""

    def __init__(self, address: str | None) -> None:
        import_ray()  # a missing extra is reported before anything is read or written
        self.address = address
        self._session: Any = None

    def __enter__(self) -> RayResults:
        self._session = ray_session(self.address)
        self._session.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.__exit__(*exc)

    def __call__(
        self, units: Sequence[Any], task: ScrubTask | PropagateTask, workers: int
    ) -> Generator[Result, None, None]:
        # Inside an entered session this reuses it; called on its own, it opens one.
        with ray_session(self.address) as ray:
            yield from _stream(ray, units, task, workers)


def ray_results(address: str | None = None) -> ResultsFn:
    """A results function for `sanitize_dataset` that runs on Ray (see RayResults)."""
    return RayResults(address)


def _stream(
    ray: Any, units: Sequence[Any], task: ScrubTask | PropagateTask, workers: int
) -> Generator[Result, None, None]:
    # Absolute paths: a worker's working directory is not the driver's.
    items = [
        {"index": i, "source": str(Path(u.source).resolve()), "row_group": u.row_group}
        for i, u in enumerate(units)
    ]
    if not items:
        return
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
    ctx.execution_options.preserve_order = True
    # The CLI draws its own progress line from the rows it writes; Ray Data's bars and its
    # INFO lines about plans would interleave with it.
    ctx.enable_progress_bars = False
    loggers = {logging.getLogger("ray.data"): logging.WARNING}
    loggers[logging.getLogger("ray.data._internal.progress")] = logging.ERROR
    levels = {logger: logger.level for logger in loggers}
    for logger, level in loggers.items():
        logger.setLevel(level)
    try:
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            UnitScrubber,
            fn_constructor_args=(task,),
            batch_size=1,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=max(1, min(workers, len(items)))),
        )
        expected = 0
        try:
            for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                for row in block.to_pylist():
                    if row["index"] != expected:
                        # preserve_order is what makes the output identical to the local engine
                        raise DatasetError(
                            f"Ray returned unit {row['index']} where {expected} was due; "
                            "the output would not match the local engine, so none is written"
                        )
                    expected += 1
                    if row["error"] is not None:
                        raise pickle.loads(row["error"])
                    literals = pickle.loads(row["literals"]) if row["literals"] else None
                    yield _from_ipc(row["batch"]), json.loads(row["counts"]), literals
        except Exception as exc:
            original = unwrap_remote_error(exc)
            if original is exc:
                raise
            raise original from None
        if expected != len(items):
            raise DatasetError(
                f"Ray returned {expected} of {len(items)} row groups; no output is written"
            )
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
        for logger, level in levels.items():
            logger.setLevel(level)
