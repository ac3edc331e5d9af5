"""Case 2: `report` never reuses a diff made with other diff options (a CI gate's verdict must
not depend on leftover state), and a missing --ignore-file is bad input (exit 2)."""

from __future__ import annotations

import json

import faultkit


def _drift_paths(*args: object) -> int:
    result = faultkit.run_inprocess("report", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["totals"]["drift_paths"]


def test_report_recomputes_the_diff_when_its_options_differ(tmp_path):
    results = faultkit.results_dataset(tmp_path / "results")
    ignore = tmp_path / "ignore.yaml"
    ignore.write_text('ignore:\n  - "$.name"\n  - "$.full_name"\n')
    assert _drift_paths(results) == 3  # computes RESULTS/_diff with no pinned rules
    assert _drift_paths(results, "--ignore-file", ignore) == 1
    assert _drift_paths(results) == 3  # and back: the ignore file no longer applies
    assert _drift_paths(results, "--key-field", "id", "--ignore-file", ignore) == 1


def test_an_up_to_date_diff_with_the_same_options_is_reused(tmp_path):
    results = faultkit.results_dataset(tmp_path / "results")
    first = faultkit.run_inprocess("report", results)
    assert "running diff" in first.stderr
    again = faultkit.run_inprocess("report", results)
    assert again.exit_code == 0 and "running diff" not in again.stderr


def test_missing_ignore_file_is_exit_2_even_with_a_diff_present(tmp_path):
    results = faultkit.results_dataset(tmp_path / "results")
    assert faultkit.run_inprocess("report", results).exit_code == 0
    for command in ("report", "diff"):
        result = faultkit.run_inprocess(command, results, "--ignore-file", tmp_path / "nope.yaml")
        assert result.exit_code == 2, result.output
        assert "nope.yaml" in result.stderr and "does not exist" in result.stderr
