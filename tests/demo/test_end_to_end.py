"""The whole flow, as a newcomer runs it: `shadowtape demo` in a subprocess, every stage its
own `python -m shadowtape` process, then each artifact checked for what it must and must not
hold. If a stage breaks the pipeline, the failing assertion names the artifact (and the demo
output, printed on failure, names the step)."""

import gzip
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from shadowtape import schema
from shadowtape.demo.data import personal_values
from shadowtape.demo.pipeline import NOISE_SAMPLE, DemoPaths
from shadowtape.demo.shop import PLANTED_DRIFT, SEARCH_DELAY_S
from shadowtape.demo.traffic import plan_sessions

REQUESTS = 160
SEED = 11

pytestmark = pytest.mark.timeout(420)


def shadowtape(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shadowtape", "--no-config", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoPaths, str]:
    workdir = tmp_path_factory.mktemp("e2e") / "demo-work"
    # The demo's own audit log (WORKDIR/audit.jsonl), not the suite's scratch one.
    args = ["--audit-log", str(DemoPaths(workdir).audit_log), "--actor", "e2e-test", "demo"]
    args += ["--workdir", str(workdir), "--requests", str(REQUESTS), "--seed", str(SEED)]
    done = shadowtape(*args, timeout=400)
    assert done.returncode == 0, f"demo failed:\n{done.stdout}\n{done.stderr}"
    return DemoPaths(workdir), done.stdout


def _body_text(body: bytes | None, headers: list[tuple[str, str]]) -> str:
    if not body:
        return ""
    encoding = next((v for k, v in headers if k.lower() == "content-encoding"), "")
    if "gzip" in encoding:
        body = gzip.decompress(body)
    return body.decode("utf-8", "replace")


def dataset_text(path: Path) -> str:
    """Everything a dataset says, decoded: every string, list and (decompressed) body."""
    parts = []
    for batch in schema.iter_batches(path):
        for row in schema.batch_to_rows(batch):
            for name, value in row.items():
                if name in ("request_body", "response_body"):
                    headers = row[
                        "request_headers" if name == "request_body" else "response_headers"
                    ]  # noqa: E501
                    parts.append(_body_text(value, headers))
                elif name == "staging_body":
                    parts.append(_body_text(value, []))
                elif value is not None:
                    parts.append(json.dumps(value, default=str))
    return "\n".join(parts)


def rows(path: Path) -> list[dict]:
    return [r for b in schema.iter_batches(path) for r in schema.batch_to_rows(b)]


def test_the_transcript_shows_every_command_a_user_would_run(demo) -> None:
    _, out = demo
    printed = re.findall(r"^  \$ (.+)$", out, re.M)
    starts = [
        "python -m shadowtape.demo.services --version v1",
        "python -m shadowtape.demo.services --version v2",
        "shadowtape capture --upstream http://127.0.0.1:",
        "python -m shadowtape.demo.traffic --base-url http://127.0.0.1:",
        "shadowtape sanitize ",
        "shadowtape verify ",
        "shadowtape replay ",
        "shadowtape diff ",
        "shadowtape report ",
    ]
    assert len(printed) == len(starts)
    for line, start in zip(printed, starts, strict=True):
        assert line.startswith(start), (line, start)
    assert re.search(r"^key: .*demo\.key", out, re.M)
    assert "Done in" in out


def test_raw_dataset_is_complete_and_holds_no_raw_credentials(demo) -> None:
    paths, _ = demo
    files = schema.read_files(paths.raw)
    assert files and all(f.metadata.get(schema.META_SANITIZED) == "false" for f in files)
    recorded = rows(paths.raw)
    assert len(recorded) == REQUESTS
    assert all(r["status"] is not None and 200 <= r["status"] < 300 for r in recorded)
    auth = [v for r in recorded for k, v in r["request_headers"] if k.lower() == "authorization"]
    assert auth and all(re.fullmatch(r"Bearer stk_[a-z2-7]{26}", v) for v in auth)
    # The raw data does hold the seeded personal values: the sanitized check below is real.
    text = dataset_text(paths.raw)
    assert plan_sessions(SEED, REQUESTS)[0].shopper.email in text


def test_sanitized_dataset_holds_none_of_the_seeded_personal_values(demo) -> None:
    paths, _ = demo
    files = schema.read_files(paths.clean)
    assert files and all(f.metadata.get(schema.META_SANITIZED) == "true" for f in files)
    assert (paths.clean / "_manifest.json").is_file()
    text = dataset_text(paths.clean)
    manifest = (paths.clean / "_manifest.json").read_text()
    raw_tokens = [
        json.loads(_body_text(r["response_body"], r["response_headers"]))["token"]
        for r in rows(paths.raw)
        if r["path"] == "/api/login"
    ]
    assert raw_tokens
    leaks = [
        value
        for plan in plan_sessions(SEED, REQUESTS)
        for value in [*personal_values(plan.shopper), *raw_tokens]
        if value in text or value in manifest
    ]
    assert leaks == []
    assert len(rows(paths.clean)) == REQUESTS


def test_results_hold_every_replayable_request_answered_by_staging(demo) -> None:
    paths, _ = demo
    clean_ids = sorted(r["id"] for r in rows(paths.clean))
    results = rows(paths.results)
    first = [r for r in results if r["replay_pass"] == 1]
    second = [r for r in results if r["replay_pass"] == 2]
    assert sorted(r["id"] for r in first) == clean_ids
    assert {r["outcome"] for r in first} == {"sent"}
    # Correlation worked: staging accepted every session's own token and ids.
    statuses = {r["staging_status"] for r in first}
    assert statuses <= {200, 201, 204, 500}, statuses
    assert 0 < len(second) <= NOISE_SAMPLE


def _norm(route: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", route)


def test_the_report_finds_exactly_the_planted_drift(demo) -> None:
    paths, _ = demo
    done = shadowtape("report", str(paths.results), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    found = {
        (_norm(p["route"]), p["location"])
        for p in report["paths"]
        if p["classification"] == "drift"
    }
    planted = {(_norm(d.route), d.location) for d in PLANTED_DRIFT if d.kind != "latency"}
    assert found == planted
    # The planted slowness shows in the latency figures (lower bounds only: never a speed test).
    search = next(r for r in report["routes"] if r["route"] == "GET /api/products/search")
    assert search["p50_staging_ms"] >= SEARCH_DELAY_S["v2"] * 1000
    assert search["p50_recorded_ms"] >= SEARCH_DELAY_S["v1"] * 1000


def test_html_junit_and_notebook_are_written(demo) -> None:
    paths, _ = demo
    assert "<html" in paths.html.read_text().lower()
    junit = ET.parse(paths.junit).getroot()
    failing = {
        case.get("name")
        for case in junit.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    }
    assert {_norm(n) for n in failing} >= {
        _norm(d.route) for d in PLANTED_DRIFT if d.kind != "latency"
    }
    notebook = json.loads(paths.notebook.read_text())
    code_cells = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert code_cells and all(c.get("execution_count") for c in code_cells)


def test_parquet_files_are_whole(demo) -> None:
    paths, _ = demo
    for dataset in (paths.raw, paths.clean, paths.results):
        for f in schema.dataset_files(dataset):
            assert pq.ParquetFile(f).metadata.num_rows > 0


def test_the_audit_log_has_one_record_per_step_chained_by_fingerprint(demo) -> None:
    from shadowtape.governance.audit import AuditLog
    from shadowtape.governance.fingerprint import dataset_fingerprint

    paths, _ = demo
    log = AuditLog(paths.audit_log)
    records = list(log.records())
    assert [r["command"] for r in records] == [
        "capture", "sanitize", "verify", "replay", "diff", "report",
    ]  # fmt: skip
    assert all(r["exit_code"] == 0 and r["actor"] == "e2e-test" for r in records)
    by = {r["command"]: r for r in records}

    def fp(record: dict, side: str, path: Path) -> str:
        (entry,) = [e for e in record[side] if Path(e["path"]) == path]
        return entry["fingerprint"]

    raw = fp(by["capture"], "outputs", paths.raw)
    assert raw == dataset_fingerprint(paths.raw).fingerprint
    assert fp(by["sanitize"], "inputs", paths.raw) == raw
    clean = fp(by["sanitize"], "outputs", paths.clean)
    assert fp(by["verify"], "inputs", paths.clean) == clean
    assert fp(by["replay"], "inputs", paths.clean) == clean
    results = fp(by["replay"], "outputs", paths.results)
    assert fp(by["diff"], "inputs", paths.results) == results
    diff = fp(by["diff"], "outputs", paths.results / "_diff")
    assert fp(by["report"], "inputs", paths.results) == results
    assert fp(by["report"], "inputs", paths.results / "_diff") == diff
    assert {Path(e["path"]) for e in by["report"]["outputs"]} == {
        paths.html, paths.junit, paths.notebook,
    }  # fmt: skip
    key = by["sanitize"]["key"]
    assert key and by["capture"]["key"] == key and key not in paths.key.read_text()
    assert by["sanitize"]["policy"] and by["verify"]["policy"] == by["sanitize"]["policy"]
    assert by["replay"]["counts"]["sent"] > 0 and by["replay"]["target"].startswith("http://127.")

    verified = shadowtape("audit", "verify", str(paths.audit_log))
    assert verified.returncode == 0 and "6 records, chain intact" in verified.stdout
    lines = paths.audit_log.read_bytes().splitlines(keepends=True)
    tampered = paths.audit_log.with_name("tampered.jsonl")
    edited = bytearray(lines[3])
    at = edited.index(b'"sent":') + len(b'"sent":')
    edited[at] = ord("9") if edited[at] != ord("9") else ord("8")
    tampered.write_bytes(b"".join([*lines[:3], bytes(edited), *lines[4:]]))
    bad = shadowtape("audit", "verify", str(tampered))
    assert bad.returncode == 1 and "record 4: " in bad.stderr and bad.stderr.count("\n") == 1
    tampered.write_bytes(b"".join([*lines[:1], *lines[2:]]))
    bad = shadowtape("audit", "verify", str(tampered))
    assert bad.returncode == 1 and "record 2: " in bad.stderr


def test_raw_data_and_the_key_are_owner_only(demo) -> None:
    import stat

    paths, _ = demo
    assert stat.S_IMODE(paths.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.raw.stat().st_mode) == 0o700
    files = schema.dataset_files(paths.raw)
    assert files and {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o600}
