"""The exchange schema and the Parquet dataset layer: the one contract every stage shares.

A dataset is a directory of Parquet files that any Arrow reader can open as it is. Each file
carries the schema version, the dataset kind and the stage's provenance in its key/value
metadata, so a file taken out of its directory still says what it is.

Writing is crash-safe: rows go to a hidden temporary file (readers and Arrow's dataset
discovery skip names starting with "." or "_"), which is fsynced and renamed into place only
when complete. A reader therefore never sees a half-written file, and after a hard kill only
the file being written is lost.

Wire text (schema version 2). Header names and values, query pairs and the raw request target
are, in memory, `str` holding the wire bytes decoded as UTF-8 with surrogateescape (see
`shadowtape.http.headers`), so any bytes survive. Arrow strings must be valid UTF-8, so such
text cannot be stored as it is. Each name/value entry is therefore
`struct<name: string, value: string, name_raw: binary, value_raw: binary>`: the raw fields are
null unless the text is not valid UTF-8, and then `name`/`value` hold `display()` text (each
non-UTF-8 byte shown as its latin-1 character) and the raw field the exact bytes. The common
all-UTF-8 case costs two all-null columns (a few bytes a row group), any Arrow reader (polars,
DuckDB, Spark) still sees readable name/value strings, and nothing is lost. `request_target`
works the same way with a `request_target_raw` binary column beside it. The conversion lives
only here (`exchanges_to_batch`, `batch_to_exchanges`, `rows_to_batch`, `batch_to_rows`,
`pairs_array`, `pairs_column`); in memory, pairs stay `list[tuple[str, str]]`. Readers that
only analyse (diff's column readers) may read `name`/`value` as display text directly. Other
text columns (path, host, reason, error...) are stored as display text when they are not valid
UTF-8: `request_target` is the authoritative copy of what the path was on the wire.

Version 1 datasets still read. `open_file` accepts a version-1 file that lacks the columns
added in version 2, and every read that goes through here (`iter_batches`, `upgrade`) gives
batches of the current schema: missing columns as nulls (`request_target` null means "not
known", and replay then spells the target from `path` and `query` with
`http.target.build_target`, exactly as version 1 replay did), name/value structs widened with
null raw fields. Nothing is rewritten on disk; a stage that writes a v1 input back out
(sanitize) writes version 2.
"""

from __future__ import annotations

import contextlib
import json
import operator
import os
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from itertools import accumulate, chain, islice
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shadowtape.errors import DatasetError
from shadowtape.http.headers import decode, display, encode, is_utf8

SCHEMA_VERSION = 2

META_VERSION = "shadowtape.schema_version"
META_KIND = "shadowtape.kind"
META_SANITIZED = "shadowtape.sanitized"
META_POLICY = "shadowtape.policy_fingerprint"
META_PREFIX = "shadowtape."

KIND_EXCHANGES = "exchanges"
KIND_RESULTS = "results"
KIND_DIFFS = "diffs"

TIMESTAMP = pa.timestamp("us", tz="UTC")
# name/value: display text; *_raw: the exact bytes, null unless the text is not valid UTF-8.
NAME_VALUE = pa.struct(
    [
        ("name", pa.string()),
        ("value", pa.string()),
        ("name_raw", pa.binary()),
        ("value_raw", pa.binary()),
    ]
)
# Headers and query strings are lists, not maps: HTTP allows repeats and order matters.
NAME_VALUE_LIST = pa.list_(NAME_VALUE)
NAME_VALUE_V1 = pa.struct([("name", pa.string()), ("value", pa.string())])
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
    # The IP:port actually connected to; `host` is the Host / :authority name.
    pa.field("server_address", pa.string()),
    # The parsed view: path without the query, and the query's decoded pairs.
    pa.field("path", pa.string()),
    pa.field("query", NAME_VALUE_LIST),
    # What was on the wire: the HTTP/1.x origin-form target or HTTP/2-3 `:path`, unparsed;
    # null when unknown. Authoritative for what replay sends.
    pa.field("request_target", pa.string()),
    pa.field("request_target_raw", pa.binary()),
    pa.field("http_version", pa.string()),
    pa.field("request_headers", NAME_VALUE_LIST),
    pa.field("request_body", BODY),
    pa.field("request_body_truncated", pa.bool_()),
    pa.field("request_body_size", pa.int64()),
    # Content-Encoding could not be undone: the bytes are kept raw, with the header.
    pa.field("request_body_undecodable", pa.bool_()),
    pa.field("status", pa.int32()),
    pa.field("reason", pa.string()),
    pa.field("response_headers", NAME_VALUE_LIST),
    pa.field("response_body", BODY),
    pa.field("response_body_truncated", pa.bool_()),
    pa.field("response_body_size", pa.int64()),
    pa.field("response_body_undecodable", pa.bool_()),
    # A browser HAR entry served from its cache: no request reached the server.
    pa.field("response_from_cache", pa.bool_()),
    pa.field("error", pa.string()),
    pa.field("capture_id", pa.string()),
    pa.field("route", pa.string()),
]

