"""The machine-readable (--json) form of a report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from shadowtape.report.aggregate import ReportData, RouteFigures
from shadowtape.report.gates import GateResult


def _route_json(fig: RouteFigures) -> dict[str, Any]:
    out: dict[str, Any] = {k: v for k, v in asdict(fig).items() if k != "latency"}
    out.update(
        drift_rate=fig.drift_rate,
        status_mismatch_rate=fig.status_mismatch_rate,
        error_rate=fig.error_rate,
        noise_rate=fig.noise_rate,
    )
    for q in (50, 95, 99):
        out[f"p{q}_recorded_ms"] = fig.latency_ms("recorded", q / 100)
        out[f"p{q}_staging_ms"] = fig.latency_ms("staging", q / 100)
        out[f"p{q}_latency_ratio"] = fig.latency_ratio(q / 100)
    return out


def report_json(
    data: ReportData, gates: Sequence[GateResult] = (), scenarios: Sequence[Any] = ()
) -> dict[str, Any]:
    return {
        "scenarios": [
            {
                "name": g.name,
                "risk": g.scenario.risk,
                "routes": [r.route for r in g.routes],
                "overall": _route_json(g.overall),
                "gates": [
                    {"rule": v.gate.text, "tripped": v.tripped, "where": [list(w) for w in v.where]}
                    for v in g.gates
                ],
            }
            for g in scenarios
        ],
        "results": data.results,
        "totals": data.totals,
        "overall": _route_json(data.overall),
        "routes": [_route_json(r) for r in data.routes],
        "paths": [asdict(p) for p in data.paths],
        "gates": [
            {"rule": g.gate.text, "tripped": g.tripped, "where": [list(w) for w in g.where]}
            for g in gates
        ],
    }
