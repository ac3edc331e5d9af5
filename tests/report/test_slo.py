"""Error budgets: SLO rules parsed from flags, files and shadowtape.toml; budget consumed
measured on the candidate; gates on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from shadowtape.cli import main
from shadowtape.errors import InputError
from shadowtape.report import slo
from shadowtape.report.aggregate import ALL_ROUTES, load_report
from shadowtape.report.gates import evaluate, parse_gate


def test_rules_parse_with_units_and_routes() -> None:
    r = slo.parse_rule("availability >= 99.9%")
    assert (r.objective, r.route) == ("availability", None)
    assert r.target == pytest.approx(0.999) and r.allowed == pytest.approx(0.001)
    r = slo.parse_rule("get /api/search: p95<=0.3s")
    assert (r.objective, r.target, r.route) == ("p95", 300.0, "GET /api/search")
    assert r.allowed == pytest.approx(0.05) and r.text == "GET /api/search: p95 <= 300ms"
    assert slo.parse_rule("p999 <= 2000").quantile == pytest.approx(0.999)
    assert slo.parse_rule("GET /orders/*: p99 <= 1s").applies_to("GET /orders/{uuid}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("availability > 99%", "not a rule"),
        ("availability <= 99%", "availability is a floor"),
        ("availability >= 100%", "both excluded"),
        ("availability >= 99ms", "write it as a percentage"),
        ("p95 >= 300ms", "a latency objective is a ceiling"),
        ("p95 <= 5%", "a latency ceiling is a time"),
        ("p42 <= 1s", "unknown objective 'p42'"),
        ("latency <= 1s", "not a rule"),
    ],
)
def test_bad_rules_say_what_to_write(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        slo.parse_rule(text)


def test_a_file_holds_text_rules_and_mappings(tmp_path: Path) -> None:
    path = tmp_path / "slo.yaml"
    path.write_text(
        "slo:\n"
        "  - availability >= 99.5%\n"
        "  - route: GET /orders/{uuid}\n"
        "    availability: 99\n"
        "    p99: 800ms\n"
    )
    rules = slo.load_rules(path)
    assert [r.text for r in rules] == [
        "availability >= 99.5%",
        "GET /orders/{uuid}: availability >= 99%",
        "GET /orders/{uuid}: p99 <= 800ms",
    ]
    toml = tmp_path / "slo.toml"
    toml.write_text('slo = ["p95 <= 250ms", {route = "GET /x", p99 = "1s"}]\n')
    assert [r.text for r in slo.load_rules(toml)] == ["p95 <= 250ms", "GET /x: p99 <= 1000ms"]
    for body, message in (
        ("rules: []\n", "needs a top-level `slo:` list"),
        ("slo:\n  - [1, 2]\n", "slo rule 1: write a rule as text or a mapping"),
        ("slo:\n  - route: GET /x\n", "slo rule 1: names no objective"),
        ("slo:\n  - {p95: fast}\n", "p95 = 'fast' is not a number"),
        ("slo: [\n", "not valid YAML"),
    ):
        path.write_text(body)
        with pytest.raises(InputError, match=message):
            slo.load_rules(path)


def test_budget_consumed_on_the_candidate_per_route_and_overall(diffed) -> None:
    """The planted staging answers GET /reports/{id} with 500 (6 of 60 sent requests) and is
    slow on GET /search (about 75 ms)."""
    data = load_report(diffed / "_diff")
    rules = [
        slo.parse_rule("availability >= 95%"),
        slo.parse_rule("GET /reports/*: availability >= 99%"),
        slo.parse_rule("GET /search: p95 <= 20ms"),
        slo.parse_rule("GET /nowhere: p99 <= 1s"),
    ]
    results = slo.evaluate(rules, data)
    overall, reports, search, nowhere = results
    assert overall.scope == ALL_ROUTES
    # 6 5xx and 1 failed send of 61 attempted: 11.5% unavailable against 5% allowed.
    assert overall.bad == pytest.approx(7 / 61)
    assert overall.consumed == pytest.approx(7 / 61 / 0.05) and overall.exhausted
    assert reports.scope == "GET /reports/{id}" and reports.consumed == pytest.approx(100)
    assert search.scope == "GET /search" and search.bad == 1.0
    assert search.consumed == pytest.approx(20)
    assert "p95" in search.observed and "EXHAUSTED" in search.describe()
    assert nowhere.consumed is None and "no requests measured" in nowhere.describe()
    # The gate sees the most consumed budget of each scope.
    (gate,) = evaluate([parse_gate("slo_budget>100%")], data)
    assert dict(gate.where) == pytest.approx(
        {ALL_ROUTES: 7 / 61 / 0.05, "GET /reports/{id}": 100.0, "GET /search": 20.0}
    )


def test_report_cli_takes_slo_rules_from_flags_files_and_the_config(diffed, tmp_path) -> None:
    rules = tmp_path / "slo.yaml"
    rules.write_text("slo:\n  - GET /search: p99 <= 10s\n")
    config = tmp_path / "shadowtape.toml"
    config.write_text('[report]\nslo = ["availability >= 80%"]\nfail-on = ["slo_budget>100%"]\n')
    args = ["--config", str(config), "report", str(diffed), "--slo-file", str(rules)]
    done = CliRunner().invoke(main, [*args, "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert [(r["rule"], r["exhausted"]) for r in report["slo"]] == [
        ("GET /search: p99 <= 10000ms", False),
        ("availability >= 80%", False),
    ]
    done = CliRunner().invoke(main, [*args, "--slo", "availability >= 99%"])
    assert done.exit_code == 1
    assert "Error budgets (2 objectives, 1 exhausted):" in done.output
    assert "availability >= 99%: 88.52% available" in done.output
    assert "shadowtape: gate tripped: slo_budget>100%" in done.output
    bad = CliRunner().invoke(main, ["report", str(diffed), "--slo", "p95 <= fast"])
    assert bad.exit_code == 2 and "is not a rule" in bad.output


def test_gates_that_cannot_be_checked_say_why(diffed) -> None:
    data = load_report(diffed / "_diff")
    regressions, budget = evaluate(
        [parse_gate("latency_regressions>0"), parse_gate("slo_budget>100%")], data
    )
    assert not regressions.tripped and "no baseline" in regressions.describe()
    assert not budget.tripped and "no --slo rules given" in budget.describe()