EXCHANGE_SCHEMA = pa.schema(_EXCHANGE_FIELDS)
# Columns a version-1 file does not have; they read as nulls.
ADDED_IN_V2 = frozenset(
    {
        "server_address",
        "request_target",
        "request_target_raw",
        "request_body_undecodable",
        "response_body_undecodable",
        "response_from_cache",
    }
)
# A text column whose exact bytes, when not valid UTF-8, sit in a binary column beside it.
RAW_COMPANIONS = {"request_target": "request_target_raw"}
_COMPANION_OF = {raw: text for text, raw in RAW_COMPANIONS.items()}

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
    server_address: str | None = None
    path: str | None = "/"
    query: Pairs = field(default_factory=list)
    # Wire text (surrogateescape), exactly as sent; None when unknown (see the module doc).
    request_target: str | None = None
    http_version: str | None = "HTTP/1.1"
    request_headers: Pairs = field(default_factory=list)
    request_body: bytes | None = None
    request_body_truncated: bool = False
    request_body_size: int | None = None
    # None in data from before schema version 2: not known.
    request_body_undecodable: bool | None = False
    status: int | None = None
    reason: str | None = None
    response_headers: Pairs = field(default_factory=list)
    response_body: bytes | None = None
    response_body_truncated: bool = False
    response_body_size: int | None = None
    response_body_undecodable: bool | None = False
    response_from_cache: bool | None = False
    error: str | None = None
    request_sent_at: int | None = None
    response_started_at: int | None = None
    response_ended_at: int | None = None
    capture_id: str | None = None
    route: str | None = None


# Arrow column names, raw companions included (what `batch.select` needs).
EXCHANGE_COLUMNS = [f.name for f in _EXCHANGE_FIELDS]
# What an Exchange holds: the companions fold into their text column.
_MEMORY_FIELDS = [f for f in _EXCHANGE_FIELDS if f.name not in _COMPANION_OF]
_EXCHANGE_DATACLASS_FIELDS = {f.name for f in fields(Exchange)}
_EXCHANGE_ROW = operator.attrgetter(*(f.name for f in _MEMORY_FIELDS))


# --- wire text to Arrow and back ----------------------------------------------------------------


def _text_and_raw(values: Sequence[str | None]) -> tuple[pa.Array, pa.Array]:
    """Display text and exact bytes (null where the text is valid UTF-8 as it stands)."""
    try:
        # The common case, decided in C: every value is valid UTF-8.
        return pa.array(values, pa.string()), pa.nulls(len(values), pa.binary())
    except UnicodeEncodeError:
        pass
    text: list[str | None] = []
    raw: list[bytes | None] = []
    for v in values:
        if v is None or is_utf8(v):
            text.append(v)
            raw.append(None)
        else:
            text.append(display(v))
            raw.append(encode(v))
    return pa.array(text, pa.string()), pa.array(raw, pa.binary())


