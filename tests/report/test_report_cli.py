"""`shadowtape report` end to end: terminal summary, JSON, JUnit, exit codes."""

import json
import shutil
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner

from shadowtape.cli import main


def run(*args):
    return CliRunner().invoke(main, ["report", *map(str, args)])


def test_terminal_summary_is_loud_about_drift(diffed):
    result = run(diffed)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "DRIFT: 9 paths on 6 routes" in out
    for needle in (
        "$.full_name: added",
        "$.total: type_changed",
        "    status: changed in 6/6 requests",
        "header cache-control: changed",
        "$.categories: reordered",
        "line 2: changed in 6/6 requests  e.g. Version 1 -> Version 2",
    ):
        assert needle in out
    assert "GET /search: " in out and "hides 10/10 requests" in out
    assert "2 skipped by replay; 1 failed to send" in out
    assert "(all routes)" in out


def test_quiet_when_nothing_changed(quiet_master, tmp_path):
    results = tmp_path / "quiet"
    shutil.copytree(quiet_master, results)
    result = run(results, "--fail-on", "drift_rate>0%", "--fail-on", "status_mismatch>0")
    assert result.exit_code == 0, result.output
    assert "No drift" in result.output and "DRIFT" not in result.output
    assert "running diff" in result.output  # it computed the missing diff itself
    assert (results / "_diff" / "summary.json").exists()


@pytest.mark.parametrize(
    "rule,code,where",
    [
        ("status_mismatch>0", 1, "GET /reports/{id} = 6"),
        ("drift_rate>1%", 1, "(all routes) = 76.67%"),
        ("p99_latency_ratio>1.5", 1, "GET /search = "),
        ("error_rate>0.5%", 1, "GET /reports/{id} = 100.00%"),
        ("failed>1", 0, None),
        ("drift_rate>100%", 0, None),
    ],
)
def test_fail_on_sets_the_exit_code(diffed, rule, code, where):
    result = run(diffed, "--fail-on", rule)
    assert result.exit_code == code, result.output
    if where:
        assert f"shadowtape: gate tripped: {rule}: tripped" in result.output
        assert where in result.output
    else:
        assert "gate tripped" not in result.output


def test_bad_input_is_exit_2_with_one_line(diffed, tmp_path):
    result = run(diffed, "--fail-on", "nonsense")
    assert result.exit_code == 2 and result.output.startswith("shadowtape: error: --fail-on")
    result = run(tmp_path / "nothing-here")
    assert result.exit_code == 2 and "no such dataset" in result.output
    broken = tmp_path / "broken"
    shutil.copytree(diffed, broken)
    (broken / "_diff" / "summary.json").write_text("{not json")
    result = run(broken, "--diff", broken / "_diff")
    # An unreadable summary is not current: the diff is recomputed rather than trusted.
    assert result.exit_code == 0 and "running diff" in result.output


def test_json_output(diffed):
    result = run(diffed, "--json", "--fail-on", "status_mismatch>0")
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    routes = {r["route"]: r for r in payload["routes"]}
    assert routes["GET /reports/{id}"]["status_mismatch"] == 6
    assert routes["GET /search"]["p99_latency_ratio"] > 1.5
    assert payload["gates"][0]["tripped"] is True
    drift = {
        (p["route"], p["location"]) for p in payload["paths"] if p["classification"] == "drift"
    }
    assert ("GET /users/{id}", "$.name") in drift and len(drift) == 9


def test_junit_is_xml_with_one_case_per_route_failing_on_drift(planted, diffed, tmp_path):
    out = tmp_path / "junit.xml"
    result = run(diffed, "--junit", out, "--fail-on", "status_mismatch>0")
    assert result.exit_code == 1
    root = ET.parse(out).getroot()
    routes = root.find("testsuite[@name='shadowtape.routes']")
    cases = {c.get("name"): c for c in routes.findall("testcase")}
    drift_routes = {r for r, *_ in planted.EXPECTED_DRIFT}
    assert {n for n, c in cases.items() if c.find("failure") is not None} == drift_routes
    assert routes.get("failures") == str(len(drift_routes))
    assert cases["POST /orders"].find("skipped") is not None
    users = cases["GET /users/{id}"].find("failure")
    assert "$.name" in users.get("message") and "$.full_name" in users.get("message")
    assert "$.name: removed in 12/12 requests" in users.text
    gates = root.find("testsuite[@name='shadowtape.gates']")
    assert gates.find("testcase/failure") is not None


def test_html_and_report_files_are_written_whole(diffed, tmp_path):
    out = tmp_path / "sub" / "r.html"
    result = run(diffed, "--html", out)
    assert result.exit_code == 0
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert not list(out.parent.glob(".*tmp"))


def test_report_help_has_an_example():
    result = CliRunner().invoke(main, ["report", "--help"])
    assert result.exit_code == 0 and "Example:" in result.output and "--fail-on" in result.output
