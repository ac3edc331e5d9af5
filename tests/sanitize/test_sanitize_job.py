"""The sanitize job end to end on the seeded corpus: nothing planted survives, sessions stay
consistent, output is deterministic, and failures leave no output that looks whole."""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from shadowtape import schema
from shadowtape.keyed import Key, is_token
from shadowtape.sanitize.manifest import MANIFEST_NAME
from shadowtape.sanitize.pipeline import SanitizeConfig, sanitize_batch, sanitize_dataset
from shadowtape.sanitize.policy import default_policy

TEST_KEY = "shadowtape-test-key-0123456789abcdef"


def _config(secret: str = TEST_KEY) -> SanitizeConfig:
    return SanitizeConfig(default_policy(), Key(secret.encode(), "test"))


def _rows(path: Path) -> dict[str, schema.Exchange]:
    return {ex.id: ex for ex in schema.iter_exchanges(path)}


def _header(ex: schema.Exchange, name: str, side: str = "request") -> str:
    return next(v for n, v in getattr(ex, f"{side}_headers") if n.lower() == name)


def _json(body: bytes | None, gz: bool = False) -> dict:
    assert body is not None
    return json.loads(gzip.decompress(body) if gz else body)


def test_no_planted_value_survives(raw_corpus, clean_corpus, decoded):
    raw_text = decoded(raw_corpus.path)
    clean_text = decoded(clean_corpus)
    clean_bytes = b"".join(p.read_bytes() for p in clean_corpus.rglob("*") if p.is_file())
    planted = raw_corpus.secrets
    # The corpus really holds every value (in decoded content), so the checks below mean something.
    assert all(value in raw_text for value in planted.values())
    assert [k for k, v in planted.items() if v in clean_text] == []
    assert [k for k, v in planted.items() if v.encode() in clean_bytes] == []


def test_output_keeps_layout_schema_and_metadata(raw_corpus, clean_corpus):
    raw_files = schema.dataset_files(raw_corpus.path)
    clean_files = schema.dataset_files(clean_corpus)
    assert [f.name for f in clean_files] == [f.name for f in raw_files]
    for raw, clean in zip(raw_files, clean_files, strict=True):
        r, c = pq.ParquetFile(raw), pq.ParquetFile(clean)
        assert c.metadata.num_row_groups == r.metadata.num_row_groups
        assert [c.metadata.row_group(i).num_rows for i in range(c.metadata.num_row_groups)] == [
            r.metadata.row_group(i).num_rows for i in range(r.metadata.num_row_groups)
        ]
        assert c.schema_arrow.remove_metadata() == r.schema_arrow.remove_metadata()
        _, info = schema.open_file(clean)
        assert info.metadata["shadowtape.sanitized"] == "true"
        assert info.metadata["shadowtape.policy_fingerprint"] == default_policy().fingerprint
        assert (
            info.metadata["shadowtape.key_fingerprint"] == Key(TEST_KEY.encode(), "t").fingerprint
        )
        # Capture's own metadata (schema and footer) is kept.
        assert info.metadata["shadowtape.capture.dropped"] == "0"
        assert info.metadata["shadowtape.capture.queue_drops"] == "3"
    assert schema.is_sanitized(clean_corpus)
    raw_ids = [e.id for e in schema.iter_exchanges(raw_corpus.path)]
    assert [e.id for e in schema.iter_exchanges(clean_corpus)] == raw_ids


def test_manifest_counts_what_was_done_and_no_values(raw_corpus, clean_corpus):
    text = (clean_corpus / MANIFEST_NAME).read_text()
    manifest = json.loads(text)
    sessions = len(raw_corpus.users) * 2
    assert manifest["rows"] == sessions * 6
    counts = manifest["counts"]
    for entity in ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IP_ADDRESS"):
        assert sum(counts["detected"][entity].values()) > 0, entity
    # Under keys that say what they hold (iban, name, email, address), the key words decide.
    for category in ("national_id", "person_name", "email", "address"):
        assert counts["rules"][f"key_words:{category}"] > 0, category
    # The PNG and the broken JSON body of every session: dropped, fail-closed, and counted.
    assert counts["bodies"]["undecodable"] == {"request_body": sessions, "response_body": sessions}
    assert counts["bodies"]["dropped"] == {"request_body": sessions, "response_body": sessions}
    assert counts["actions"]["secret"]["request_header"] > 0
    assert [k for k, v in raw_corpus.secrets.items() if v in text] == []


