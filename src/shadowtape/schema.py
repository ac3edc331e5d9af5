"""The exchange schema and the Parquet dataset layer: the one contract every stage shares.

A dataset is a directory of Parquet files that any Arrow reader can open as it is. Each file
carries the schema version, the dataset kind and the stage's provenance in its key/value
metadata, so a file taken out of its directory still says what it is.

Writing is crash-safe: rows go to a hidden temporary file (readers and Arrow's dataset
discovery skip names starting with "." or "_"), which is fsynced and renamed into place only
when complete. A reader therefore never sees a half-written file, and after a hard kill only
the file being written is lost.
"""

from __future__ import annotations

import contextlib
import operator
import os
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shadowtape.errors import DatasetError
from shadowtape.publish import fsync_dir, remove_stale, temp_name

SCHEMA_VERSION = 1

META_VERSION = "shadowtape.schema_version"
META_KIND = "shadowtape.kind"
META_SANITIZED = "shadowtape.sanitized"
META_POLICY = "shadowtape.policy_fingerprint"
META_PREFIX = "shadowtape."

KIND_EXCHANGES = "exchanges"
KIND_RESULTS = "results"
KIND_DIFFS = "diffs"

TIMESTAMP = pa.timestamp("us", tz="UTC")
NAME_VALUE = pa.struct([("name", pa.string()), ("value", pa.string())])
# Headers and query strings are lists, not maps: HTTP allows repeats and order matters.
NAME_VALUE_LIST = pa.list_(NAME_VALUE)
# large_binary: a row group of big bodies can pass the 2 GiB limit of 32-bit offsets.
BODY = pa.large_binary()

_EXCHANGE_FIELDS = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("session_id", pa.string(), nullable=False),
    pa.field("seq", pa.int64(), nullable=False),
    pa.field("started_at", TIMESTAMP, nullable=False),
    pa.field("request_sent_at", TIMESTAMP),
    pa.field("response_started_at", TIMESTAMP),
    pa.field("response_ended_at", TIMESTAMP),
    pa.field("method", pa.string(), nullable=False),
    pa.field("scheme", pa.string()),
    pa.field("host", pa.string()),
    pa.field("port", pa.int32()),
    pa.field("path", pa.string()),
    pa.field("query", NAME_VALUE_LIST),
    pa.field("http_version", pa.string()),
    pa.field("request_headers", NAME_VALUE_LIST),
    pa.field("request_body", BODY),
    pa.field("request_body_truncated", pa.bool_()),
    pa.field("request_body_size", pa.int64()),
    pa.field("status", pa.int32()),
    pa.field("reason", pa.string()),
    pa.field("response_headers", NAME_VALUE_LIST),
    pa.field("response_body", BODY),
    pa.field("response_body_truncated", pa.bool_()),
    pa.field("response_body_size", pa.int64()),
    pa.field("error", pa.string()),
    pa.field("capture_id", pa.string()),
    pa.field("route", pa.string()),
]

EXCHANGE_SCHEMA = pa.schema(_EXCHANGE_FIELDS)

SUBSTITUTION = pa.struct(
    [("rule", pa.string()), ("location", pa.string()), ("outcome", pa.string())]
)

# A results row is the recorded exchange plus what staging did with it, so the diff stage and
# notebooks need nothing but the results dataset.
_REPLAY_FIELDS = [
    pa.field("run_id", pa.string()),
    pa.field("replay_id", pa.string()),
    # 1 for the replay proper; 2 for the second send of a sample (--noise-sample), which the
    # diff stage uses to tell fields that differ between two staging answers (noise) from drift.
    pa.field("replay_pass", pa.int32()),
    pa.field("trace_id", pa.string()),
    pa.field("span_id", pa.string()),
    pa.field("outcome", pa.string()),  # sent | skipped | failed
    pa.field("skip_reason", pa.string()),
    pa.field("target_url", pa.string()),
    pa.field("scheduled_at", TIMESTAMP),
    pa.field("sent_at", TIMESTAMP),
    pa.field("first_byte_at", TIMESTAMP),
    pa.field("done_at", TIMESTAMP),
    pa.field("lateness_us", pa.int64()),
    pa.field("attempts", pa.int32()),
    pa.field("retries", pa.int32()),
    pa.field("staging_status", pa.int32()),
    pa.field("staging_reason", pa.string()),
    pa.field("staging_http_version", pa.string()),
    pa.field("staging_headers", NAME_VALUE_LIST),
    pa.field("staging_body", BODY),
    pa.field("staging_body_truncated", pa.bool_()),
    pa.field("staging_error", pa.string()),
    pa.field("substitutions", pa.list_(SUBSTITUTION)),
]

