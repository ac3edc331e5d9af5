"""Results columns as the diff's Python loop needs them, converted a whole batch at a time.

The diff touches every row of a results dataset, so what it costs to get a row's values out
of Arrow counts as much as the comparison itself. Three things dominate and are avoided here:
Arrow's reader thread pool (which, for a one-core job, costs several times the CPU of
decoding the same pages on the calling thread), timestamps as datetime objects, and header
lists converted entry by entry into dicts (only a handful of names are ever compared, so they
are picked out column-wise first).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shadowtape.diff.compare import header_map
from shadowtape.errors import DatasetError


def read_batches(files: Iterable[Path], columns: Sequence[str] | None) -> Iterator[pa.RecordBatch]:
    """`schema.iter_batches` over files already checked with `schema.open_file` (the check
    rebuilds the Arrow schema dozens of times, so it is done once per file, not per pass),
    decoding on the calling thread: the diff is one-core work."""
    for f in files:
        try:
            pf = pq.ParquetFile(f)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DatasetError(f"{f}: not a readable Parquet file ({exc})") from None
        try:
            for i in range(pf.metadata.num_row_groups):
                try:
                    table = pf.read_row_group(
                        i, columns=list(columns) if columns else None, use_threads=False
                    )
                except (pa.ArrowInvalid, OSError) as exc:
                    raise DatasetError(f"{f}: row group {i} unreadable ({exc})") from None
                yield from table.to_batches()
        finally:
            pf.close()


def integers(col: pa.Array) -> list[int | None]:
    """Integers, timestamps as their integer µs (a datetime per value would cost 50x more)."""
    if not pa.types.is_integer(col.type):
        col = col.cast(pa.int64())
    return col.to_pylist()


def _entries(col: pa.Array) -> tuple[list[int], pa.Array, pa.Array] | None:
    """(row of each entry, names, values) of a list<struct<name, value>> column, or None
    where a null name or value (or a null entry) needs the row-by-row treatment."""
    flat = col.flatten()
    if flat.null_count:
        return None
    # By field name: a version-2 entry also has name_raw/value_raw (exact bytes of text that
    # is not UTF-8). The diff compares display text, which is the same on both sides.
    children = flat.flatten()
    names = children[flat.type.get_field_index("name")]
    values = children[flat.type.get_field_index("value")]
    if names.null_count or values.null_count:
        return None
    parents = pc.list_parent_indices(col)
    if len(parents) != len(flat):  # a null list over entries: flatten() skips them, this not
        return None
    return parents, names, values


def name_value_pairs(col: pa.Array) -> list[tuple[tuple[str, str], ...]]:
    """Each row's (name, value) pairs in order, () for a null or empty list."""
    n = len(col)
    entries = _entries(col)
    if entries is None:
        return [tuple((kv["name"], kv["value"]) for kv in v) if v else () for v in col.to_pylist()]
    parents, names, values = entries
    if not len(names):
        return [()] * n
    grouped: dict[int, list[tuple[str, str]]] = {}
    for row, name, value in zip(
        parents.to_pylist(), names.to_pylist(), values.to_pylist(), strict=True
    ):
        grouped.setdefault(row, []).append((name, value))
    return [tuple(grouped[i]) if i in grouped else () for i in range(n)]


def header_maps(col: pa.Array, wanted: frozenset[str]) -> list[dict[str, Any]]:
    """Per row, what `compare.header_map(headers, wanted)` gives: lower-case name -> the
    values of that name joined with ", ", for the wanted names only."""
    n = len(col)
    entries = _entries(col)
    # str.lower() and Arrow's lower-casing part ways beyond ASCII: such names go row by row.
    if (
        entries is not None
        and len(entries[1])
        and not pc.all(pc.string_is_ascii(entries[1])).as_py()
    ):
        entries = None
    if entries is None:
        return [header_map(pairs, wanted) for pairs in name_value_pairs(col)]
    parents, names, values = entries
    maps: list[dict[str, Any]] = [{} for _ in range(n)]
    if not len(names):
        return maps
    lower = pc.ascii_lower(names)
    keep = pc.is_in(lower, value_set=pa.array(sorted(wanted), pa.string()))
    if not pc.any(keep).as_py():
        return maps
    for row, name, value in zip(
        pc.filter(parents, keep).to_pylist(),
        pc.filter(lower, keep).to_pylist(),
        pc.filter(values, keep).to_pylist(),
        strict=True,
    ):
        m = maps[row]
        m[name] = m[name] + ", " + value if name in m else value
    return maps
