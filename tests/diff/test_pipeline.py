"""The diff over a results dataset made from real calls to two real services."""

import json

import polars as pl
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from shadowtape import schema
from shadowtape.cli import main
from shadowtape.diff.compare import CompareOptions
from shadowtape.diff.noise import load_pinned_rules
from shadowtape.diff.pipeline import DiffOptions, run_diff
from shadowtape.errors import DatasetError, InputError


def drift_set(out):
    frame = pl.read_parquet(sorted(str(p) for p in out.glob("*.parquet")))
    drift = frame.filter(pl.col("classification") == "drift")
    return frame, {tuple(r) for r in drift.select("route", "part", "location", "kind").rows()}


def test_planted_drift_is_found_exactly_and_noise_is_not_drift(planted, planted_results):
    summary = run_diff(planted_results)
    out = planted_results / "_diff"
    frame, found = drift_set(out)
    assert found == planted.EXPECTED_DRIFT
    # The planted noise is there, kept and marked, never drift.
    noise = frame.filter(pl.col("classification") == "noise")
    noise_paths = {tuple(r) for r in noise.select("route", "location").unique().rows()}
    for route, loc in [
        ("GET /users/{id}", "$.nonce"),
        ("GET /users/{id}", "$.trace"),
        ("GET /users/{id}", "$.generated_at"),
        ("GET /search", "$.nonce"),
        ("GET /pages/about", "line 4"),
        ("GET /catalog", "$.server_time"),
        ("GET /orders/{uuid}", "etag"),
    ]:
        assert (route, loc) in noise_paths
    reasons = dict(noise.select("location", "reason").unique("location").rows())
    assert "same request" in reasons["$.nonce"]
    assert reasons["$.trace"] == "uuid"
    assert reasons["$.generated_at"] == "timestamp near the exchange"
    # Each drifting row says which element it came from.
    prices = frame.filter(pl.col("location") == "$.items[*].price")
    assert set(prices["raw_location"]) == {"$.items[0].price", "$.items[1].price"}
    # Nothing lost silently: rows not sent are counted, not diffed.
    totals = summary.payload["totals"]
    assert (totals["skipped"], totals["failed"], totals["compared"]) == (2, 1, 60)
    assert totals["unmatched_samples"] == 0
    assert totals["noise_pairs"] > 0
    assert totals["drift_paths"] == len(planted.EXPECTED_DRIFT)
    routes = {r["route"]: r for r in summary.payload["routes"]}
    assert routes["GET /reports/{id}"]["status_mismatch"] == 6
    assert routes["GET /search"]["drift_requests"] == 0
    assert routes["GET /search"]["noise_only_requests"] == 10
    assert routes["POST /orders"]["skipped"] == 2
    assert routes["GET /users/{id}"]["failed"] == 1
    slow = routes["GET /search"]
    assert slow["p50_ms"]["staging"] > 1.5 * slow["p50_ms"]["recorded"]
    assert slow["latency"]["baseline"] == {}
    # No baseline in these results: the summary says what was compared.
    assert summary.payload["version"] == 2
    assert summary.payload["comparison"]["reference"] == "recorded"
    assert summary.payload["comparison"]["label"] == "recorded vs target"
    # The diff dataset is a proper shadowtape dataset, and the results reader skips it.
    assert schema.read_files(out, schema.KIND_DIFFS)
    assert all("_diff" not in str(f) for f in schema.dataset_files(planted_results))


def test_same_input_gives_byte_identical_output(planted_results, tmp_path):
    run_diff(planted_results, tmp_path / "a")
    run_diff(planted_results, tmp_path / "b")
    for name in ("diff-000001.parquet", "summary.json"):
        a, b = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
        assert a == b


def test_pinned_rules_and_key_fields_apply(planted_results, tmp_path):
    rules = tmp_path / "ignore.yaml"
    rules.write_text("ignore: [$.name]\nnoise: [{path: $.total, route: 'GET /orders/{uuid}'}]\n")
    options = DiffOptions(
        compare=CompareOptions(key_fields=("sku",)), pinned=load_pinned_rules(rules)
    )
    run_diff(planted_results, tmp_path / "d", options)
    frame, found = drift_set(tmp_path / "d")
    assert ("GET /users/{id}", "body", "$.name", "removed") not in found
    assert ("GET /orders/{uuid}", "body", "$.total", "type_changed") not in found
    ignored = frame.filter(pl.col("classification") == "ignored")
    assert set(ignored["location"]) == {"$.name"}
    prices = frame.filter(pl.col("location") == "$.items[*].price")
    assert set(prices["raw_location"]) == {"$.items[sku=A-1].price", "$.items[sku=B-2].price"}