def _string_array(values: Sequence[str | None]) -> pa.Array:
    """A text column without a raw companion: display text where it is not valid UTF-8, so
    one odd byte can never make a whole batch unwritable."""
    try:
        return pa.array(values, pa.string())
    except UnicodeEncodeError:
        return pa.array([v if v is None else display(v) for v in values], pa.string())


def pairs_array(rows: Sequence[Sequence[tuple[str, str]] | None]) -> pa.Array:
    """Name/value lists (None for a null list) as one NAME_VALUE_LIST array.

    The common case, every name and value valid UTF-8, is Arrow's own conversion of the nested
    tuples to the two string fields (checked in C, as fast as version 1's struct), widened by
    two all-null raw fields; only a list holding other text goes field by field.
    """
    try:
        narrow = pa.array(rows, type=_NARROW_LIST)
    except UnicodeEncodeError:
        return _pairs_array_with_raw(rows if isinstance(rows, list) else list(rows))
    entries = narrow.values
    n = len(entries)
    name, value = entries.flatten()
    widened = pa.StructArray.from_arrays(
        [name, value, pa.nulls(n, pa.binary()), pa.nulls(n, pa.binary())], fields=_NV_FIELDS
    )
    mask = narrow.is_null() if narrow.null_count else None
    return pa.ListArray.from_arrays(narrow.offsets, widened, type=NAME_VALUE_LIST, mask=mask)


_NARROW_LIST = pa.list_(NAME_VALUE_V1)
_NV_FIELDS = list(NAME_VALUE)


def _pairs_array_with_raw(rows: list[Sequence[tuple[str, str]] | None]) -> pa.Array:
    mask = pa.array([r is None for r in rows], pa.bool_()) if None in rows else None
    lengths = [0 if r is None else len(r) for r in rows]
    flat = list(chain.from_iterable(r for r in rows if r))
    offsets = pa.array(list(accumulate(lengths, initial=0)), pa.int32())
    names, values = zip(*flat, strict=True) if flat else ((), ())
    name_text, name_raw = _text_and_raw(names)
    value_text, value_raw = _text_and_raw(values)
    entries = pa.StructArray.from_arrays(
        [name_text, value_text, name_raw, value_raw], fields=_NV_FIELDS
    )
    return pa.ListArray.from_arrays(offsets, entries, type=NAME_VALUE_LIST, mask=mask)


def _folded(text: list[str | None], raw: pa.Array) -> list[str | None]:
    if raw.null_count == len(raw):
        return text
    for i, b in enumerate(raw.to_pylist()):
        if b is not None:
            text[i] = decode(b)
    return text


def _is_pair_list(t: pa.DataType) -> bool:
    return (
        pa.types.is_list(t)
        and pa.types.is_struct(t.value_type)
        and t.value_type.get_field_index("name") != -1
        and t.value_type.get_field_index("value") != -1
    )


def pairs_column(col: pa.Array | pa.ChunkedArray) -> list[Pairs]:
    """A name/value list column (version 1 or 2) as in-memory pairs, exact bytes restored;
    a null list is []."""
    if isinstance(col, pa.ChunkedArray):
        out: list[Pairs] = []
        for chunk in col.chunks:
            out += pairs_column(chunk)
        return out
    entries = col.flatten()  # the entries of the non-null lists, slicing respected
    children = entries.flatten()
    t = entries.type
    names = children[t.get_field_index("name")].to_pylist()
    values = children[t.get_field_index("value")].to_pylist()
    if t.get_field_index("name_raw") != -1:
        names = _folded(names, children[t.get_field_index("name_raw")])
        values = _folded(values, children[t.get_field_index("value_raw")])
    pairs = iter(zip(names, values, strict=True))
    return [list(islice(pairs, n)) if n else [] for n in pc.list_value_length(col).to_pylist()]


def text_column(batch: pa.RecordBatch | pa.Table, name: str) -> list[str | None]:
    """A text column with its exact bytes folded back in from its raw companion, if any."""
    text = batch.column(name).to_pylist()
    raw_name = RAW_COMPANIONS.get(name)
    if raw_name is not None and raw_name in batch.schema.names:
        raw = batch.column(raw_name)
        chunks = raw.chunks if isinstance(raw, pa.ChunkedArray) else [raw]
        text = _folded(text, pa.concat_arrays(chunks) if len(chunks) != 1 else chunks[0])
    return text


