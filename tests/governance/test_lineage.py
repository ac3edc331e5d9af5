"""Dataset fingerprints (cheap, stable across copies, moved by any change) and the lineage
each stage writes into its output, shown by `inspect` as raw -> clean -> results."""

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
from gov_har import write_har
from replay_testkit import exchange, write_dataset

from shadowtape.governance.fingerprint import dataset_fingerprint
from shadowtape.schema import dataset_files


def test_fingerprint_is_stable_across_copies_and_moves_with_any_change(tmp_path: Path) -> None:
    a = write_dataset(tmp_path / "a", [exchange("s1", i, i) for i in range(5)])
    fp = dataset_fingerprint(a)
    assert fp.fingerprint.startswith("sha256:") and fp.rows == 5 and fp.files == 1
    b = tmp_path / "elsewhere" / "b"
    shutil.copytree(a, b)
    assert dataset_fingerprint(b).fingerprint == fp.fingerprint
    # One changed value in the data: a new file with the same rows but one status differing.
    c = write_dataset(
        tmp_path / "c", [exchange("s1", i, i, status=200 + (i == 3)) for i in range(5)]
    )
    (c_file,) = dataset_files(c)
    (a_file,) = dataset_files(a)
    shutil.copy(c_file, b / a_file.name)  # same name, same size class, other content
    assert dataset_fingerprint(b).fingerprint != fp.fingerprint
    shutil.copytree(a, tmp_path / "d")
    shutil.copy(a_file, tmp_path / "d" / "part-000099.parquet")  # one file more
    assert dataset_fingerprint(tmp_path / "d").fingerprint != fp.fingerprint
    # Hidden work files (.tmp, _diff/) are not part of the dataset.
    (b / ".part-000002.parquet.tmp").write_bytes(b"half")
    shutil.copytree(a, tmp_path / "e")
    (tmp_path / "e" / ".x.tmp").write_bytes(b"half")
    assert dataset_fingerprint(tmp_path / "e").fingerprint == fp.fingerprint


def test_fingerprint_reads_footers_not_data(tmp_path: Path) -> None:
    """Cheap on big datasets: corrupting a data page (not the footer) is not even read."""
    a = write_dataset(
        tmp_path / "a", [exchange("s1", i, i, response_body=b"x" * 5000) for i in range(50)]
    )
    (f,) = dataset_files(a)
    before = dataset_fingerprint(a).fingerprint
    data = bytearray(f.read_bytes())
    data[100] ^= 0xFF  # inside the first data page
    f.write_bytes(bytes(data))
    assert (
        dataset_fingerprint(a).fingerprint == before
    )  # the documented limit: identity, not a seal
    assert pq.ParquetFile(f).metadata.num_rows == 50


def test_each_stage_records_where_its_data_came_from(tmp_path: Path, cli, staging) -> None:
    har = write_har(tmp_path / "s.har")
    raw, clean, results = tmp_path / "raw", tmp_path / "clean", tmp_path / "results"
    assert cli("import", har, "--out", raw).exit_code == 0
    assert cli("sanitize", raw, clean).exit_code == 0
    result = cli(
        "replay", clean, "--target", staging.url, "--out", results, "--speed", "max",
        "--rewrite", f"shop.example.com={staging.url}",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert cli("diff", results).exit_code == 0
    fps = {p.name: dataset_fingerprint(p).fingerprint for p in (raw, clean, results)}

    shown = json.loads(cli("inspect", results, "--json").stdout)
    assert shown["fingerprint"] == fps["results"]
    step = shown["lineage"]
    assert step["stage"] == "replay"
    (src,) = step["inputs"]
    assert src["fingerprint"] == fps["clean"] and src["sanitized"] is True
    assert src["lineage"]["stage"] == "sanitize"
    (raw_in,) = src["lineage"]["inputs"]
    assert raw_in["fingerprint"] == fps["raw"] and raw_in["sanitized"] is False
    assert raw_in["lineage"]["stage"] == "import"
    (har_in,) = raw_in["lineage"]["inputs"]
    assert har_in["file"] == "s.har" and har_in["fingerprint"].startswith("sha256:")
    text = cli("inspect", results).stdout
    assert "<- replay of sanitized exchanges " + fps["clean"][7:19] in text
    assert "<- sanitize of raw exchanges " + fps["raw"][7:19] in text
    assert "<- import of file s.har" in text
    diffs = pq.ParquetFile(dataset_files(results / "_diff")[0]).metadata.metadata
    lineage = json.loads(diffs[b"shadowtape.lineage"])
    assert lineage["stage"] == "diff" and lineage["inputs"][0]["fingerprint"] == fps["results"]
