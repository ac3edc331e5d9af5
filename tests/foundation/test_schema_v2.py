"""Schema version 2: wire bytes round-trip through Parquet, and version-1 datasets still read."""

from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowtape import schema
from shadowtape.errors import DatasetError
from shadowtape.http.headers import decode
from shadowtape.schema import (
    EXCHANGE_SCHEMA,
    RESULT_SCHEMA,
    DatasetWriter,
    Exchange,
    batch_to_exchanges,
    batch_to_rows,
    exchanges_to_batch,
    iter_batches,
    iter_exchanges,
    rows_to_batch,
)

LATIN1 = decode(b"Jos\xe9")  # "Jos" + an escaped byte 0xE9: not valid UTF-8
OBS_TEXT = decode(b"a\x80\xff b")


def _odd_exchange() -> Exchange:
    return Exchange(
        id="x1",
        session_id="s",
        seq=0,
        started_at=1_700_000_000_000_000,
        method="GET",
        host="shop.example",
        server_address="10.0.0.7:443",
        path="/p/a%2Fb",
        query=[("n", LATIN1), ("a", ""), (OBS_TEXT, "v")],
        request_target="/p/a%2Fb?n=" + decode(b"\xe9") + "&a&x=rY3NFD4=",
        request_headers=[("X-Name", LATIN1), ("X-Name", "José"), (OBS_TEXT, OBS_TEXT)],
        status=200,
        response_headers=[("Set-Cookie", "sid=" + decode(b"\xc3\x28"))],
        request_body_undecodable=True,
        response_from_cache=True,
    )


def test_non_utf8_header_bytes_round_trip_through_parquet(tmp_path: Path) -> None:
    ex = _odd_exchange()
    with DatasetWriter(tmp_path) as writer:
        writer.write_exchanges([ex])
    (back,) = list(iter_exchanges(tmp_path))
    assert back == ex
    # Other readers see display text (each odd byte as its latin-1 character) and the bytes.
    frame = pl.read_parquet(tmp_path / "*.parquet")
    first = frame["request_headers"][0].to_list()[0]
    assert first == {"name": "X-Name", "value": "José", "name_raw": None, "value_raw": b"Jos\xe9"}
    assert frame["request_headers"][0].to_list()[1]["value_raw"] is None
    assert frame["request_target"][0] == "/p/a%2Fb?n=é&a&x=rY3NFD4="
    assert frame["request_target_raw"][0] == b"/p/a%2Fb?n=\xe9&a&x=rY3NFD4="


def test_a_valid_utf8_target_has_no_raw_copy() -> None:
    ex = _odd_exchange()
    ex.request_target = "/p?q=é"
    batch = exchanges_to_batch([ex])
    assert batch.column("request_target").to_pylist() == ["/p?q=é"]
    assert batch.column("request_target_raw").to_pylist() == [None]


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.lists(st.tuples(st.binary(max_size=8), st.binary(max_size=8)), max_size=4)),
    st.binary(max_size=20),
)
def test_any_header_bytes_survive_batch_round_trips(rows, raw_target):
    records = []
    for i, fields in enumerate(rows):
        pairs = [(decode(k), decode(v)) for k, v in fields]
        records.append(
            Exchange(
                id=str(i),
                session_id="s",
                seq=i,
                started_at=i,
                method="GET",
                request_headers=pairs,
                query=pairs,
                request_target=decode(raw_target),
            )
        )
    assert batch_to_exchanges(exchanges_to_batch(records)) == records


def test_results_rows_round_trip_wire_text_and_fold_raw_columns() -> None:
    row = {
        "id": "x",
        "session_id": "s",
        "seq": 0,
        "started_at": 5,
        "method": "GET",
        "request_target": "/a?b=" + decode(b"\xff"),
        "request_headers": [("X", LATIN1)],
        "staging_headers": [("Y", OBS_TEXT)],
        "outcome": "sent",
        "target_url": "http://staging/a?b=" + decode(b"\xff"),  # no raw companion: display
    }
    batch = rows_to_batch([row, {**row, "staging_headers": None}], RESULT_SCHEMA)
    back = batch_to_rows(batch)
    assert "request_target_raw" not in back[0]
    assert back[0]["request_target"] == row["request_target"]
    assert back[0]["request_headers"] == row["request_headers"]
    assert back[0]["staging_headers"] == row["staging_headers"]
    assert back[1]["staging_headers"] == []
    assert back[0]["target_url"] == "http://staging/a?b=ÿ"


def test_one_odd_byte_in_a_plain_text_column_cannot_make_a_batch_unwritable() -> None:
    ex = _odd_exchange()
    ex.path = "/p/" + decode(b"\xe9")
    ex.reason = "O" + decode(b"\xcb")
    batch = exchanges_to_batch([ex])
    assert batch.column("path").to_pylist() == ["/p/é"]
    assert batch.column("reason").to_pylist() == ["OË"]


# --- version 1 ---------------------------------------------------------------------------------