def test_a_second_run_replaces_the_first(planted_results):
    run_diff(planted_results)
    marker = planted_results / "_diff" / "diff-000001.parquet"
    first = marker.stat().st_mtime_ns
    run_diff(planted_results)
    assert marker.stat().st_mtime_ns >= first
    assert len(list((planted_results / "_diff").glob("*.parquet"))) == 1


def test_bad_results_leave_no_output(planted_results, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "part-000001.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DatasetError, match="not a readable Parquet file"):
        run_diff(bad)
    assert not (bad / "_diff").exists()
    assert [p.name for p in bad.iterdir()] == ["part-000001.parquet"]
    # An exchanges dataset is not a results dataset.
    ex = tmp_path / "exchanges"
    with schema.DatasetWriter(ex, schema.KIND_EXCHANGES) as w:
        w.write_rows([{"id": "1", "session_id": "s", "seq": 0, "started_at": 0, "method": "GET"}])
    with pytest.raises(DatasetError, match="expected results"):
        run_diff(ex)


def test_output_inside_results_must_be_hidden(planted_results):
    with pytest.raises(InputError, match="inside the results dataset"):
        run_diff(planted_results, planted_results / "diffs")


def test_output_over_a_foreign_directory_is_refused(planted_results, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a shadowtape diff"):
        run_diff(planted_results, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_row_groups_stream_through_with_small_batches(planted_results, tmp_path):
    run_diff(planted_results, tmp_path / "small", DiffOptions(row_group_rows=7))
    meta = pq.ParquetFile(tmp_path / "small" / "diff-000001.parquet").metadata
    assert meta.num_row_groups > 1
    frame, found = drift_set(tmp_path / "small")
    run_diff(planted_results, tmp_path / "big")
    assert found == drift_set(tmp_path / "big")[1]


def test_cli_diff_prints_counts_and_errors_are_one_line(planted_results, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["diff", str(planted_results), "--key-field", "sku"])
    assert result.exit_code == 0, result.output
    assert "60 requests compared" in result.output
    assert "9 drift" in result.output and "2 skipped, 1 failed" in result.output
    summary = json.loads((planted_results / "_diff" / "summary.json").read_text())
    assert summary["options"]["key_fields"] == ["sku"]

    bad = tmp_path / "ignore.yaml"
    bad.write_text("skip: [$.a]\n")
    result = runner.invoke(main, ["diff", str(planted_results), "--ignore-file", str(bad)])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "shadowtape: error:" in result.output
    result = runner.invoke(main, ["diff", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no such dataset" in result.output
    result = runner.invoke(main, ["diff", str(planted_results), "--min-contrast", "2"])
    assert result.exit_code == 2 and "between 0 and 1" in result.output


def test_cli_diff_help_has_an_example():
    result = CliRunner().invoke(main, ["diff", "--help"])
    assert result.exit_code == 0 and "Example:" in result.output


def _row(i, **extra):
    base = {
        "id": f"ex-{i}", "session_id": "s", "seq": i, "started_at": 1_795_000_000_000_000,
        "method": "GET", "path": f"/things/{i}", "status": 200, "outcome": "sent",
        "replay_pass": 1, "response_headers": [("content-type", "application/json")],
        "response_body": b'{"a": 1}', "staging_status": 200,
        "staging_headers": [("content-type", "application/json")], "staging_body": b'{"a": 1}',
    }  # fmt: skip
    base.update(extra)
    return base


def test_edge_rows_are_counted_not_lost(tmp_path):
    rows = [
        _row(0),
        _row(1, status=None, error="upstream reset"),  # the recording has no response
        _row(2, staging_body=b'{"a": 1', staging_body_truncated=True),
        _row(3, response_headers=[("content-encoding", "gzip")], response_body=b"not gzip"),
        _row(4, replay_pass=2),  # a second send whose first never made it into the results
        _row(5, outcome="failed", staging_status=None, staging_error="timeout"),
    ]
    results = tmp_path / "results"
    with schema.DatasetWriter(results, schema.KIND_RESULTS) as w:
        w.write_rows(rows)
    totals = run_diff(results).payload["totals"]
    assert totals["compared"] == 3
    assert totals["not_compared"] == 1
    assert totals["failed"] == 1
    assert totals["body_undecodable"] == 1
    assert totals["unmatched_samples"] == 1
    route = json.loads((results / "_diff" / "summary.json").read_text())["routes"][0]
    assert route["body_skipped"] == {"body truncated": 1}
    result = CliRunner().invoke(main, ["report", str(results)])
    assert "1 without a recorded response" in result.output
    assert "1 recorded bodies that did not decode" in result.output
    assert "1 noise samples without their twin" in result.output
    assert "1 truncated bodies" in result.output
