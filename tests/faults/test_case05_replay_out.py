"""Case 5: `replay --out` never writes into a directory holding another dataset (a raw
capture would be polluted, and read back with rows counted twice); --overwrite replaces only
the earlier run's results files."""

from __future__ import annotations

import json

import faultkit


def test_replay_refuses_an_out_dir_that_holds_a_capture(tmp_path, staging):
    clean = faultkit.sanitized_dataset(tmp_path / "clean")
    raw = faultkit.raw_dataset(tmp_path / "raw", rows=7)
    before = sorted(p.name for p in raw.iterdir())
    for extra in ((), ("--overwrite",)):
        result = faultkit.run_inprocess(
            "replay", clean, "--target", staging.url, "--out", raw, "--speed", "max", *extra
        )
        assert result.exit_code == 2, result.output
        faultkit.assert_one_line(result.stderr, "--out", "dataset of exchanges")
    assert staging.received == []
    assert sorted(p.name for p in raw.iterdir()) == before
    report = json.loads(faultkit.run_inprocess("inspect", raw, "--json").stdout)
    assert report["rows"] == 7


def test_overwrite_replaces_only_earlier_results(tmp_path, staging):
    clean = faultkit.sanitized_dataset(tmp_path / "clean", rows=5)
    out = tmp_path / "results"
    args = ("replay", clean, "--target", staging.url, "--out", out, "--speed", "max")
    assert faultkit.run_inprocess(*args).exit_code == 0
    assert faultkit.run_inprocess("diff", out).exit_code == 0  # RESULTS/_diff, hidden
    again = faultkit.run_inprocess(*args)
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    assert faultkit.run_inprocess(*args, "--overwrite").exit_code == 0
    rows = faultkit.schema.read_files(out, "results")
    assert sum(i.num_rows for i in rows) == 5
    (out / "notes.txt").write_text("mine")
    refused = faultkit.run_inprocess(*args, "--overwrite")
    assert refused.exit_code == 2 and "holds notes.txt" in refused.stderr
    assert (out / "notes.txt").read_text() == "mine"
