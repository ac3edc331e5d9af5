"""The machine-readable (--json) form of a report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from shadowtape.latency import LatencyComparison
from shadowtape.report.aggregate import SIDES, ReportData, RouteFigures
from shadowtape.report.gates import GateResult


def latency_test_json(test: LatencyComparison) -> dict[str, Any]:
    return {
        "route": test.route,
        "regression": test.regression,
        "tested": test.tested,
        "verdict": test.verdict(),
        "baseline_samples": test.reference_n,
        "candidate_samples": test.candidate_n,
        "threshold": test.threshold,
        "level": test.level,
        "quantiles": [
            {
                "quantile": s.label,
                "baseline_ms": s.reference_ms,
                "candidate_ms": s.candidate_ms,
                "ratio": s.ratio,
                "interval": [s.low, s.high],
                "significant": s.significant,
                "regression": s.regression,
            }
            for s in test.shifts
        ],
    }


def _route_json(fig: RouteFigures) -> dict[str, Any]:
    skip = {"latency", "latency_test"}
    out: dict[str, Any] = {k: getattr(fig, k) for k in fig.__slots__ if k not in skip}
    out.update(
        drift_rate=fig.drift_rate,
        status_mismatch_rate=fig.status_mismatch_rate,
        error_rate=fig.error_rate,
        noise_rate=fig.noise_rate,
        availability=fig.availability,
        latency_regression=None if fig.latency_test is None else fig.latency_test.regression,
    )
    for q in (50, 95, 99):
        for side in SIDES:
            out[f"p{q}_{side}_ms"] = fig.latency_ms(side, q / 100)
        out[f"p{q}_latency_ratio"] = fig.latency_ratio(q / 100)
    return out


def report_json(
    data: ReportData, gates: Sequence[GateResult] = (), scenarios: Sequence[Any] = ()
) -> dict[str, Any]:
    return {
        "comparison": asdict(data.comparison),
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
        "latency": [latency_test_json(t) for t in data.latency_tests],
        "latency_threshold": data.latency_threshold,
        "slo": [
            {
                "rule": r.rule.text,
                "scope": r.scope,
                "requests": r.requests,
                "observed": r.observed,
                "budget": r.rule.allowed,
                "consumed": r.consumed,
                "exhausted": r.exhausted,
            }
            for r in data.slo
        ],
        "gates": [
            {
                "rule": g.gate.text,
                "tripped": g.tripped,
                "where": [list(w) for w in g.where],
                "not_applicable": g.not_applicable,
            }
            for g in gates
        ],
    }
