"""JUnit XML for CI: one test case per route (failing when the route drifted, its failure
text naming the paths), and one per --fail-on rule, so a CI page shows both at a glance."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from shadowtape.report.aggregate import PathFinding, ReportData
from shadowtape.report.gates import GateResult


def _path_text(p: PathFinding) -> str:
    text = p.headline()
    if p.examples:
        e = p.examples[0]
        text += f" (e.g. exchange {e.exchange_id} at {e.raw_location}: {e.change()})"
    return text


def render(data: ReportData, gates: Sequence[GateResult] = ()) -> str:
    suites = ET.Element("testsuites", name="shadowtape")
    routes = ET.SubElement(suites, "testsuite", name="shadowtape.routes")
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
            f"{fig.compared} compared, {fig.drift_requests} with drift, "
            f"{fig.noise_only_requests} differing only by noise on {len(noise)} paths"
            + "".join(f"\nnoise {p.location}: {p.reason}" for p in noise)
        )
    routes.set("tests", str(len(data.routes)))
    routes.set("failures", str(failures))
    routes.set("skipped", str(skipped))
    routes.set("errors", "0")
    if gates:
        suite = ET.SubElement(suites, "testsuite", name="shadowtape.gates")
        tripped = 0
        for g in gates:
            case = ET.SubElement(suite, "testcase", classname="shadowtape.gates", name=g.gate.text)
            if g.tripped:
                tripped += 1
                ET.SubElement(case, "failure", type="gate", message=g.describe())
        suite.set("tests", str(len(gates)))
        suite.set("failures", str(tripped))
        suite.set("errors", "0")
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, "unicode") + "\n"
