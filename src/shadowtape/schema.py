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

from shadowtape.errors import DatasetError, InputError
from shadowtape.governance.access import FileAccess
from shadowtape.http.headers import decode, display, encode, is_utf8
from shadowtape.publish import fsync_dir, remove_stale, temp_name

SCHEMA_VERSION = 2

META_VERSION = "shadowtape.schema_version"
META_KIND = "shadowtape.kind"
META_SANITIZED = "shadowtape.sanitized"
META_POLICY = "shadowtape.policy_fingerprint"
META_PREFIX = "shadowtape."
# A results file's run: replay's configuration and counts, as JSON (diff reads the targets).
META_REPLAY = "shadowtape.replay"
# Where a recorded dataset came from: which recorder run, what recorded it, under which key
# (its fingerprint, never the key), so tokens of different datasets can be told comparable.
META_CAPTURE_ID = "shadowtape.capture_id"
# Which of `capture --workers N` processes wrote a file (absent for a single process).
META_CAPTURE_WORKER = "shadowtape.capture_worker"
META_SOURCE = "shadowtape.source"
META_KEY_FINGERPRINT = "shadowtape.key_fingerprint"

KIND_EXCHANGES = "exchanges"
KIND_RESULTS = "results"
KIND_DIFFS = "diffs"
KIND_SERVED = "served"

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
    # A browser HAR entry whose response (or its body) came from the browser's cache, not the
    # server: `_fromCache`, or a 304 whose entry still holds the cached body.
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

# The baseline's answer to the same request (`replay --baseline`), sent under the same schedule
# as the candidate (the staging_* columns) with its own correlation state, so that diff can
# compare like with like. Beside the candidate's columns in the same row, rather than a row
# per side: the diff compares both in one pass over one row, a notebook compares two columns,
# and a reader that knows nothing of baselines still sees one row per replayed request with
# the staging_* columns meaning what they always did. In a replay_pass 2 row of a baseline run
# these columns hold the second baseline answer (the second baseline, or the baseline asked
# again for --noise-sample) and the candidate's columns are empty (outcome "skipped",
# skip_reason "baseline_only"). Null without a baseline.
_BASELINE_FIELDS = [
    pa.field("baseline_outcome", pa.string()),  # sent | skipped | failed
    pa.field("baseline_target_url", pa.string()),
    pa.field("baseline_span_id", pa.string()),
    pa.field("baseline_sent_at", TIMESTAMP),
    pa.field("baseline_first_byte_at", TIMESTAMP),
    pa.field("baseline_done_at", TIMESTAMP),
    pa.field("baseline_attempts", pa.int32()),
    pa.field("baseline_retries", pa.int32()),
    pa.field("baseline_status", pa.int32()),
    pa.field("baseline_reason", pa.string()),
    pa.field("baseline_http_version", pa.string()),
    pa.field("baseline_headers", NAME_VALUE_LIST),
    pa.field("baseline_body", BODY),
    pa.field("baseline_body_truncated", pa.bool_()),
    pa.field("baseline_error", pa.string()),
    pa.field("baseline_substitutions", pa.list_(SUBSTITUTION)),
]
BASELINE_COLUMNS = tuple(f.name for f in _BASELINE_FIELDS)

RESULT_SCHEMA = pa.schema(_EXCHANGE_FIELDS + _REPLAY_FIELDS + _BASELINE_FIELDS)

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
        # When the results have a baseline, the baseline's value (recorded_value is then null:
        # the comparison was baseline vs candidate, and the candidate's is staging_value).
        pa.field("baseline_value", pa.string()),
    ]
)

