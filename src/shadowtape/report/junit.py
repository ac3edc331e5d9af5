"""JUnit XML for CI: one test case per route (failing when the route drifted, its failure
text naming the paths), and one per --fail-on rule, so a CI page shows both at a glance."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from shadowtape.report.aggregate import PathFinding, ReportData, RouteFigures
from shadowtape.report.gates import GateResult
from shadowtape.report.scenarios import ScenarioGroup


def _path_text(p: PathFinding) -> str:
    text = p.headline()
    if p.examples:
        e = p.examples[0]
        text += f" (e.g. exchange {e.exchange_id} at {e.raw_location}: {e.change()})"
    return text


def _route_case(suite: ET.Element, classname: str, fig: RouteFigures, data: ReportData) -> str:
    """One route's test case; returns 'failure', 'skipped' or ''."""
    case = ET.SubElement(suite, "testcase", classname=classname, name=fig.route)
    drift = data.findings(fig.route, "drift")
    state = ""
    if drift:
        state = "failure"
        failure = ET.SubElement(
            case,
            "failure",
            type="drift",
            message=f"{len(drift)} drift paths: " + ", ".join(p.where for p in drift),
        )
        failure.text = "\n".join(_path_text(p) for p in drift) + "\n"
    elif not fig.compared:
        state = "skipped"
        ET.SubElement(
            case, "skipped",
            message=f"nothing compared ({fig.skipped} skipped, {fig.failed} failed)",
        )  # fmt: skip
    noise = data.findings(fig.route, "noise")
    out = ET.SubElement(case, "system-out")
    out.text = (
        f"{fig.compared} compared, {fig.drift_requests} with drift, "
        f"{fig.noise_only_requests} differing only by noise on {len(noise)} paths"
        + "".join(f"\nnoise {p.location}: {p.reason}" for p in noise)
    )
    return state


def _gate_cases(suite: ET.Element, classname: str, gates: Sequence[GateResult]) -> int:
    tripped = 0
    for g in gates:
        case = ET.SubElement(suite, "testcase", classname=classname, name=g.gate.text)
        if g.tripped:
            tripped += 1
            ET.SubElement(case, "failure", type="gate", message=g.describe())
    return tripped


def _close(suite: ET.Element, tests: int, failures: int, skipped: int = 0) -> None:
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("skipped", str(skipped))
    suite.set("errors", "0")


def render(
    data: ReportData,
    gates: Sequence[GateResult] = (),
    scenarios: Sequence[ScenarioGroup] = (),
) -> str:
    """Routes in a scenario go to that scenario's suite (`shadowtape.scenario.NAME`, with its
    gates); the others to `shadowtape.routes`."""
    suites = ET.Element("testsuites", name="shadowtape")
    grouped = {r.route for g in scenarios for r in g.routes}
    loose = [fig for fig in data.routes if fig.route not in grouped]
    if loose or not scenarios:
        routes = ET.SubElement(suites, "testsuite", name="shadowtape.routes")
        states = [_route_case(routes, "shadowtape.routes", fig, data) for fig in loose]
        _close(routes, len(loose), states.count("failure"), states.count("skipped"))
    for group in scenarios:
        name = f"shadowtape.scenario.{group.name}"
        suite = ET.SubElement(suites, "testsuite", name=name)
        ET.SubElement(
            ET.SubElement(suite, "properties"),
            "property",
            name="risk",
            value=group.scenario.risk,
        )
        states = [_route_case(suite, name, fig, data) for fig in group.routes]
        tripped = _gate_cases(suite, name, group.gates)
        _close(
            suite,
            len(group.routes) + len(group.gates),
            states.count("failure") + tripped,
            states.count("skipped"),
        )
    if gates:
        suite = ET.SubElement(suites, "testsuite", name="shadowtape.gates")
        tripped = _gate_cases(suite, "shadowtape.gates", gates)
        _close(suite, len(gates), tripped)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, "unicode") + "\n"
