"""Baseline vs candidate, end to end on loopback: a real replay sends every recorded request
to a baseline, a second baseline and a candidate (three real servers), then diff and report.
The candidate has planted drift on one route and planted latency on another; the findings
must be exactly those, in every one of five seeded runs.

Sizes, and why they suffice: 40 requests per route per run, so each route's p50 and p95 are
tested (p95 needs 40 a side). Here, with the replay and three servers sharing one process on a
loaded machine, an answer takes 1-10 ms (median about 2.5 ms, spread sigma about 0.8 on a log
scale). Against that the planted 15 ms is found with a seeded simulation's power of 1.000 at a
2.6 ms median and 0.994 at an 8 ms one (500 reports each, 10 tests a report), while 500 null
reports of 4 unchanged routes gave no false finding (the rule needs the interval's lower end
above 1.2, not only above 1). Each run takes about a second.
"""

from __future__ import annotations

import json
import random
import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path

import nbformat
import polars as pl
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from shadowtape import schema
from shadowtape.cli import main
from shadowtape.diff.pipeline import run_diff
from shadowtape.replay import ReplayConfig, run_replay
from shadowtape.replay.config import Timing
from shadowtape.report.aggregate import load_report

# The planted services' server (tests/diff/planted.py), here with routes of its own.
sys.path.insert(0, str(Path(__file__).parent.parent / "diff"))
import planted  # noqa: E402
from manifest_testkit import write_manifest  # noqa: E402

SLOW_ROUTE = "GET /search"
PLANTED_SLOWDOWN_S = 0.015
PLANTED_DRIFT = {("GET /users/{id}", "$.name"), ("GET /users/{id}", "$.full_name")}
ROUTES = ("/users/{}", "/items/{}", "/search", "/catalog", "/health")
PER_ROUTE = 40
SEEDS = (1, 2, 3, 4, 5)


def _answer(version: int, path: str) -> tuple[int, str, bytes, dict[str, str]]:
    noise = {
        "generated_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "nonce": secrets.token_hex(8),
    }
    parts = path.strip("/").split("/")
    if parts[0] == "users":
        body = {"id": int(parts[1]), "plan": "pro"}
        body["full_name" if version == 2 else "name"] = f"User {parts[1]}"
    elif parts[0] == "items":
        body = {"id": int(parts[1]), "price": 9.5, "tags": ["a", "b"]}
    elif parts[0] == "search":
        if version == 2:
            time.sleep(PLANTED_SLOWDOWN_S)
        body = {"results": [{"id": 1, "title": "shoes"}]}
    elif parts[0] == "catalog":
        body = {"categories": ["books", "games", "music"]}
    else:
        body = {"status": "ok"}
    return 200, "application/json", json.dumps({**body, **noise}).encode(), {}


def serve(version: int) -> AbstractContextManager[str]:
    return planted.serve(version, _answer)


def recording(directory: Path, seed: int) -> Path:
    """A sanitized dataset of sessions that touch every route in a seeded order."""
    rng = random.Random(seed)
    paths = [r.format(rng.randint(1, 999)) for r in ROUTES for _ in range(PER_ROUTE)]
    rng.shuffle(paths)
    t0 = 1_700_000_000_000_000
    records = []
    for i, path in enumerate(paths):
        started = t0 + i * 1000
        records.append(
            schema.Exchange(
                id=schema.uuid7(started, i.to_bytes(10, "big")),
                session_id=f"s{i % 10}",
                seq=i // 10,
                started_at=started,
                method="GET",
                host="api.example.test",
                path=path,
                request_headers=[("Host", "api.example.test")],
                status=200,
                response_headers=[("Content-Type", "application/json")],
                response_body=b"{}",
            )
        )
    with schema.DatasetWriter(directory, metadata={schema.META_SANITIZED: "true"}) as w:
        w.write_exchanges(records)
    write_manifest(directory)  # as sanitize would: replay checks it
    return directory


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[str, str, str]]:
    with serve(1) as baseline, serve(1) as baseline_2, serve(2) as candidate:
        yield baseline, baseline_2, candidate


