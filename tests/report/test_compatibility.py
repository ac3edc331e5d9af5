"""Results and summaries from before baselines still read: results without the baseline_*
columns (older version-2 files, version-1 files) diff and report as they did, and a diff
summary is read by its version, a missing field an error rather than a silent 0."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from shadowtape import schema
from shadowtape.cli import main
from shadowtape.diff.pipeline import run_diff
from shadowtape.errors import DatasetError
from shadowtape.report.aggregate import load_report

_V1_NV = pa.list_(pa.struct([("name", pa.string()), ("value", pa.string())]))


def _rewrite(results: Path, out: Path, *, version: int) -> Path:
    """The same results as an older writer would have left them: without the baseline
    columns (version 2 before baselines), or as version 1 (no v2 columns, narrow pairs)."""
    out.mkdir(parents=True)
    for f in schema.dataset_files(results):
        table = pq.read_table(f)
        drop = set(schema.BASELINE_COLUMNS)
        if version == 1:
            drop |= schema.ADDED_IN_V2
        table = table.drop_columns([c for c in table.column_names if c in drop])
        if version == 1:
            for i, field in enumerate(table.schema):
                if field.type == schema.NAME_VALUE_LIST:
                    narrow = pa.array(
                        [
                            None if v is None else [(e["name"], e["value"]) for e in v]
                            for v in table.column(i).to_pylist()
                        ],
                        _V1_NV,
                    )
                    table = table.set_column(i, pa.field(field.name, _V1_NV), narrow)
        meta = dict(pq.read_metadata(f).metadata or {})
        meta[b"shadowtape.schema_version"] = str(version).encode()
        pq.write_table(table.replace_schema_metadata(meta), out / f.name, row_group_size=25)
    return out


def _comparable(payload: dict) -> dict:
    return {k: v for k, v in payload.items() if k not in ("results", "results_files")}


@pytest.mark.parametrize("version", [2, 1])
def test_results_without_baseline_columns_diff_and_report_as_before(
    diffed, tmp_path: Path, version: int
) -> None:
    current = json.loads((diffed / "_diff" / "summary.json").read_text())
    older = _rewrite(diffed, tmp_path / f"v{version}", version=version)
    assert "baseline_status" not in pq.read_schema(next(older.glob("*.parquet"))).names
    # Reads go through the one schema layer: the missing columns come as nulls.
    for batch in schema.iter_batches(older, schema.KIND_RESULTS):
        assert batch.schema.names == schema.RESULT_SCHEMA.names
        assert batch.column("baseline_outcome").null_count == batch.num_rows
    summary = run_diff(older)
    assert summary.comparison["reference"] == "recorded"
    assert _comparable(summary.payload) == _comparable(current)
    done = CliRunner().invoke(main, ["report", str(older), "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert report["comparison"]["label"] == "recorded vs target"
    assert report["latency"] == []  # no baseline: latency is context, never a finding


def _summary(diffed: Path) -> dict:
    return json.loads((diffed / "_diff" / "summary.json").read_text())


def _write_summary(diffed: Path, payload: dict) -> None:
    (diffed / "_diff" / "summary.json").write_text(json.dumps(payload))


def test_a_version_1_summary_reads_with_its_own_field_names(diffed) -> None:
    new = load_report(diffed / "_diff")
    payload = _summary(diffed)
    # What version 1 wrote: no comparison, histograms under latency_recorded/latency_staging.
    payload["version"] = 1
    del payload["comparison"]
    for route in payload["routes"]:
        latency = route.pop("latency")
        route["latency_recorded"] = latency["recorded"]
        route["latency_staging"] = latency["staging"]
        for key in ("server_errors", "baseline_errors", "p50_ms", "p95_ms", "p99_ms"):
            del route[key]
    _write_summary(diffed, payload)
    old = load_report(diffed / "_diff")
    assert old.summary_version == 1 and old.comparison.label == "recorded vs target"
    measured = 0
    for a, b in zip(old.routes, new.routes, strict=True):
        assert a.route == b.route
        assert a.latency_ms("staging", 0.5) == b.latency_ms("staging", 0.5)
        assert a.latency_ms("recorded", 0.95) == b.latency_ms("recorded", 0.95)
        assert a.latency_ratio(0.99) == b.latency_ratio(0.99)
        measured += a.latency_ms("staging", 0.5) is not None
        # Version 1 counted staging 5xx with failed sends: the 5xx are what is left.
        assert a.server_errors == b.server_errors
    assert measured == len(new.routes) - 1  # all but the route whose rows were skipped


def test_unknown_versions_and_missing_fields_are_errors_not_zeros(diffed) -> None:
    payload = _summary(diffed)
    _write_summary(diffed, {**payload, "version": 3})
    with pytest.raises(DatasetError, match="diff summary version 3; this shadowtape reads"):
        load_report(diffed / "_diff")
    renamed = json.loads(json.dumps(payload))
    renamed["routes"][0]["latency_staging"] = renamed["routes"][0].pop("latency")
    _write_summary(diffed, renamed)
    with pytest.raises(DatasetError, match="no 'latency'; the summary is incomplete"):
        load_report(diffed / "_diff")
    done = CliRunner().invoke(main, ["report", str(diffed)])
    assert done.exit_code == 2
    assert done.output.count("\n") == 1 and "rerun `shadowtape diff`" in done.output


def test_a_diff_without_baseline_values_still_gives_examples(diffed) -> None:
    """Diff datasets written before baseline_value existed."""
    for f in (diffed / "_diff").glob("*.parquet"):
        table = pq.read_table(f)
        pq.write_table(table.drop_columns(["baseline_value"]), f)
    assert schema.read_files(diffed / "_diff", schema.KIND_DIFFS)
    data = load_report(diffed / "_diff")
    total = next(p for p in data.paths if p.location == "$.total")
    assert total.examples and total.examples[0].recorded == "6.0"
