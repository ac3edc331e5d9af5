"""The sanitize job's results computed on Ray Data: the same per-unit function, many machines.

`sanitize_dataset(..., results_fn=ray_results(address))` swaps only *where* units (one input
row group each) are scrubbed. Each Ray actor builds the scrubber (Presidio, policy, key) once
and runs `_sanitize_unit`, the local engine's own unit function, so a row is scrubbed by
exactly the same code in both engines. Results come back to the driver in unit order
(`preserve_order`) and are written there by the local engine's writer; the output is therefore
byte-identical to the local engine's, files and row-group layout included, not only its rows,
and no row order needs normalising.

The trade-off: every scrubbed row group passes through the driver, which writes the output.
Scrubbing (Presidio) costs far more CPU per row than decoding and writing Parquet, so one
driver serves many workers, but not without bound: past some worker count (not measured here,
where only 2 cores were available) the driver's writing is the limit. The input must be
readable at the same path on every node (a shared file system).
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
from shadowtape.sanitize.pipeline import ResultsFn, SanitizeConfig, _sanitize_unit, scrubber_for

Result = tuple[pa.RecordBatch, dict[str, int]]

# One unit's result travels as one row: an empty row group still yields its row (so results
# stay aligned with units), and Arrow IPC keeps the batch's exact types and schema metadata.
# An expected failure (an unreadable row group) travels as data too, pickled: raised in the
# worker, Ray would wrap it in its own exception, print the traceback and retry the unit.
_RESULT_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("batch", pa.large_binary()),
        ("counts", pa.string()),
        ("error", pa.binary()),
    ]
)


class UnitScrubber:
    """A Ray Data actor: built once per worker, so Presidio loads once, not once per unit."""

    def __init__(self, config: SanitizeConfig) -> None:
        self.config = config
        scrubber_for(config)

    def __call__(self, units: pa.Table) -> pa.Table:
        rows = []
        for unit in units.to_pylist():
            row = {"index": unit["index"], "batch": None, "counts": None, "error": None}
            try:
                batch, unit_counts = _sanitize_unit(unit["source"], unit["row_group"], self.config)
            except ShadowtapeError as exc:
                row["error"] = pickle.dumps(exc)
            else:
                row.update(batch=_to_ipc(batch), counts=json.dumps(unit_counts, sort_keys=True))
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


def ray_results(address: str | None = None) -> ResultsFn:
    """A results function for `sanitize_dataset`: units scrubbed by `workers` Ray actors."""
    import_ray()  # a missing extra is reported before anything is read or written

    def results(
        units: Sequence[Any], config: SanitizeConfig, workers: int
    ) -> Generator[Result, None, None]:
        with ray_session(address) as ray:
            yield from _stream(ray, units, config, workers)

    return results


def _stream(
    ray: Any, units: Sequence[Any], config: SanitizeConfig, workers: int
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
            fn_constructor_args=(config,),
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
                    yield _from_ipc(row["batch"]), json.loads(row["counts"])
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