# One row per request a `shadowtape serve` double received: what was asked, which recorded
# exchange answered it and how well it matched, and what the double did on top (faults,
# latency), so a test run's use of a double can be audited and analysed like any dataset.
SERVED_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("run_id", pa.string()),
        pa.field("received_at", TIMESTAMP, nullable=False),
        pa.field("answered_at", TIMESTAMP),
        pa.field("method", pa.string(), nullable=False),
        pa.field("path", pa.string()),
        pa.field("query", NAME_VALUE_LIST),
        pa.field("request_headers", NAME_VALUE_LIST),  # credentials tokenized
        pa.field("request_body", BODY),
        pa.field("request_body_truncated", pa.bool_()),
        pa.field("route", pa.string()),
        pa.field("route_arrival", pa.int64()),  # 0-based arrival index on the route
        pa.field("outcome", pa.string()),  # matched | missed | fallback | held | reset
        pa.field("scope", pa.string()),  # session | route: which pool answered
        pa.field("matched_exchange_id", pa.string()),
        pa.field("matched_session_id", pa.string()),
        pa.field("score", pa.float64()),  # 1.0 = identical in every compared part
        pa.field("exhausted", pa.string()),  # cycle | repeat-last when the pool ran out
        pa.field("miss_reason", pa.string()),
        pa.field("closest_exchange_id", pa.string()),
        pa.field("closest_score", pa.float64()),
        pa.field("recorded_fault", pa.string()),  # reset | timeout, as recorded
        pa.field("injected_fault", pa.string()),  # error | timeout | reset, seeded
        pa.field("latency_applied_us", pa.int64()),
        pa.field("status", pa.int32()),  # what the client got; null if reset or held
        pa.field("response_bytes", pa.int64()),
        pa.field("error", pa.string()),  # what went wrong on the double's side
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    KIND_EXCHANGES: EXCHANGE_SCHEMA,
    KIND_RESULTS: RESULT_SCHEMA,
    KIND_DIFFS: DIFF_SCHEMA,
    KIND_SERVED: SERVED_SCHEMA,
}

# Columns a file of the current version may lack, because they joined version 2 before its
# release (results and diffs written without a baseline); they read as nulls, like the columns
# a version-1 file lacks.
OPTIONAL_COLUMNS: dict[str, frozenset[str]] = {
    KIND_RESULTS: frozenset(BASELINE_COLUMNS),
    KIND_DIFFS: frozenset({"baseline_value"}),
}
_FILLABLE = ADDED_IN_V2.union(*OPTIONAL_COLUMNS.values())

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
        elif f.name in _FILLABLE:
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


def capture_metadata(capture_id: str, source: str, key_fingerprint: str) -> dict[str, str]:
    """Metadata of a freshly recorded (so unsanitized) exchanges dataset: capture, import and
    serve's fallback recording all write it."""
    return {
        META_SANITIZED: "false",
        META_CAPTURE_ID: capture_id,
        META_SOURCE: source,
        META_KEY_FINGERPRINT: key_fingerprint,
    }


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
        optional = optional | OPTIONAL_COLUMNS.get(file_kind, frozenset())
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
            present = set(pf.schema_arrow.names)
            expected = SCHEMAS.get(info.kind)
            current = info.version >= SCHEMA_VERSION and (
                expected is None or present.issuperset(expected.names)
            )
            if wanted is not None and not current:
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


def check_sanitized(source: str, sanitized: bool, allow_unsanitized: bool) -> None:
    """Refuse unsanitized data unless asked: replay sends it to staging and serve answers
    tests with it, and either would spread real user data where it does not belong."""
    if sanitized or allow_unsanitized:
        return
    raise InputError(
        f"{source}: dataset is not sanitized; run `shadowtape sanitize {source} CLEAN` first, "
        "or pass --allow-unsanitized if it holds no real user data"
    )


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
        access: FileAccess | None = None,
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
        # Raw data (capture, import) is written owner-only; None leaves modes to the umask.
        self.access = access
        if access is not None:
            access.make_dirs(self.directory)
        else:
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
        if self.access is not None:
            self.access.create_file(self._tmp)  # the mode is set before the first byte
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
