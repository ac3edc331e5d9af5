"""Sanitize and the raw request target: rewritten to agree with the scrubbed path and query,
re-encoding only what changed; verify checks the target; version-1 inputs come out as v2."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from shadowtape import schema
from shadowtape.http.headers import decode, display
from shadowtape.http.target import query_pairs, split_target
from shadowtape.keyed import Key
from shadowtape.sanitize.pipeline import SanitizeConfig, sanitize_dataset
from shadowtape.sanitize.policy import default_policy, parse_policy
from shadowtape.sanitize.verify import verify_dataset

KEY = Key(b"raw-target-test-key-0123456789", "t")
EMAIL = "jane.roe@example.com"


def _exchange(i: int, target: str | None) -> schema.Exchange:
    path, raw_query = split_target(target or f"/users/{EMAIL}/orders?email={EMAIL}")
    return schema.Exchange(
        id=f"x{i}",
        session_id="s",
        seq=i,
        started_at=1_700_000_000_000_000 + i,
        method="GET",
        host="shop.example",
        path=path,
        query=query_pairs(raw_query),
        request_target=target,
        request_headers=[("X-Name", decode(b"Jos\xe9")), ("Accept", "*/*")],
        status=200,
        response_headers=[("Content-Type", "text/plain")],
        response_body=b"ok",
    )


def _write(directory: Path, records: list[schema.Exchange]) -> Path:
    with schema.DatasetWriter(directory) as writer:
        writer.write_exchanges(records)
    return directory


def test_the_target_is_rewritten_with_the_pairs_and_keeps_every_other_spelling(tmp_path):
    target = f"/users/{EMAIL}/orders?email=jane.roe%40example.com&keep=a,b&flag&sig=rY3NFD4="
    src = _write(tmp_path / "raw", [_exchange(0, target), _exchange(1, None)])
    out = tmp_path / "clean"
    sanitize_dataset(src, out, SanitizeConfig(default_policy(), KEY))
    rows = [r for b in schema.iter_batches(out) for r in schema.batch_to_rows(b)]
    with_target, without = rows
    clean = with_target["request_target"]
    assert EMAIL not in clean and "jane.roe%40example.com" not in clean
    path, raw_query = split_target(clean)
    assert path == with_target["path"] and "{" not in path
    assert query_pairs(raw_query) == with_target["query"]
    assert raw_query.endswith("&keep=a,b&flag&sig=rY3NFD4=")
    assert without["request_target"] is None
    # A kept header keeps its exact bytes through sanitize.
    assert with_target["request_headers"][0] == ("X-Name", decode(b"Jos\xe9"))
    assert verify_dataset(out, default_policy()).clean


def test_verify_reads_the_target_not_only_the_parsed_view(tmp_path):
    leaked = _exchange(0, f"/p?email={EMAIL}")
    leaked.query = [("email", "hidden")]  # a parsed view that disagrees with the target
    src = _write(tmp_path / "raw", [leaked])
    report = verify_dataset(src, default_policy(), allow_unsanitized=True)
    assert report.by_entity["EMAIL_ADDRESS"] >= 1
    assert any(f.field == "query:email" for f in report.findings)


def test_a_version_1_input_is_sanitized_into_version_2(tmp_path):
    src = _write(tmp_path / "v2", [_exchange(0, None)])
    (f,) = schema.dataset_files(src)
    table = pq.read_table(f)
    v1_pairs = pa.list_(schema.NAME_VALUE_V1)
    columns, fields = [], []
    for field in schema.EXCHANGE_SCHEMA:
        if field.name in schema.ADDED_IN_V2:
            continue
        col = table.column(field.name)
        if field.type == schema.NAME_VALUE_LIST:
            col = pa.chunked_array(
                [
                    pa.array(
                        [[(display(n), display(v)) for n, v in p] for p in schema.pairs_column(c)],
                        v1_pairs,
                    )
                    for c in col.chunks
                ]
            )
            field = field.with_type(v1_pairs)
        columns.append(col)
        fields.append(field)
    meta = {b"shadowtape.schema_version": b"1", b"shadowtape.kind": b"exchanges"}
    v1_dir = tmp_path / "v1"
    v1_dir.mkdir()
    pq.write_table(
        pa.Table.from_arrays(columns, schema=pa.schema(fields, meta)), v1_dir / "p.parquet"
    )
    out = tmp_path / "clean"
    policy = parse_policy("headers:\n  x-name: keep\n", "p.yaml")
    sanitize_dataset(v1_dir, out, SanitizeConfig(policy, KEY))
    (info,) = schema.read_files(out)
    assert info.version == schema.SCHEMA_VERSION
    (row,) = [r for b in schema.iter_batches(out) for r in schema.batch_to_rows(b)]
    assert row["request_target"] is None and row["response_from_cache"] is None
    assert EMAIL not in row["path"]
    assert pq.read_schema(info.path).field("query").type == schema.NAME_VALUE_LIST