RESULT_SCHEMA = pa.schema(_EXCHANGE_FIELDS + _REPLAY_FIELDS)

# One row per difference between a recorded and a staging response, joined to results on
# exchange_id (and replay_id).
DIFF_SCHEMA = pa.schema(
    [
        pa.field("exchange_id", pa.string(), nullable=False),
        pa.field("replay_id", pa.string()),
        pa.field("route", pa.string()),
        pa.field("part", pa.string()),  # status | header | body
        pa.field("location", pa.string()),  # normalised: $.items[*].price
        pa.field("raw_location", pa.string()),  # as found: $.items[3].price
        pa.field("kind", pa.string()),  # added | removed | changed | type_changed | length | ...
        pa.field("recorded_value", pa.string()),
        pa.field("staging_value", pa.string()),
        pa.field("classification", pa.string()),  # drift | noise | ignored
        pa.field("reason", pa.string()),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    KIND_EXCHANGES: EXCHANGE_SCHEMA,
    KIND_RESULTS: RESULT_SCHEMA,
    KIND_DIFFS: DIFF_SCHEMA,
}

Pairs = list[tuple[str, str]]


@dataclass(slots=True)
class Exchange:
    """One request/response pair, as every stage sees it in memory."""

    id: str
    session_id: str
    seq: int
    started_at: int  # µs since the Unix epoch, UTC
    method: str
    scheme: str | None = "http"
    host: str | None = None
    port: int | None = None
    path: str | None = "/"
    query: Pairs = field(default_factory=list)
    http_version: str | None = "HTTP/1.1"
    request_headers: Pairs = field(default_factory=list)
    request_body: bytes | None = None
    request_body_truncated: bool = False
    request_body_size: int | None = None
    status: int | None = None
    reason: str | None = None
    response_headers: Pairs = field(default_factory=list)
    response_body: bytes | None = None
    response_body_truncated: bool = False
    response_body_size: int | None = None
    error: str | None = None
    request_sent_at: int | None = None
    response_started_at: int | None = None
    response_ended_at: int | None = None
    capture_id: str | None = None
    route: str | None = None


EXCHANGE_COLUMNS = [f.name for f in _EXCHANGE_FIELDS]
_PAIR_COLUMNS = {"query", "request_headers", "response_headers", "staging_headers"}
_EXCHANGE_DATACLASS_FIELDS = {f.name for f in fields(Exchange)}


_EXCHANGE_ROW = operator.attrgetter(*(f.name for f in _EXCHANGE_FIELDS))


def exchanges_to_batch(records: Sequence[Exchange]) -> pa.RecordBatch:
    """Records to one batch, transposed in C: one attrgetter call per row and a zip, 2-3x
    faster than a Python loop per column (measured; capture's writer hot path)."""
    if not records:
        return pa.RecordBatch.from_pylist([], schema=EXCHANGE_SCHEMA)
    columns = zip(*map(_EXCHANGE_ROW, records), strict=True)
    arrays = [pa.array(col, type=f.type) for col, f in zip(columns, _EXCHANGE_FIELDS, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, schema=EXCHANGE_SCHEMA)


def _pairs(value: list[dict[str, str]] | None) -> Pairs:
    if not value:
        return []
    return [(kv["name"], kv["value"]) for kv in value]


def _micros(batch: pa.RecordBatch, name: str) -> list[int | None]:
    return batch.column(name).cast(pa.int64()).to_pylist()


def batch_to_exchanges(batch: pa.RecordBatch | pa.Table) -> list[Exchange]:
    """The inverse of exchanges_to_batch; extra columns (results, diffs) are ignored."""
    cols: dict[str, list[Any]] = {}
    for name in EXCHANGE_COLUMNS:
        if name not in batch.schema.names:
            raise DatasetError(f"record batch has no column {name!r}; it is not an exchange batch")
        if batch.schema.field(name).type == TIMESTAMP:
            cols[name] = _micros(batch, name)
        elif name in _PAIR_COLUMNS:
            cols[name] = [_pairs(v) for v in batch.column(name).to_pylist()]
        else:
            cols[name] = batch.column(name).to_pylist()
    return [
        Exchange(**{name: cols[name][i] for name in EXCHANGE_COLUMNS})
        for i in range(batch.num_rows)
    ]


def rows_to_batch(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.RecordBatch:
    """Rows as mappings to a batch of `schema`; missing keys become nulls.

    Timestamps may be given as µs integers, which is how every stage keeps time in memory.
    """
    columns = []
    for f in schema:
        values = [row.get(f.name) for row in rows]
        if f.type == TIMESTAMP:
            columns.append(pa.array(values, type=pa.int64()).cast(TIMESTAMP))
        else:
            columns.append(pa.array(values, type=f.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def batch_to_rows(batch: pa.RecordBatch | pa.Table) -> list[dict[str, Any]]:
    """Rows as dicts with timestamps as µs integers and name/value lists as tuples."""
    cols: dict[str, list[Any]] = {}
    for f in batch.schema:
        if f.type == TIMESTAMP:
            cols[f.name] = _micros(batch, f.name)
        elif f.type == NAME_VALUE_LIST:
            cols[f.name] = [_pairs(v) for v in batch.column(f.name).to_pylist()]
        else:
            cols[f.name] = batch.column(f.name).to_pylist()
    names = list(cols)
    return [{n: cols[n][i] for n in names} for i in range(batch.num_rows)]


def exchange_from_row(row: Mapping[str, Any]) -> Exchange:
    return Exchange(**{k: v for k, v in row.items() if k in _EXCHANGE_DATACLASS_FIELDS})


# --- identifiers --------------------------------------------------------------------------


def uuid7(unix_us: int | None = None, rand: bytes | None = None) -> str:
    """A UUIDv7 (RFC 9562): time-sortable ids. Clock and randomness are inputs for replays
    of the same input that must give the same ids."""
    if unix_us is None:
        unix_us = time.time_ns() // 1000
    if rand is None:
        rand = secrets.token_bytes(10)
    ms = unix_us // 1000
    sub_ms = unix_us % 1000  # 10 bits of sub-millisecond precision in rand_a keeps µs order
    rand_a = (sub_ms * 4096 // 1000) & 0x0FFF
    rand_b = int.from_bytes(rand[:8], "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= rand_a << 64
    value |= 0b10 << 62
    value |= rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# --- metadata -----------------------------------------------------------------------------


def make_metadata(kind: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    if kind not in SCHEMAS:
        raise ValueError(f"unknown dataset kind {kind!r}")
    meta = {META_VERSION: str(SCHEMA_VERSION), META_KIND: kind}
    if extra:
        meta.update(extra)
    return meta


def _decode_metadata(raw: Mapping[bytes, bytes] | None) -> dict[str, str]:
    if not raw:
        return {}
    return {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in raw.items()}


# --- reading ------------------------------------------------------------------------------


def is_hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def dataset_files(path: str | os.PathLike[str]) -> list[Path]:
    """The finalized Parquet files of a dataset, in name order (which is write order)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.exists():
        raise DatasetError(f"{p}: no such dataset (expected a directory of Parquet files)")
    if not p.is_dir():
        raise DatasetError(f"{p}: not a directory or Parquet file")
    return sorted(
        f
        for f in p.rglob("*.parquet")
        if f.is_file() and not any(is_hidden(part) for part in f.relative_to(p).parts)
    )


@dataclass(frozen=True, slots=True)
class DatasetFile:
    path: Path
    kind: str
    version: int
    metadata: dict[str, str]
    num_rows: int
    num_row_groups: int


def open_file(path: Path, kind: str | None = None) -> tuple[pq.ParquetFile, DatasetFile]:
    """Open one file of a dataset and check that it is one we can read."""
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetError(
            f"{path}: not a readable Parquet file ({exc}); it may be truncated or not Parquet"
        ) from None
    # Key/value metadata added at finalize lives in the footer, not in the Arrow schema.
    meta = _decode_metadata(pf.schema_arrow.metadata)
    meta.update(
        (k, v)
        for k, v in _decode_metadata(pf.metadata.metadata).items()
        if k.startswith(META_PREFIX)
    )
    if META_VERSION not in meta:
        raise DatasetError(
            f"{path}: a Parquet file without shadowtape metadata; "
            "it is not a shadowtape dataset (import HAR or flow files with `shadowtape import`)"
        )
    try:
        version = int(meta[META_VERSION])
    except ValueError:
        raise DatasetError(f"{path}: bad schema version {meta[META_VERSION]!r}") from None
    if version > SCHEMA_VERSION:
        raise DatasetError(
            f"{path}: written with schema version {version}, this shadowtape reads up to "
            f"{SCHEMA_VERSION}; upgrade shadowtape"
        )
    file_kind = meta.get(META_KIND, KIND_EXCHANGES)
    if (
        kind is not None
        and file_kind != kind
        and not (kind == KIND_EXCHANGES and file_kind == KIND_RESULTS)
    ):
        raise DatasetError(f"{path}: a {file_kind} dataset, expected {kind}")
    expected = SCHEMAS.get(file_kind)
    if expected is not None:
        present = set(pf.schema_arrow.names)  # schema_arrow is rebuilt on every access
        missing = [n for n in expected.names if n not in present]
        if missing:
            raise DatasetError(f"{path}: {file_kind} file lacks columns {', '.join(missing)}")
    info = DatasetFile(
        path=path,
        kind=file_kind,
        version=version,
        metadata=meta,
        num_rows=pf.metadata.num_rows,
        num_row_groups=pf.metadata.num_row_groups,
    )
    return pf, info


def read_files(path: str | os.PathLike[str], kind: str | None = None) -> list[DatasetFile]:
    """Every file's header, checked; raises on the first bad one, naming it."""
    files = dataset_files(path)
    out = []
    for f in files:
        pf, info = open_file(f, kind)
        pf.close()
        out.append(info)
    return out


def iter_batches(
    path: str | os.PathLike[str],
    kind: str | None = None,
    columns: Sequence[str] | None = None,
    files: Iterable[Path] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stream a dataset row group by row group, so memory stays flat as datasets grow."""
    for f in files if files is not None else dataset_files(path):
        pf, _ = open_file(f, kind)
        try:
            for i in range(pf.metadata.num_row_groups):
                try:
                    table = pf.read_row_group(i, columns=list(columns) if columns else None)
                except (pa.ArrowInvalid, OSError) as exc:
                    raise DatasetError(f"{f}: row group {i} unreadable ({exc})") from None
                yield from table.to_batches()
        finally:
            pf.close()


def iter_exchanges(path: str | os.PathLike[str]) -> Iterator[Exchange]:
    for batch in iter_batches(path, KIND_EXCHANGES):
        yield from batch_to_exchanges(batch)


def dataset_metadata(path: str | os.PathLike[str], kind: str | None = None) -> dict[str, str]:
    """Metadata of the dataset as a whole: the first file's, checked for agreement on whether
    the data is sanitized (a mix is treated as unsanitized)."""
    infos = read_files(path, kind)
    if not infos:
        return {}
    meta = dict(infos[0].metadata)
    flags = {i.metadata.get(META_SANITIZED, "false") for i in infos}
    meta[META_SANITIZED] = "true" if flags == {"true"} else "false"
    return meta


def is_sanitized(path: str | os.PathLike[str]) -> bool:
    return dataset_metadata(path).get(META_SANITIZED) == "true"


# --- writing ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RollPolicy:
    """When a file is finalized and a new one begun."""

    max_rows: int = 1_000_000
    max_bytes: int = 256 * 1024 * 1024
    max_seconds: float | None = None
    row_group_rows: int = 10_000


# What DatasetWriter names its open files: `.NAME.parquet.tmp-HOST-PID-RANDOM` (see publish).
_TEMP_ROLE = "tmp"


class DatasetWriter:
    """Appends record batches to a dataset directory as rolling, atomically finalized files.

    Nothing is lost silently: every row given is, at any moment, in a finalized file
    (`rows_written`), still open (`unfinalized_rows`) or counted as lost (`rows_lost`) after a
    write failed. A failure (a full disk, an I/O error) aborts the open file, counts its rows
    as lost and re-raises; the next row opens a new file, so writing resumes once the cause
    is gone. Temporary files left by a killed writer on this host are removed on start.

    Not thread-safe: one writer per thread (capture gives it its own thread).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        kind: str = KIND_EXCHANGES,
        *,
        metadata: Mapping[str, str] | None = None,
        prefix: str = "part",
        roll: RollPolicy | None = None,
        compression: str = "zstd",
        schema: pa.Schema | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.directory = Path(directory)
        self.kind = kind
        self.schema = (schema or SCHEMAS[kind]).with_metadata(make_metadata(kind, metadata))
        self.prefix = prefix
        self.roll = roll or RollPolicy()
        self.compression = compression
        self._clock = clock
        self._index = 0
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._final: Path | None = None
        self._first_row_at: float | None = None
        self._file_rows = 0
        self._file_bytes = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._pending_bytes = 0
        self._extra_meta: dict[str, str] = {}
        self.files: list[Path] = []
        self.rows_written = 0  # rows in finalized files
        self.rows_lost = 0  # rows of files that failed to write (counted, never silent)
        self.bytes_written = 0
        self.directory.mkdir(parents=True, exist_ok=True)
        remove_stale(self.directory, _TEMP_ROLE)

    @property
    def unfinalized_rows(self) -> int:
        """Rows given but not yet in a finalized file (lost if the process dies now)."""
        return self._pending_rows + self._file_rows

    # Metadata given here lands in every file finalized from now on (capture puts its running
    # drop counters here, so the last file always holds the final figures).
    def set_file_metadata(self, values: Mapping[str, str]) -> None:
        self._extra_meta.update(values)

    def write_batch(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        if batch.schema.names != self.schema.names:
            batch = pa.RecordBatch.from_arrays(
                [batch.column(n) for n in self.schema.names], schema=self.schema
            )
        # Slice at row-group and file boundaries so both limits hold whatever the batch size.
        offset = 0
        try:
            while offset < batch.num_rows:
                room_group = self.roll.row_group_rows - self._pending_rows
                room_file = self.roll.max_rows - self._file_rows - self._pending_rows
                take = max(1, min(room_group, room_file, batch.num_rows - offset))
                part = batch.slice(offset, take)
                if self._first_row_at is None:
                    # The roll interval bounds how long a row waits unfinalized, so it runs
                    # from the first row of a file, not from when the writer was made.
                    self._first_row_at = self._clock()
                self._pending.append(part)
                self._pending_rows += take
                self._pending_bytes += part.nbytes
                offset += take
                if self._pending_rows >= self.roll.row_group_rows:
                    self._flush_row_group()
                if (
                    self._file_rows + self._pending_rows >= self.roll.max_rows
                    or self._file_bytes >= self.roll.max_bytes
                ):
                    self.finalize_file()
        except BaseException:
            self.abort()
            self.rows_lost += batch.num_rows - offset
            raise

    def write_rows(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self.write_batch(rows_to_batch(rows, self.schema))

    def write_exchanges(self, records: Sequence[Exchange]) -> None:
        self.write_batch(exchanges_to_batch(records))

    def seconds_until_due(self) -> float | None:
        """Time left before the open file's roll interval ends (None: no interval, or no
        open rows); a caller's timer sleeps this long rather than waiting for a next row."""
        if self.roll.max_seconds is None or self._first_row_at is None:
            return None
        return self.roll.max_seconds - (self._clock() - self._first_row_at)

    def due(self) -> bool:
        """Whether the roll interval has passed for the open file."""
        left = self.seconds_until_due()
        return left is not None and left <= 0

    def _open(self) -> None:
        self._index += 1
        name = f"{self.prefix}-{self._index:06d}.parquet"
        self._final = self.directory / name
        while self._final.exists():
            self._index += 1
            name = f"{self.prefix}-{self._index:06d}.parquet"
            self._final = self.directory / name
        self._tmp = temp_name(self._final, _TEMP_ROLE)
        self._writer = pq.ParquetWriter(
            self._tmp,
            self.schema,
            compression=self.compression,
            write_statistics=True,
        )
        self._file_bytes = 0

    def _flush_row_group(self) -> None:
        if not self._pending_rows:
            return
        if self._writer is None:
            self._open()
        assert self._writer is not None
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        self._writer.write_table(table, row_group_size=max(len(table), 1))
        self._file_rows += self._pending_rows
        self._file_bytes += self._pending_bytes
        self._pending = []
        self._pending_rows = 0
        self._pending_bytes = 0

    def finalize_file(self) -> Path | None:
        """Close the open file and make it visible; a no-op with nothing written."""
        try:
            self._flush_row_group()
            if self._writer is None:
                return None
            assert self._tmp is not None and self._final is not None
            if self._extra_meta:
                self._writer.add_key_value_metadata(dict(self._extra_meta))
            self._writer.close()
            self._writer = None
            with open(self._tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(self._tmp, self._final)
        except BaseException:
            self.abort()
            raise
        fsync_dir(self.directory)
        with contextlib.suppress(OSError):
            self.bytes_written += self._final.stat().st_size
        self.files.append(self._final)
        self.rows_written += self._file_rows
        final = self._final
        self._tmp = self._final = None
        self._file_rows = 0
        self._file_bytes = 0
        self._first_row_at = None
        return final

    def close(self) -> list[Path]:
        self.finalize_file()
        return list(self.files)

    def abort(self) -> int:
        """Drop what is not finalized (finalized files stay); returns the rows dropped, which
        are added to `rows_lost`."""
        lost = self.unfinalized_rows
        self.rows_lost += lost
        self._pending = []
        self._pending_rows = 0
        self._pending_bytes = 0
        self._file_rows = 0
        self._file_bytes = 0
        self._first_row_at = None
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.unlink()
            self._tmp = None
        self._final = None
        return lost

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def foreign_content(
    directory: str | os.PathLike[str],
    kinds: Sequence[str],
    *,
    sanitized: bool | None = None,
    extra_names: Sequence[str] = (),
    ignore_hidden: bool = False,
) -> str | None:
    """Why `directory` is not purely a shadowtape dataset of one of `kinds` (None if it is).

    It is what a command may replace or add to: Parquet files whose metadata says they are
    of that kind (and, when `sanitized` is given, flagged so or not), the top-level names in
    `extra_names` (a manifest, a summary), and this layer's own temporaries; with
    `ignore_hidden`, any hidden entry (for a caller that adds files and replaces nothing
    else). The answer is a phrase naming the first thing that is not, for an error line.
    """
    root = Path(directory)
    wanted = " or ".join(kinds)

    def walk(d: Path) -> str | None:
        for entry in sorted(d.iterdir()):
            rel = entry.relative_to(root)
            if (d == root and entry.name in extra_names) or (
                ignore_hidden and is_hidden(entry.name)
            ):
                continue
            if entry.is_symlink():
                return f"holds {rel}, a symbolic link shadowtape did not write"
            if entry.is_dir():
                reason = walk(entry)
                if reason is not None:
                    return reason
                continue
            if is_hidden(entry.name) and ".parquet." in entry.name:
                continue  # a writer's temporary (or one left by a killed writer)
            if is_hidden(entry.name) or entry.suffix != ".parquet":
                return f"holds {rel}, which is not part of a shadowtape {wanted} dataset"
            try:
                pf, info = open_file(entry)
                pf.close()
            except DatasetError:
                return f"holds {rel}, which is not a shadowtape dataset file"
            if info.kind not in kinds:
                return f"holds {rel}, which belongs to a dataset of {info.kind} (not {wanted})"
            flagged = info.metadata.get(META_SANITIZED) == "true"
            if sanitized is not None and flagged != sanitized:
                state = "a sanitized" if flagged else "an unsanitized"
                return f"holds {rel}, a file of {state} {info.kind} dataset"
        return None

    return walk(root)