# The version-1 exchange schema as it was written, kept here so the test does not depend on
# the code it checks.
_V1_NV = pa.list_(pa.struct([("name", pa.string()), ("value", pa.string())]))
_TS = pa.timestamp("us", tz="UTC")
V1_EXCHANGE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("session_id", pa.string(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("started_at", _TS, nullable=False),
        pa.field("request_sent_at", _TS),
        pa.field("response_started_at", _TS),
        pa.field("response_ended_at", _TS),
        pa.field("method", pa.string(), nullable=False),
        pa.field("scheme", pa.string()),
        pa.field("host", pa.string()),
        pa.field("port", pa.int32()),
        pa.field("path", pa.string()),
        pa.field("query", _V1_NV),
        pa.field("http_version", pa.string()),
        pa.field("request_headers", _V1_NV),
        pa.field("request_body", pa.large_binary()),
        pa.field("request_body_truncated", pa.bool_()),
        pa.field("request_body_size", pa.int64()),
        pa.field("status", pa.int32()),
        pa.field("reason", pa.string()),
        pa.field("response_headers", _V1_NV),
        pa.field("response_body", pa.large_binary()),
        pa.field("response_body_truncated", pa.bool_()),
        pa.field("response_body_size", pa.int64()),
        pa.field("error", pa.string()),
        pa.field("capture_id", pa.string()),
        pa.field("route", pa.string()),
    ]
)


def _v1_rows(n: int) -> list[dict]:
    return [
        {
            "id": f"id{i}",
            "session_id": "s",
            "seq": i,
            "started_at": 1_700_000_000_000_000 + i,
            "method": "GET",
            "scheme": "https",
            "host": "shop.example",
            "port": 443,
            "path": f"/items/{i}",
            "query": [{"name": "a", "value": "x y"}, {"name": "b", "value": ""}],
            "http_version": "HTTP/1.1",
            "request_headers": [{"name": "Accept", "value": "*/*"}] if i % 2 else None,
            "request_body": b"",
            "request_body_truncated": False,
            "request_body_size": 0,
            "status": 200,
            "response_headers": [],
            "response_body": b"{}",
            "response_body_truncated": False,
            "response_body_size": 2,
            "capture_id": "c",
        }
        for i in range(n)
    ]


def _write_v1(directory: Path, n: int = 5) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"shadowtape.schema_version": "1", "shadowtape.kind": "exchanges"}
    table = pa.Table.from_pylist(_v1_rows(n), schema=V1_EXCHANGE_SCHEMA.with_metadata(meta))
    path = directory / "part-000001.parquet"
    pq.write_table(table, path, row_group_size=2)
    return path


def test_a_version_1_dataset_reads_with_the_new_columns_as_nulls(tmp_path: Path) -> None:
    _write_v1(tmp_path)
    records = list(iter_exchanges(tmp_path))
    assert len(records) == 5
    first, second = records[0], records[1]
    assert first.query == [("a", "x y"), ("b", "")]
    assert first.request_headers == [] and second.request_headers == [("Accept", "*/*")]
    assert first.request_target is None and first.server_address is None
    assert first.request_body_undecodable is None and first.response_from_cache is None
    # Batches come in the current schema, whole or by column.
    for batch in iter_batches(tmp_path, schema.KIND_EXCHANGES):
        assert batch.schema.equals(EXCHANGE_SCHEMA)
    cols = ["id", "request_target", "query"]
    for batch in iter_batches(tmp_path, schema.KIND_EXCHANGES, columns=cols):
        assert batch.schema.names == cols
        assert batch.schema.field("query").type == schema.NAME_VALUE_LIST
        assert batch.column("request_target").null_count == batch.num_rows


def test_upgrade_of_a_v1_batch_and_a_v1_file_missing_a_v1_column(tmp_path: Path) -> None:
    path = _write_v1(tmp_path / "ok")
    table = pq.read_table(path)
    up = schema.upgrade(table)
    assert up.schema.equals(EXCHANGE_SCHEMA)
    assert batch_to_rows(up)[1]["request_headers"] == [("Accept", "*/*")]
    assert schema.upgrade(up) is up
    broken = table.drop_columns(["status"])
    pq.write_table(broken, tmp_path / "part-x.parquet")
    with pytest.raises(DatasetError, match="lacks columns status"):
        list(iter_exchanges(tmp_path / "part-x.parquet"))


def test_a_v2_file_lacking_a_v2_column_is_refused(tmp_path: Path) -> None:
    table = exchanges_to_batch([_odd_exchange()])
    meta = {"shadowtape.schema_version": "2", "shadowtape.kind": "exchanges"}
    t = pa.Table.from_batches([table]).drop_columns(["request_target"])
    pq.write_table(t.replace_schema_metadata(meta), tmp_path / "part-1.parquet")
    with pytest.raises(DatasetError, match="lacks columns request_target"):
        list(iter_exchanges(tmp_path))


def test_pairs_array_and_column_handle_nulls_and_slices() -> None:
    rows = [[("a", "1")], None, [], [("b", LATIN1), ("c", "3")]]
    arr = schema.pairs_array(rows)
    assert arr.type == schema.NAME_VALUE_LIST
    assert arr.null_count == 1
    assert schema.pairs_column(arr) == [[("a", "1")], [], [], [("b", LATIN1), ("c", "3")]]
    assert schema.pairs_column(arr.slice(3)) == [[("b", LATIN1), ("c", "3")]]
    chunked = pa.chunked_array([arr.slice(0, 2), arr.slice(2)])
    assert len(schema.pairs_column(chunked)) == 4
