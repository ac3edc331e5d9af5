"""Report figures and gates per scenario ([scenarios.NAME] in shadowtape.toml).

A report works on routes, so a scenario's figures are those of the routes its templates match
(and its methods allow); a route may belong to several scenarios, or to none. Each scenario's
`fail-on` rules are checked over its routes together and over each of them, as --fail-on is
over the whole run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from shadowtape.governance.scenarios import Scenario
from shadowtape.report.aggregate import ReportData, RouteFigures, combine
from shadowtape.report.gates import GateResult, parse_gates


@dataclass(slots=True)
class ScenarioGroup:
    scenario: Scenario
    routes: list[RouteFigures]
    overall: RouteFigures
    gates: list[GateResult]

    @property
    def name(self) -> str:
        return self.scenario.name

    @property
    def tripped(self) -> list[GateResult]:
        return [g for g in self.gates if g.tripped]


def _evaluate(scenario: Scenario, scopes: list[RouteFigures]) -> list[GateResult]:
    out = []
    for gate in parse_gates(scenario.fail_on):
        where = []
        for fig in scopes:
            value = fig.metric(gate.metric)
            if gate.crossed(value):
                where.append((fig.route, float(value)))  # type: ignore[arg-type]
        out.append(GateResult(gate, bool(where), tuple(where)))
    return out


def group_by_scenario(data: ReportData, scenarios: Iterable[Scenario]) -> list[ScenarioGroup]:
    groups = []
    for s in sorted(scenarios, key=lambda s: s.name):
        routes = [r for r in data.routes if s.matches_route_label(r.route)]
        overall = combine(routes, f"(scenario {s.name})")
        groups.append(ScenarioGroup(s, routes, overall, _evaluate(s, [overall, *routes])))
    return groups


def group_line(group: ScenarioGroup) -> str:
    o = group.overall
    gates = ", ".join(g.describe() for g in group.gates) or "no gates"
    return (
        f"  {group.name} ({group.scenario.risk} risk): {len(group.routes)} routes, "
        f"{o.compared} compared, {o.drift_requests} with drift, {o.status_mismatch} status "
        f"mismatches; {gates}"
    )