def test_sessions_stay_consistent(raw_corpus, clean_corpus):
    rows = _rows(clean_corpus)
    for i in range(len(raw_corpus.users)):
        first, second = f"s00u{i:02d}", f"s01u{i:02d}"
        login = rows[f"{first}-0"]
        profile = rows[f"{first}-1"]
        later = rows[f"{second}-1"]  # the same user's next visit, in another file
        login_json = _json(login.response_body, gz=True)
        token = login_json["access_token"]
        # The token minted in the login body is the one later sent as a bearer token.
        assert is_token(token)
        assert _header(profile, "authorization") == f"Bearer {token}"
        set_cookie = _header(login, "set-cookie", "response")
        session_token = set_cookie.split(";")[0].split("=", 1)[1]
        assert is_token(session_token)
        assert f"session={session_token}" in _header(profile, "cookie")
        # One email, one pseudonym: path, query, header, JSON body, JSON key, another file.
        email = login_json["user"]["email"]
        assert email.endswith(".invalid")
        assert profile.path == f"/users/{email}/profile"
        assert dict(profile.query)["email"] == email
        assert _header(profile, "x-user-email") == email
        assert _json(profile.response_body)["user"]["email"] == email
        assert list(login_json["by_email"]) == [email]
        assert dict(later.query)["email"] == email
        # Capture's tokens are already ours and pass through unchanged.
        payment = rows[f"{first}-2"]
        raw_payment = _rows(raw_corpus.path)[f"{first}-2"]
        assert _header(payment, "authorization") == _header(raw_payment, "authorization")


def test_formats_are_preserved(raw_corpus, clean_corpus):
    rows = _rows(clean_corpus)
    raw_rows = _rows(raw_corpus.path)
    profile = _json(rows["s00u00-1"].response_body)["user"]
    raw_profile = _json(raw_rows["s00u00-1"].response_body)["user"]
    card = profile["cards"][0]["card"]
    assert len(card) == 16 and card.isdigit() and card != raw_profile["cards"][0]["card"]
    assert profile["cards"][1]["card"] == card
    phone = profile["phone"]
    assert phone.startswith("+1 ") and len(phone) == len(raw_profile["phone"])
    assert [c for c in phone if not c.isdigit()] == [
        c for c in raw_profile["phone"] if not c.isdigit()
    ]
    assert profile["id"] == raw_profile["id"]  # ids are not personal under the default policy
    assert profile["iban"][:2] == raw_profile["iban"][:2] and len(profile["iban"]) == len(
        raw_profile["iban"]
    )
    login = rows["s00u00-0"]
    assert _header(login, "content-length") == str(len(login.request_body))


def test_same_output_across_runs_and_worker_counts(raw_corpus, clean_corpus, tmp_path):
    again = sanitize_dataset(raw_corpus.path, tmp_path / "w2", _config(), workers=2).output
    for name in [p.name for p in schema.dataset_files(clean_corpus)] + [MANIFEST_NAME]:
        assert (again / name).read_bytes() == (clean_corpus / name).read_bytes(), name


def test_different_keys_give_different_pseudonyms(raw_corpus, clean_corpus, tmp_path):
    other = sanitize_dataset(
        raw_corpus.path, tmp_path / "k2", _config("another-key-of-enough-length-42")
    ).output
    a = _json(_rows(clean_corpus)["s00u00-1"].response_body)["user"]
    b = _json(_rows(other)["s00u00-1"].response_body)["user"]
    for field in ("email", "phone", "name"):
        assert a[field] != b[field], field
    assert a["cards"][0]["card"] != b["cards"][0]["card"]


