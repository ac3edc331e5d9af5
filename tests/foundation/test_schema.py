"""The dataset layer: round trips, rolling, atomic finalize, and clear errors on bad files."""

from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shadowtape.errors import DatasetError
from shadowtape.schema import (
    SCHEMA_VERSION,
    DatasetWriter,
    Exchange,
    RollPolicy,
    dataset_files,
    dataset_metadata,
    iter_exchanges,
    uuid7,
)


def _exchange(i: int) -> Exchange:
    return Exchange(
        id=uuid7(1_700_000_000_000_000 + i, bytes(10)),
        session_id=f"s{i % 3}",
        seq=i,
        started_at=1_700_000_000_000_000 + i,
        method="POST",
        host="api.example",
        port=443,
        path=f"/items/{i}",
        query=[("a", "1"), ("b", "2"), ("a", "3")],
        request_headers=[("X-Dup", "1"), ("X-Dup", "2")],
        request_body=bytes(range(256)),
        status=200,
        response_body=b"\x00\xff\xfe",
    )


def test_round_trip_keeps_order_duplicates_and_binary(tmp_path: Path) -> None:
    records = [_exchange(i) for i in range(25)]
    with DatasetWriter(tmp_path, roll=RollPolicy(max_rows=10, row_group_rows=4)) as writer:
        writer.write_exchanges(records)
    assert len(dataset_files(tmp_path)) == 3
    assert list(iter_exchanges(tmp_path)) == records
    frame = pl.read_parquet(tmp_path / "*.parquet")
    assert frame.height == 25
    # Any Arrow reader sees plain name/value strings; the raw bytes fields are null for text
    # that is valid UTF-8 (see test_schema_v2 for the other case).
    assert frame["query"][0].to_list()[2] == {
        "name": "a",
        "value": "3",
        "name_raw": None,
        "value_raw": None,
    }


def test_metadata_carries_version_and_extra(tmp_path: Path) -> None:
    with DatasetWriter(tmp_path, metadata={"shadowtape.capture_id": "c1"}) as writer:
        writer.write_exchanges([_exchange(0)])
        writer.set_file_metadata({"shadowtape.dropped": "7"})
    meta = dataset_metadata(tmp_path)
    assert meta["shadowtape.schema_version"] == str(SCHEMA_VERSION)
    assert meta["shadowtape.capture_id"] == "c1"
    assert meta["shadowtape.dropped"] == "7"
    assert meta["shadowtape.sanitized"] == "false"


def test_unfinished_file_is_invisible_and_abort_removes_it(tmp_path: Path) -> None:
    writer = DatasetWriter(tmp_path, roll=RollPolicy(row_group_rows=1))
    writer.write_exchanges([_exchange(0)])
    assert dataset_files(tmp_path) == []
    assert any(p.name.startswith(".") for p in tmp_path.iterdir())
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_truncated_file_is_named(tmp_path: Path) -> None:
    with DatasetWriter(tmp_path) as writer:
        writer.write_exchanges([_exchange(0)])
    (f,) = dataset_files(tmp_path)
    f.write_bytes(f.read_bytes()[:50])
    with pytest.raises(DatasetError, match=f.name):
        list(iter_exchanges(tmp_path))


def test_foreign_parquet_and_newer_version_are_refused(tmp_path: Path) -> None:
    pq.write_table(pa.table({"x": [1]}), tmp_path / "foreign.parquet")
    with pytest.raises(DatasetError, match="not a shadowtape dataset"):
        list(iter_exchanges(tmp_path))
    (tmp_path / "foreign.parquet").unlink()
    with DatasetWriter(tmp_path, metadata={"shadowtape.schema_version": "99"}) as writer:
        writer.write_exchanges([_exchange(0)])
    with pytest.raises(DatasetError, match="upgrade shadowtape"):
        list(iter_exchanges(tmp_path))


def test_missing_dataset_is_clear(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such dataset"):
        dataset_files(tmp_path / "nope")


def test_uuid7_sorts_by_time() -> None:
    ids = [uuid7(t, bytes(10)) for t in (1, 1000, 1001, 2_000_000)]
    assert ids == sorted(ids)
    assert ids[0][14] == "7"


def test_roll_interval_runs_from_first_row_of_each_file(tmp_path: Path) -> None:
    now = [100.0]
    writer = DatasetWriter(
        tmp_path, roll=RollPolicy(max_seconds=10, row_group_rows=1), clock=lambda: now[0]
    )
    now[0] = 500.0  # a writer idle for long must not roll its next file at once
    assert not writer.due()
    writer.write_exchanges([_exchange(0)])
    now[0] = 505.0
    assert not writer.due()
    now[0] = 510.0
    assert writer.due()
    writer.finalize_file()
    assert not writer.due()
    writer.close()
