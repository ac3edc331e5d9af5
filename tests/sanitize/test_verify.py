"""`shadowtape verify`: passes on sanitize's own output, catches what is planted afterwards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from shadowtape import schema


def _plant(clean: Path, dest: Path, row_id: str, change) -> None:  # noqa: ANN001
    """A copy of a sanitized dataset with one row altered and all metadata kept."""
    shutil.copytree(clean, dest)
    for path in schema.dataset_files(dest):
        table = pq.read_table(path)
        rows = schema.batch_to_rows(table)
        if not any(r["id"] == row_id for r in rows):
            continue
        rows = [change(r) if r["id"] == row_id else r for r in rows]
        meta = pq.ParquetFile(path).schema_arrow.metadata
        new = pa.Table.from_batches([schema.rows_to_batch(rows, table.schema)])
        pq.write_table(new.replace_schema_metadata(meta), path)


def test_verify_passes_on_sanitized_output(clean_corpus, cli):
    result = cli("verify", str(clean_corpus))
    assert result.exit_code == 0, result.output
    assert "0 findings" in result.stdout
    assert "bodies could not be decoded" not in result.stdout


def test_verify_catches_planted_leaks(raw_corpus, clean_corpus, tmp_path, cli):
    user = raw_corpus.users[3]
    row_id = "s01u03-2"

    def leak(row: dict) -> dict:
        row["response_body"] = json.dumps(
            {"ok": True, "contact": f"mail {user.email}", "password": user.password}
        ).encode()
        row["response_headers"] = [("Content-Type", "application/json")]
        row["query"] = [("ref", user.phone)]
        return row

    _plant(clean_corpus, tmp_path / "leaky", row_id, leak)
    result = cli("verify", str(tmp_path / "leaky"))
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert f"{row_id}\tresponse_body:$.contact\tEMAIL_ADDRESS" in lines
    assert f"{row_id}\tresponse_body:$.password\tCREDENTIAL" in lines
    assert f"{row_id}\tquery:ref\tPHONE_NUMBER" in lines
    # The file no longer has the bytes the manifest lists: that is a finding too.
    assert any(line.endswith("\tMANIFEST_ALTERED_FILE") for line in lines)
    assert "4 findings" in lines[-1]
    # Locations and entity types only: the values themselves are never printed.
    assert user.email not in result.output and user.password not in result.output


def test_verify_lists_raw_capture_findings_when_asked(raw_corpus, cli):
    result = cli("verify", str(raw_corpus.path), "--max-findings", "5")
    assert result.exit_code == 2
    assert "not a sanitized dataset" in result.stderr and result.stderr.count("\n") == 1
    result = cli("verify", str(raw_corpus.path), "--allow-unsanitized", "--max-findings", "5")
    assert result.exit_code == 1
    findings = [line for line in result.stdout.splitlines() if line.count("\t") == 2]
    assert len(findings) == 5
    assert "more findings" in result.stdout
    assert "bodies could not be decoded" in result.stdout
    for value in raw_corpus.secrets.values():
        assert value not in result.output


def test_verify_missing_dataset(tmp_path, cli):
    result = cli("verify", str(tmp_path / "nothing"))
    assert result.exit_code == 2 and "no such dataset" in result.stderr


def test_missing_nlp_model_is_refused(clean_corpus, cli):
    result = cli("verify", str(clean_corpus), "--nlp-model", "en_core_web_nonexistent")
    assert result.exit_code == 2
    assert "no such spaCy model" in result.stderr and result.stderr.count("\n") == 1