def test_out_exists_is_refused_unless_overwrite(raw_corpus, tmp_path, cli, test_key):
    out = tmp_path / "clean"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = cli("sanitize", str(raw_corpus.path), str(out))
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "already exists" in result.stderr and "--overwrite" in result.stderr
    assert (out / "keep.txt").exists()
    # --overwrite replaces only an earlier sanitize output, never a file sanitize did not write.
    result = cli("sanitize", str(raw_corpus.path), str(out), "--overwrite")
    assert result.exit_code == 2 and "holds keep.txt" in result.stderr
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert cli("sanitize", str(raw_corpus.path), str(out)).exit_code == 2  # empty, still exists
    result = cli("sanitize", str(raw_corpus.path), str(out), "--overwrite")
    assert result.exit_code == 0, result.output
    assert schema.is_sanitized(out)
    result = cli("sanitize", str(raw_corpus.path), str(out), "--overwrite")
    assert result.exit_code == 0, result.output  # its own earlier output is replaced


def test_missing_key_is_a_clear_error(raw_corpus, tmp_path, cli, monkeypatch):
    monkeypatch.delenv("SHADOWTAPE_KEY", raising=False)
    result = cli("sanitize", str(raw_corpus.path), str(tmp_path / "out"))
    assert result.exit_code == 2
    assert result.stderr.startswith("shadowtape: error: no key")
    assert "--ephemeral-key" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()
    result = cli("sanitize", str(raw_corpus.path), str(tmp_path / "out"), "--key-file", "nope")
    assert result.exit_code == 2 and "cannot read key file" in result.stderr
    short = tmp_path / "short.key"
    short.write_text("abc")
    short.chmod(0o600)
    result = cli("sanitize", str(raw_corpus.path), str(tmp_path / "out"), "--key-file", str(short))
    assert result.exit_code == 2 and "at least 16" in result.stderr


def test_cli_sanitize_prints_a_summary(raw_corpus, tmp_path, cli, monkeypatch):
    monkeypatch.delenv("SHADOWTAPE_KEY", raising=False)
    result = cli("sanitize", str(raw_corpus.path), str(tmp_path / "out"), "--ephemeral-key")
    assert result.exit_code == 0, result.output
    assert f"sanitized {len(raw_corpus.owner)} exchanges in 3 files" in result.stdout
    assert "ephemeral" in result.stdout
    assert "EMAIL_ADDRESS" in result.stdout and "undecodable" in result.stdout
    assert "_manifest.json" in result.stdout


def test_interrupted_job_leaves_no_output(raw_corpus, tmp_path):
    calls = []

    def interrupt(done: int, total: int) -> None:
        calls.append(done)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sanitize_dataset(raw_corpus.path, tmp_path / "out", _config(), progress=interrupt)
    assert calls == [25]
    assert list(tmp_path.iterdir()) == []


def test_bad_input_is_refused(tmp_path, cli, test_key):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("sanitize", str(empty), str(tmp_path / "out"))
    assert result.exit_code == 2 and "no Parquet files" in result.stderr
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "part-000001.parquet").write_bytes(b"not parquet at all")
    result = cli("sanitize", str(junk), str(tmp_path / "out"))
    assert result.exit_code == 2 and "not a readable Parquet file" in result.stderr
    assert not (tmp_path / "out").exists()


def test_output_inside_input_is_refused(raw_corpus, tmp_path, cli, test_key):
    copy = tmp_path / "raw"
    shutil.copytree(raw_corpus.path, copy)
    result = cli("sanitize", str(copy), str(copy / "clean"))
    assert result.exit_code == 2 and "inside" in result.stderr


def test_sanitize_batch_is_pure_with_a_picklable_config(raw_corpus):
    config = pickle.loads(pickle.dumps(_config()))
    batch = next(schema.iter_batches(raw_corpus.path))
    out1, counts1 = sanitize_batch(batch, config)
    out2, counts2 = sanitize_batch(batch, config)
    assert out1.equals(out2) and counts1 == counts2
    assert out1.schema == batch.schema and out1.num_rows == batch.num_rows
    assert counts1["rows"] == batch.num_rows
    assert all(isinstance(k, str) and isinstance(v, int) for k, v in counts1.items())
