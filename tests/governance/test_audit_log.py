"""The audit log itself: hash chain, verify naming the first bad record, concurrent appends,
secrets kept out of command lines, and a failing log failing the command loudly."""

import json
import multiprocessing
import os
from pathlib import Path

import pytest
from replay_testkit import exchange, write_dataset

from shadowtape.governance.audit import GENESIS, AuditLog, record_hash, redact_argv


def _body(i: int) -> dict:
    return {"command": "test", "n": i, "argv": ["shadowtape", "test", str(i)]}


def test_records_chain_from_genesis_and_verify_passes(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl")
    first = log.append(_body(1))
    second = log.append(_body(2))
    assert first["seq"] == 1 and first["prev"] == GENESIS
    assert second["seq"] == 2 and second["prev"] == first["hash"]
    assert record_hash(second) == second["hash"]
    result = log.verify()
    assert result.ok and result.records == 2 and result.head == second["hash"]


def _log_with(tmp_path: Path, n: int) -> AuditLog:
    log = AuditLog(tmp_path / "a.jsonl")
    for i in range(n):
        log.append(_body(i))
    return log


def test_one_changed_byte_is_found_at_its_record(tmp_path: Path, cli) -> None:
    log = _log_with(tmp_path, 5)
    data = bytearray(log.path.read_bytes())
    lines = data.split(b"\n")
    offset = sum(len(x) + 1 for x in lines[:2]) + lines[2].index(b'"n":') + 4
    data[offset] = ord("7") if data[offset] != ord("7") else ord("8")  # record 3's value
    log.path.write_bytes(bytes(data))
    result = log.verify()
    assert not result.ok and result.bad_record == 3 and "edited" in (result.problem or "")
    out = cli("audit", "verify", log.path)
    assert out.exit_code == 1
    assert out.output.strip().splitlines() == [
        f"shadowtape: error: {log.path}: record 3: its hash does not match its content "
        "(edited); the 2 records before it chain correctly"
    ]


def test_a_removed_or_reordered_record_is_found(tmp_path: Path, cli) -> None:
    log = _log_with(tmp_path, 5)
    lines = log.path.read_bytes().splitlines(keepends=True)
    log.path.write_bytes(b"".join(lines[:1] + lines[2:]))  # record 2 removed
    result = log.verify()
    assert result.bad_record == 2
    out = cli("audit", "verify", log.path)
    assert out.exit_code == 1 and "record 2:" in out.output
    log.path.write_bytes(b"".join([lines[0], lines[2], lines[1], *lines[3:]]))
    assert log.verify().bad_record == 2
    # Even a record re-numbered and re-hashed by hand breaks the next record's link.
    forged = json.loads(lines[2])
    forged["seq"], forged["prev"] = 2, json.loads(lines[0])["hash"]
    forged["hash"] = record_hash(forged)
    log.path.write_bytes(b"".join([lines[0], json.dumps(forged).encode() + b"\n", *lines[3:]]))
    assert log.verify().bad_record == 3


def test_records_cut_from_the_end_show_against_a_kept_head(tmp_path: Path, cli) -> None:
    log = _log_with(tmp_path, 4)
    head = log.verify().head
    lines = log.path.read_bytes().splitlines(keepends=True)
    log.path.write_bytes(b"".join(lines[:3]))
    assert cli("audit", "verify", log.path).exit_code == 0  # a shorter valid chain...
    out = cli("audit", "verify", log.path, "--head", head)
    assert out.exit_code == 1 and "removed from the end" in out.output  # ...but not the head


def _append_many(path: str, worker: int, n: int) -> None:
    log = AuditLog(path)
    for i in range(n):
        log.append({"command": "test", "worker": worker, "i": i, "pad": "x" * (i * 97 % 3000)})


def test_concurrent_processes_neither_interleave_nor_fork_the_chain(tmp_path: Path) -> None:
    path = str(tmp_path / "a.jsonl")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    result = AuditLog(path).verify()
    assert result.ok and result.records == 100
    seen = {(r["worker"], r["i"]) for r in AuditLog(path).records()}
    assert len(seen) == 100


def test_secrets_never_reach_the_command_line_record() -> None:
    argv = [
        "shadowtape",
        "replay",
        "clean/",
        "--target",
        "https://deploy:hunter2@staging.example.com/api?token=abc123&page=2",
        "--header",
        "Authorization: Bearer s3cr3t-token",
        "--header",
        "X-Trace: keep-me",
        "--api-key",
        "k-123456",
        "--password=pw-999",
        "--key-file",
        "team.key",
        "--session-key",
        "cookie:sid",
        "SHADOWTAPE_KEY=deadbeefdeadbeef",
    ]
    out = redact_argv(argv)
    text = " ".join(out)
    for secret in ("hunter2", "abc123", "s3cr3t-token", "k-123456", "pw-999", "deadbeef"):
        assert secret not in text
    for kept in ("deploy:", "page=2", "X-Trace: keep-me", "team.key", "cookie:sid"):
        assert kept in text
    assert out[out.index("--api-key") + 1] == "<redacted>"


def test_a_failing_command_is_recorded_with_its_exit_code(tmp_path: Path, cli, audit_log) -> None:
    result = cli("sanitize", tmp_path / "missing", tmp_path / "clean")
    assert result.exit_code == 2
    (record,) = AuditLog(audit_log).records()
    assert record["command"] == "sanitize" and record["exit_code"] == 2
    assert "no such dataset" in record["error"]
    assert record["inputs"][0]["fingerprint"] is None
    assert cli("audit", "verify").exit_code == 0  # --audit-log comes from the variable


def test_an_environment_failure_is_recorded_as_the_line_the_user_saw(
    tmp_path: Path, cli, audit_log
) -> None:  # noqa: ANN001
    har = tmp_path / "one.har"
    har.write_text('{"log": {"version": "1.2", "entries": []}}')
    (tmp_path / "afile").write_text("")
    result = cli("import", har, "--out", tmp_path / "afile" / "raw")
    assert result.exit_code == 1
    (record,) = AuditLog(audit_log).records()
    assert record["exit_code"] == 1
    assert record["error"].startswith(f"{tmp_path / 'afile' / 'raw'}: Not a directory")
    assert "fix the path" in record["error"]


def test_an_unwritable_log_fails_the_command_in_one_line_and_keeps_its_output(
    tmp_path: Path, cli, monkeypatch
) -> None:
    src = write_dataset(tmp_path / "raw", [exchange("s1", 0, 0)], sanitized=False)
    (tmp_path / "a-file").write_text("")
    blocked = tmp_path / "a-file" / "audit.jsonl"  # its directory cannot exist
    monkeypatch.setenv("SHADOWTAPE_AUDIT_LOG", str(blocked))
    result = cli("import", "--help")
    assert result.exit_code == 0  # --help touches no data and writes no record
    result = cli("inspect", src)
    assert result.exit_code == 1
    errors = [ln for ln in result.output.splitlines() if ln.startswith("shadowtape: error")]
    assert errors == [
        f"shadowtape: error: audit: cannot create {blocked.parent} for the audit log "
        "(File exists); point --audit-log elsewhere"
    ]
    # The work is done and whole: a sanitize whose record cannot be written keeps its output.
    out = tmp_path / "clean"
    result = cli("sanitize", src, out)
    assert result.exit_code == 1 and "audit:" in result.output
    assert (out / "_manifest.json").exists()


def test_show_filters_by_command_actor_dataset_and_time(tmp_path: Path, cli, audit_log) -> None:
    src = write_dataset(tmp_path / "clean", [exchange("s1", 0, 0)])
    assert cli("--actor", "alice", "inspect", src).exit_code == 0
    assert cli("--actor", "bob", "verify", src).exit_code in (0, 1)
    rows = [json.loads(x) for x in cli("audit", "show", "--json").stdout.splitlines()]
    assert [r["command"] for r in rows] == ["inspect", "verify"]
    fp = rows[0]["inputs"][0]["fingerprint"]
    assert rows[1]["inputs"][0]["fingerprint"] == fp
    one = cli("audit", "show", "--actor", "alice").stdout.splitlines()
    assert len(one) == 1 and "inspect" in one[0] and "(alice)" in one[0]
    assert len(cli("audit", "show", "--command", "verify").stdout.splitlines()) == 1
    assert len(cli("audit", "show", "--dataset", fp[:20]).stdout.splitlines()) == 2
    assert len(cli("audit", "show", "--dataset", str(src)).stdout.splitlines()) == 2
    assert cli("audit", "show", "--since", "1d").stdout.count("\n") == 2
    assert cli("audit", "show", "--since", "2999-01-01").stdout == ""
    bad = cli("audit", "show", "--since", "yesterday")
    assert bad.exit_code == 2 and "--since 'yesterday'" in bad.output


def test_the_log_defaults_to_beside_the_config_file(tmp_path: Path, cli, monkeypatch) -> None:
    monkeypatch.delenv("SHADOWTAPE_AUDIT_LOG")
    team = tmp_path / "team"
    team.mkdir()
    (team / "shadowtape.toml").write_text('[defaults]\nactor = "ci-nightly"\n')
    src = write_dataset(tmp_path / "clean", [exchange("s1", 0, 0)])
    assert cli("--config", team / "shadowtape.toml", "inspect", src, cwd=tmp_path).exit_code == 0
    (record,) = AuditLog(team / "shadowtape-audit.jsonl").records()
    assert record["actor"] == "ci-nightly" and record["config"].endswith("shadowtape.toml")
    (team / "shadowtape.toml").write_text('[defaults]\naudit-log = "logs/trail.jsonl"\n')
    assert cli("--config", team / "shadowtape.toml", "inspect", src).exit_code == 0
    assert AuditLog(team / "logs" / "trail.jsonl").verify().records == 1
    assert os.stat(team / "logs" / "trail.jsonl").st_mode & 0o777 == 0o640
    # Without a config file: in the working directory.
    assert cli("--no-config", "inspect", src, cwd=tmp_path).exit_code == 0
    assert AuditLog(tmp_path / "shadowtape-audit.jsonl").verify().records == 1


@pytest.mark.parametrize("garbage", [b"not json\n", b'{"seq": 1}'])
def test_a_damaged_tail_stops_appends_with_a_clear_line(tmp_path: Path, garbage: bytes) -> None:
    from shadowtape.governance.audit import AuditError

    log = _log_with(tmp_path, 1)
    with open(log.path, "ab") as fh:
        fh.write(garbage)
    with pytest.raises(AuditError, match="audit verify"):
        log.append(_body(9))
