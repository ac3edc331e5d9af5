"""JUnit XML for CI: one test case per route (failing when the route drifted, its failure
text naming the paths), one per route's latency test (failing on a regression, with a
baseline), one per error budget (failing when exhausted) and one per --fail-on rule, so a CI
page shows them all at a glance. The suites' properties say what was compared with what."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from shadowtape.report.aggregate import ALL_ROUTES, PathFinding, ReportData
from shadowtape.report.gates import GateResult


def _path_text(p: PathFinding) -> str:
    text = p.headline()
    if p.examples:
        e = p.examples[0]
        text += f" (e.g. exchange {e.exchange_id} at {e.raw_location}: {e.change()})"
    return text


def _properties(suite: ET.Element, data: ReportData) -> None:
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="comparison", value=data.comparison.label)
    for side, url in data.comparison.targets.items():
        ET.SubElement(props, "property", name=f"target.{side}", value=url)


def _latency_suite(suites: ET.Element, data: ReportData) -> None:
    suite = ET.SubElement(suites, "testsuite", name="shadowtape.latency")
    _properties(suite, data)
    failures = skipped = 0
    for test in data.latency_tests:
        case = ET.SubElement(suite, "testcase", classname="shadowtape.latency", name=test.route)
        if not test.tested:
            skipped += 1
            ET.SubElement(case, "skipped", message=test.verdict())
        elif test.regression:
            failures += 1
            ET.SubElement(case, "failure", type="latency_regression", message=test.verdict())
        else:
            out = ET.SubElement(case, "system-out")
            out.text = test.verdict()
    suite.set("tests", str(len(data.latency_tests)))
    suite.set("failures", str(failures))
    suite.set("skipped", str(skipped))
    suite.set("errors", "0")


def _slo_suite(suites: ET.Element, data: ReportData) -> None:
    suite = ET.SubElement(suites, "testsuite", name="shadowtape.slo")
    failures = skipped = 0
    for result in data.slo:
        name = (
            result.rule.text
            if result.scope in (result.rule.route, ALL_ROUTES)
            else (f"{result.rule.text} [{result.scope}]")
        )
        case = ET.SubElement(suite, "testcase", classname="shadowtape.slo", name=name)
        if result.consumed is None:
            skipped += 1
            ET.SubElement(case, "skipped", message=result.describe())
        elif result.exhausted:
            failures += 1
            ET.SubElement(case, "failure", type="error_budget", message=result.describe())
        else:
            ET.SubElement(case, "system-out").text = result.describe()
    suite.set("tests", str(len(data.slo)))
    suite.set("failures", str(failures))
    suite.set("skipped", str(skipped))
    suite.set("errors", "0")


def render(data: ReportData, gates: Sequence[GateResult] = ()) -> str:
    suites = ET.Element("testsuites", name="shadowtape")
    routes = ET.SubElement(suites, "testsuite", name="shadowtape.routes")
    _properties(routes, data)
    failures = skipped = 0
    for fig in data.routes:
        case = ET.SubElement(routes, "testcase", classname="shadowtape.routes", name=fig.route)
        drift = data.findings(fig.route, "drift")
        if drift:
            failures += 1
            failure = ET.SubElement(
                case,
                "failure",
                type="drift",
                message=f"{len(drift)} drift paths: " + ", ".join(p.where for p in drift),
            )
            failure.text = "\n".join(_path_text(p) for p in drift) + "\n"
        elif not fig.compared:
            skipped += 1
            ET.SubElement(
                case, "skipped",
                message=f"nothing compared ({fig.skipped} skipped, {fig.failed} failed)",
            )  # fmt: skip
        noise = data.findings(fig.route, "noise")
        out = ET.SubElement(case, "system-out")
        out.text = (
            f"{data.comparison.label}: {fig.compared} compared, {fig.drift_requests} with drift, "
            f"{fig.noise_only_requests} differing only by noise on {len(noise)} paths"
            + "".join(f"\nnoise {p.location}: {p.reason}" for p in noise)
        )
    routes.set("tests", str(len(data.routes)))
    routes.set("failures", str(failures))
    routes.set("skipped", str(skipped))
    routes.set("errors", "0")
    if data.comparison.has_baseline:
        _latency_suite(suites, data)
    if data.slo:
        _slo_suite(suites, data)
    if gates:
        suite = ET.SubElement(suites, "testsuite", name="shadowtape.gates")
        tripped = 0
        for g in gates:
            case = ET.SubElement(suite, "testcase", classname="shadowtape.gates", name=g.gate.text)
            if g.tripped:
                tripped += 1
                ET.SubElement(case, "failure", type="gate", message=g.describe())
            elif g.not_applicable is not None:
                ET.SubElement(case, "skipped", message=g.describe())
        suite.set("tests", str(len(gates)))
        suite.set("failures", str(tripped))
        suite.set("errors", "0")
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, "unicode") + "\n"
