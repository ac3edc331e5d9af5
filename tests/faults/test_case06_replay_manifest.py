"""Case 6 (replay's side): replay refuses a dataset flagged sanitized whose `_manifest.json`
is missing, or does not list exactly its files with their row counts, unless told otherwise
(--allow-unsanitized). Verify's manifest check belongs to the sanitize stage (issue 12)."""

from __future__ import annotations

import shutil

import faultkit
import pytest


@pytest.fixture
def clean(tmp_path):
    return faultkit.sanitized_dataset(tmp_path / "clean", rows=20, file_rows=10)


def _replay(clean, staging, tmp_path, *extra):
    return faultkit.run_inprocess(
        "replay", clean, "--target", staging.url, "--out", tmp_path / "results",
        "--speed", "max", *extra,
    )  # fmt: skip


def test_intact_dataset_replays(clean, staging, tmp_path):
    assert _replay(clean, staging, tmp_path).exit_code == 0
    assert len(staging.received) == 20


def test_missing_manifest_is_refused(clean, staging, tmp_path):
    (clean / "_manifest.json").unlink()
    result = _replay(clean, staging, tmp_path)
    assert result.exit_code == 2
    faultkit.assert_one_line(result.stderr, "no _manifest.json", "--allow-unsanitized")
    assert staging.received == [] and not (tmp_path / "results").exists()
    assert _replay(clean, staging, tmp_path, "--allow-unsanitized").exit_code == 0


def test_a_listed_file_that_is_gone_is_refused(clean, staging, tmp_path):
    files = sorted(clean.glob("*.parquet"))
    assert len(files) == 2
    files[1].unlink()
    result = _replay(clean, staging, tmp_path)
    assert result.exit_code == 2
    faultkit.assert_one_line(result.stderr, f"lists {files[1].name}, which is missing")
    assert staging.received == []


def test_a_file_not_in_the_manifest_is_refused(clean, staging, tmp_path):
    stray = faultkit.sanitized_dataset(tmp_path / "stray", rows=3)
    shutil.copy(next(stray.glob("*.parquet")), clean / "part-999999.parquet")
    result = _replay(clean, staging, tmp_path)
    assert result.exit_code == 2
    faultkit.assert_one_line(result.stderr, "part-999999.parquet is not in _manifest.json")


def test_a_replaced_file_is_refused(clean, staging, tmp_path):
    other = faultkit.sanitized_dataset(tmp_path / "other", rows=4)
    target = sorted(clean.glob("*.parquet"))[0]
    shutil.copy(next(other.glob("*.parquet")), target)
    result = _replay(clean, staging, tmp_path)
    assert result.exit_code == 2
    faultkit.assert_one_line(result.stderr, f"{target.name} has 4 rows", "says 10")
    assert staging.received == []


def test_a_file_swapped_for_one_of_the_same_size_is_refused(clean, staging, tmp_path):
    twin = faultkit.sanitized_dataset(tmp_path / "twin", rows=20, file_rows=10)
    target = sorted(clean.glob("*.parquet"))[0]
    other = sorted(twin.glob("*.parquet"))[1]  # same rows and row groups, other rows
    shutil.copy(other, target)
    result = _replay(clean, staging, tmp_path)
    assert result.exit_code == 2
    faultkit.assert_one_line(result.stderr, f"{target.name} is not the file sanitize wrote")
    assert staging.received == []