def _micros(batch: pa.RecordBatch | pa.Table, name: str) -> list[int | None]:
    return batch.column(name).cast(pa.int64()).to_pylist()


def _column_values(batch: pa.RecordBatch | pa.Table, f: pa.Field) -> list[Any]:
    if f.type == TIMESTAMP:
        return _micros(batch, f.name)
    if _is_pair_list(f.type):
        return pairs_column(batch.column(f.name))
    if f.name in RAW_COMPANIONS:
        return text_column(batch, f.name)
    return batch.column(f.name).to_pylist()


def columns_to_arrays(schema: pa.Schema, columns: Mapping[str, Sequence[Any]]) -> list[pa.Array]:
    """Arrays of `schema` from in-memory column values; a raw companion is made from its text
    column, a column with no values is all null."""
    made: dict[str, pa.Array] = {}
    n = len(next(iter(columns.values()))) if columns else 0
    for f in schema:
        if f.name in made:
            continue
        values = columns.get(f.name)
        if f.name in _COMPANION_OF:
            values = None  # made with its text column, or null without one
        # Columns that are all null or all false (most of the optional ones, most of the
        # time) are made without converting a value; count() runs in C, and only where the
        # first value says it may pay (comparing a list with None is not free).
        if values is None or (n and values[0] is None and values.count(None) == n):
            made[f.name] = pa.nulls(n, f.type)
            if f.name in RAW_COMPANIONS and RAW_COMPANIONS[f.name] in schema.names:
                made[RAW_COMPANIONS[f.name]] = pa.nulls(n, pa.binary())
        elif f.type == pa.bool_() and n and values[0] is False and values.count(False) == n:
            made[f.name] = pa.repeat(False, n)
        elif _is_pair_list(f.type):
            made[f.name] = pairs_array(values)
        elif f.type == TIMESTAMP:
            made[f.name] = pa.array(values, type=pa.int64()).cast(TIMESTAMP)
        elif f.name in RAW_COMPANIONS:
            made[f.name], raw = _text_and_raw(values)
            if RAW_COMPANIONS[f.name] in schema.names:
                made[RAW_COMPANIONS[f.name]] = raw
        elif f.type == pa.string():
            made[f.name] = _string_array(values)
        else:
            made[f.name] = pa.array(values, type=f.type)
    return [made[f.name] for f in schema]


def exchanges_to_batch(records: Sequence[Exchange]) -> pa.RecordBatch:
    """Records to one batch, transposed in C: one attrgetter call per row and a zip, 2-3x
    faster than a Python loop per column (measured; capture's writer hot path)."""
    if not records:
        return pa.RecordBatch.from_pylist([], schema=EXCHANGE_SCHEMA)
    columns = zip(*map(_EXCHANGE_ROW, records), strict=True)
    values = {f.name: col for col, f in zip(columns, _MEMORY_FIELDS, strict=True)}
    return pa.RecordBatch.from_arrays(
        columns_to_arrays(EXCHANGE_SCHEMA, values), schema=EXCHANGE_SCHEMA
    )


def batch_to_exchanges(batch: pa.RecordBatch | pa.Table) -> list[Exchange]:
    """The inverse of exchanges_to_batch; extra columns (results, diffs) are ignored, and a
    version-1 batch reads with the columns it lacks as None."""
    present = set(batch.schema.names)
    cols: dict[str, list[Any]] = {}
    for f in _MEMORY_FIELDS:
        if f.name not in present:
            if f.name in ADDED_IN_V2:
                cols[f.name] = [None] * batch.num_rows
                continue
            raise DatasetError(
                f"record batch has no column {f.name!r}; it is not an exchange batch"
            )
        cols[f.name] = _column_values(batch, f)
    names = [f.name for f in _MEMORY_FIELDS]
    return [Exchange(**{name: cols[name][i] for name in names}) for i in range(batch.num_rows)]