def replay_against_baseline(tmp: Path, seed: int, servers: tuple[str, str, str]) -> Path:
    baseline, baseline_2, candidate = servers
    source = recording(tmp / f"clean-{seed}", seed)
    out = tmp / f"results-{seed}"
    summary = run_replay(
        ReplayConfig(
            str(source),
            candidate,
            str(out),
            baseline=baseline,
            baseline_2=baseline_2,
            timing=Timing("max"),
            concurrency=4,
            seed=seed,
            correlate="off",
            handle_signals=False,
        )
    )
    assert summary.status == "complete", summary.reason
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_findings_are_exactly_the_planted_drift_and_latency(tmp_path, servers, seed) -> None:
    results = replay_against_baseline(tmp_path, seed, servers)
    diff = run_diff(results)
    assert diff.comparison["reference"] == "baseline"
    data = load_report(diff.out)
    assert data.comparison.label == "baseline vs candidate"
    drift = {(p.route, p.location) for p in data.paths if p.classification == "drift"}
    assert drift == PLANTED_DRIFT
    tested = {t.route for t in data.latency_tests if t.tested}
    assert len(tested) == len(ROUTES)
    regressions = data.latency_regressions
    assert [t.route for t in regressions] == [SLOW_ROUTE], [t.verdict() for t in data.latency_tests]
    assert {s.label for s in regressions[0].shifts} == {"p50", "p95"}
    # Noise came from the two baselines, on every request.
    assert all(r.noise_pairs == PER_ROUTE for r in data.routes)


@pytest.fixture(scope="module")
def baseline_results(tmp_path_factory, servers) -> Path:
    return replay_against_baseline(tmp_path_factory.mktemp("baseline"), 11, servers)


def test_the_report_names_the_regression_everywhere_and_gates_on_it(
    tmp_path, servers, baseline_results
) -> None:
    results = baseline_results
    html, junit = tmp_path / "report.html", tmp_path / "junit.xml"
    args = ["report", str(results), "--html", str(html), "--junit", str(junit)]
    done = CliRunner().invoke(main, [*args, "--fail-on", "latency_regressions>0"])
    assert done.exit_code == 1, done.output
    assert "comparing baseline vs candidate (baseline http://127.0.0.1:" in done.output
    assert f"candidate {servers[2]}); noise from baseline vs second baseline" in done.output
    assert "LATENCY REGRESSIONS: 1 route (" in done.output
    assert f"  {SLOW_ROUTE}: p50 " in done.output
    assert "latency_regressions>0: tripped (" in done.output
    page = html.read_text()
    assert "Comparing <strong>baseline vs candidate</strong>" in page
    assert 'class="latency-regressions"' in page and SLOW_ROUTE in page
    assert page.count('data-side="baseline"') == page.count('data-side="candidate"') >= 5
    xml = junit.read_text()
    assert '<property name="comparison" value="baseline vs candidate"' in xml
    assert f'name="{SLOW_ROUTE}"><failure type="latency_regression"' in xml.replace(
        "\n", ""
    ).replace("  ", "")
    # With the regression allowed for, the same report passes.
    assert CliRunner().invoke(main, [*args, "--latency-threshold", "900"]).exit_code == 0


def test_code_that_knows_nothing_of_baselines_reads_the_results(baseline_results) -> None:
    """What a reader written before baselines selects (the columns the diff read then): one
    sent row per request, staging_* the candidate's answer; the second baseline's rows are
    replay_pass 2 rows that say the candidate was not sent in them."""
    old_columns = ["id", "replay_pass", "outcome", "skip_reason", "status", "staging_status"]
    files = sorted(str(f) for f in baseline_results.glob("*.parquet"))
    frame = pl.read_parquet(files, columns=old_columns)
    first = frame.filter(pl.col("replay_pass") == 1)
    assert first.height == len(ROUTES) * PER_ROUTE and first["id"].n_unique() == first.height
    assert set(first["outcome"]) == {"sent"} and set(first["staging_status"]) == {200}
    second = frame.filter(pl.col("replay_pass") == 2)
    assert set(second["outcome"]) == {"skipped"} and set(second["skip_reason"]) == {"baseline_only"}
    assert second["staging_status"].null_count() == second.height
    table = pq.read_table(files[0], columns=old_columns)
    assert table.num_rows == frame.height


def test_the_notebook_says_what_it_compared(baseline_results, tmp_path) -> None:
    out = tmp_path / "executed.ipynb"
    done = CliRunner().invoke(main, ["report", str(baseline_results), "--notebook", str(out)])
    assert done.exit_code == 0, done.output
    nb = nbformat.read(out, as_version=4)
    text = "\n".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells
        for o in c.get("outputs", [])
    )
    assert "comparing baseline vs candidate" in text and "reference = baseline" in text
    assert "$.full_name" in text and SLOW_ROUTE in text
