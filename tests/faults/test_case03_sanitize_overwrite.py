"""Case 3: `sanitize --overwrite` replaces OUT only when OUT holds an earlier sanitize output;
a source tree, a raw capture or any file it did not write is refused with one line and left
exactly as it was."""

from __future__ import annotations

import faultkit
import pytest

from shadowtape import schema


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory):
    return faultkit.raw_dataset(tmp_path_factory.mktemp("in") / "raw")


def _tree(root):
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_a_source_tree_is_never_deleted(raw, tmp_path):
    out = tmp_path / "project"
    (out / "src").mkdir(parents=True)
    (out / "README.md").write_text("# my project\n")
    (out / "src" / "main.py").write_text("print('hello')\n")
    before = _tree(out)
    result = faultkit.run_inprocess("sanitize", raw, out, "--overwrite")
    assert result.exit_code == 2
    faultkit.assert_one_line(result.stderr, "holds README.md", "shadowtape replaces only")
    assert _tree(out) == before


def test_a_raw_capture_is_never_replaced(raw, tmp_path):
    other = faultkit.raw_dataset(tmp_path / "other-capture")
    before = _tree(other)
    result = faultkit.run_inprocess("sanitize", raw, other, "--overwrite")
    assert result.exit_code == 2
    faultkit.assert_one_line(result.stderr, "an unsanitized exchanges dataset")
    assert _tree(other) == before


def test_a_parquet_file_of_another_tool_is_not_ours(raw, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "lake"
    out.mkdir()
    pq.write_table(pa.table({"x": [1, 2]}), out / "data.parquet")
    result = faultkit.run_inprocess("sanitize", raw, out, "--overwrite")
    assert result.exit_code == 2
    faultkit.assert_one_line(result.stderr, "data.parquet", "not a shadowtape dataset file")
    assert (out / "data.parquet").exists()


def test_its_own_earlier_output_is_replaced_whole(raw, tmp_path):
    out = tmp_path / "clean"
    assert faultkit.run_inprocess("sanitize", raw, out).exit_code == 0
    first = _tree(out)
    result = faultkit.run_inprocess("sanitize", raw, out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert _tree(out) == first  # deterministic, and nothing of the old one is left over
    assert schema.is_sanitized(out)
    assert [p.name for p in tmp_path.iterdir()] == ["clean"]  # no temporary left beside it