def rows_to_batch(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.RecordBatch:
    """Rows as mappings to a batch of `schema`; missing keys become nulls.

    Timestamps may be given as µs integers, which is how every stage keeps time in memory;
    pairs and raw-companion text as wire text (see the module doc).
    """
    columns = {f.name: [row.get(f.name) for row in rows] for f in schema}
    if not rows:
        return pa.RecordBatch.from_pylist([], schema=schema)
    return pa.RecordBatch.from_arrays(columns_to_arrays(schema, columns), schema=schema)


def batch_to_rows(batch: pa.RecordBatch | pa.Table) -> list[dict[str, Any]]:
    """Rows as dicts with timestamps as µs integers, name/value lists as tuples and wire text
    with its exact bytes restored (raw companion columns fold into their text column)."""
    cols: dict[str, list[Any]] = {}
    for f in batch.schema:
        if f.name in _COMPANION_OF and _COMPANION_OF[f.name] in batch.schema.names:
            continue
        cols[f.name] = _column_values(batch, f)
    names = list(cols)
    return [{n: cols[n][i] for n in names} for i in range(batch.num_rows)]


# --- version 1 files ----------------------------------------------------------------------------


def _widen_pairs(col: pa.Array) -> pa.Array:
    """A version-1 struct<name, value> list as NAME_VALUE_LIST, raw fields null."""
    entries = col.flatten()
    name, value = (entries.flatten()[entries.type.get_field_index(n)] for n in ("name", "value"))
    n = len(entries)
    widened = pa.StructArray.from_arrays(
        [name, value, pa.nulls(n, pa.binary()), pa.nulls(n, pa.binary())],
        fields=list(NAME_VALUE),
    )
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_pylist()
    offsets = pa.array(list(accumulate(lengths, initial=0)), pa.int32())
    mask = col.is_null() if col.null_count else None
    return pa.ListArray.from_arrays(offsets, widened, type=NAME_VALUE_LIST, mask=mask)


def _upgraded_column(col: pa.Array | pa.ChunkedArray, f: pa.Field) -> pa.Array | pa.ChunkedArray:
    if col.type == f.type:
        return col
    if f.type == NAME_VALUE_LIST and _is_pair_list(col.type):
        if isinstance(col, pa.ChunkedArray):
            return pa.chunked_array([_widen_pairs(c) for c in col.chunks], NAME_VALUE_LIST)
        return _widen_pairs(col)
    return col.cast(f.type)


def upgrade(
    data: pa.RecordBatch | pa.Table,
    kind: str = KIND_EXCHANGES,
    columns: Sequence[str] | None = None,
) -> Any:
    """A batch or table of any readable version in the current schema of `kind`: the kind's
    columns in order (or only `columns`, in that order), those a version-1 file lacks as
    nulls, name/value structs widened; then any other columns it has. A batch already in the
    current schema comes back as it is."""
    target = SCHEMAS.get(kind)
    if target is None or (columns is None and data.schema.equals(target)):
        return data
    present = set(data.schema.names)
    n = data.num_rows
    table = isinstance(data, pa.Table)
    wanted = [target.field(c) for c in columns if c in target.names] if columns else target
    fields_out: list[pa.Field] = []
    arrays: list[Any] = []
    for f in wanted:
        if f.name in present:
            arrays.append(_upgraded_column(data.column(f.name), f))
        elif f.name in ADDED_IN_V2:
            nulls = pa.nulls(n, f.type)
            arrays.append(pa.chunked_array([nulls]) if table else nulls)
        else:
            continue
        fields_out.append(f)
    for f in data.schema:
        if f.name not in target.names:
            fields_out.append(f)
            arrays.append(data.column(f.name))
    out_schema = pa.schema(fields_out, metadata=data.schema.metadata)
    if table:
        return pa.Table.from_arrays(arrays, schema=out_schema)
    return pa.RecordBatch.from_arrays(arrays, schema=out_schema)


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
        optional = ADDED_IN_V2 if version < 2 else frozenset()
        missing = [n for n in expected.names if n not in present and n not in optional]
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
    """Stream a dataset row group by row group, so memory stays flat as datasets grow.

    Batches come in the current schema whatever version wrote the file (see `upgrade`)."""
    for f in files if files is not None else dataset_files(path):
        pf, info = open_file(f, kind)
        try:
            wanted = list(columns) if columns else None
            read = wanted
            current = info.version >= SCHEMA_VERSION
            if wanted is not None and not current:
                present = set(pf.schema_arrow.names)
                read = [c for c in wanted if c in present]
            for i in range(pf.metadata.num_row_groups):
                try:
                    table = pf.read_row_group(i, columns=read)
                except (pa.ArrowInvalid, OSError) as exc:
                    raise DatasetError(f"{f}: row group {i} unreadable ({exc})") from None
                if not current:
                    table = upgrade(table, info.kind, wanted)
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


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class RollPolicy:
    """When a file is finalized and a new one begun."""

    max_rows: int = 1_000_000
    max_bytes: int = 256 * 1024 * 1024
    max_seconds: float | None = None
    row_group_rows: int = 10_000


class DatasetWriter:
    """Appends record batches to a dataset directory as rolling, atomically finalized files.

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
        self.rows_written = 0
        self.bytes_written = 0
        self.directory.mkdir(parents=True, exist_ok=True)

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
        while offset < batch.num_rows:
            room_group = self.roll.row_group_rows - self._pending_rows
            room_file = self.roll.max_rows - self._file_rows - self._pending_rows
            take = max(1, min(room_group, room_file, batch.num_rows - offset))
            part = batch.slice(offset, take)
            offset += take
            if self._first_row_at is None:
                # The roll interval bounds how long a row waits unfinalized, so it runs from
                # the first row of a file, not from when the writer was made.
                self._first_row_at = self._clock()
            self._pending.append(part)
            self._pending_rows += take
            self._pending_bytes += part.nbytes
            if self._pending_rows >= self.roll.row_group_rows:
                self._flush_row_group()
            if (
                self._file_rows + self._pending_rows >= self.roll.max_rows
                or self._file_bytes >= self.roll.max_bytes
            ):
                self.finalize_file()

    def write_rows(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self.write_batch(rows_to_batch(rows, self.schema))

    def write_exchanges(self, records: Sequence[Exchange]) -> None:
        self.write_batch(exchanges_to_batch(records))

    def due(self) -> bool:
        """Whether the roll interval has passed for the open file."""
        if self.roll.max_seconds is None:
            return False
        return (
            self._first_row_at is not None
            and self._clock() - self._first_row_at >= self.roll.max_seconds
        )

    def _open(self) -> None:
        self._index += 1
        name = f"{self.prefix}-{self._index:06d}.parquet"
        self._final = self.directory / name
        while self._final.exists():
            self._index += 1
            name = f"{self.prefix}-{self._index:06d}.parquet"
            self._final = self.directory / name
        self._tmp = self.directory / f".{name}.tmp"
        self._writer = pq.ParquetWriter(
            self._tmp,
            self.schema,
            compression=self.compression,
            write_statistics=True,
        )
        self._file_rows = 0
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
        self.rows_written += self._pending_rows
        self._pending = []
        self._pending_rows = 0
        self._pending_bytes = 0

    def finalize_file(self) -> Path | None:
        """Close the open file and make it visible; a no-op with nothing written."""
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
        _fsync_dir(self.directory)
        self.bytes_written += self._final.stat().st_size
        self.files.append(self._final)
        final = self._final
        self._tmp = self._final = None
        self._file_rows = 0
        self._file_bytes = 0
        self._first_row_at = None
        return final

    def close(self) -> list[Path]:
        self.finalize_file()
        return list(self.files)

    def abort(self) -> None:
        """Drop what is not finalized; finalized files stay."""
        self._pending = []
        self._pending_rows = 0
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> None:
    """Manifests and summaries beside datasets get the same temp-fsync-rename treatment."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    data = json.dumps(payload, indent=2, sort_keys=True).encode() + b"\n"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, p)
