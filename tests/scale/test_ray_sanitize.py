"""`sanitize --engine ray`: the same per-unit function on Ray Data gives the local engine's
output byte for byte (files, row groups, manifest), and failures stay one clear line."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq
from click.testing import CliRunner

from shadowtape.cli import main
from shadowtape.keyed import DEFAULT_KEY_ENV, Key
from shadowtape.ray_session import MISSING_RAY
from shadowtape.sanitize.pipeline import SanitizeConfig, sanitize_dataset
from shadowtape.sanitize.policy import default_policy

TEST_KEY = "shadowtape-test-key-0123456789abcdef"  # the key the corpus' tokens were made with


def _cli(*args: str) -> object:
    env = {"SHADOWTAPE_NO_CONFIG": "1", DEFAULT_KEY_ENV: TEST_KEY}
    return CliRunner().invoke(main, list(args), env=env)


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_ray_output_is_byte_identical_to_local(ray_instance, raw_corpus, tmp_path: Path) -> None:
    config = SanitizeConfig(default_policy(), Key(TEST_KEY.encode(), "t"))
    local = sanitize_dataset(raw_corpus.path, tmp_path / "local", config)
    result = _cli(
        "sanitize", str(raw_corpus.path), str(tmp_path / "ray"), "--engine", "ray", "--workers", "2"
    )
    assert result.exit_code == 0, result.output
    assert f"sanitized {local.rows:,} exchanges" in result.output
    assert "engine ray" in result.output
    ray_tree, local_tree = _tree(tmp_path / "ray"), _tree(tmp_path / "local")
    # Several files of several row groups: the order of units really was at stake.
    assert len([n for n in local_tree if n.endswith(".parquet")]) > 1
    assert (
        sum(
            pq.ParquetFile(tmp_path / "local" / n).num_row_groups
            for n in local_tree
            if n.endswith(".parquet")
        )
        > 2
    )
    assert ray_tree.keys() == local_tree.keys()
    assert [n for n in ray_tree if ray_tree[n] != local_tree[n]] == []


def test_unreadable_row_group_is_one_line_and_no_output(
    ray_instance, raw_corpus, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    first = sorted(raw_corpus.path.glob("*.parquet"))[0]
    data = bytearray(first.read_bytes())
    meta = pq.ParquetFile(first).metadata
    column = meta.row_group(0).column(meta.num_columns - 3)
    start = column.data_page_offset
    # Garbage over one column chunk of the first row group; the footer stays readable, so the
    # damage is found only when a worker reads that row group.
    data[start : start + column.total_compressed_size] = b"\xff" * column.total_compressed_size
    (broken / first.name).write_bytes(bytes(data))
    out = tmp_path / "out"
    result = _cli("sanitize", str(broken), str(out), "--engine", "ray")
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("shadowtape: error:")]
    assert len(errors) == 1 and "row group" in errors[0] and first.name in errors[0]
    assert "Traceback" not in result.output
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_missing_ray_extra_is_one_line(raw_corpus, tmp_path: Path, monkeypatch) -> None:
    # A None entry makes `import ray` fail as it does where the extra is not installed.
    monkeypatch.setitem(sys.modules, "ray", None)
    result = _cli("sanitize", str(raw_corpus.path), str(tmp_path / "out"), "--engine", "ray")
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == f"shadowtape: error: {MISSING_RAY}"
    assert not (tmp_path / "out").exists()


def test_address_needs_the_ray_engine(raw_corpus, tmp_path: Path) -> None:
    result = _cli("sanitize", str(raw_corpus.path), str(tmp_path / "out"), "--address", "x:6379")
    assert result.exit_code == 2
    assert "--engine ray" in result.output
    assert not (tmp_path / "out").exists()
