"""`--fail-on` rules for CI gates: `status_mismatch>0`, `drift_rate>1%`,
`p99_latency_ratio>1.5`, `error_rate>0.5%`.

A rule is checked for the run as a whole and for every route, and trips if any of them
crosses it: a regression on one endpoint must not hide in an average over all of them.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from shadowtape.errors import InputError
from shadowtape.report.aggregate import ReportData, RouteFigures

METRICS: dict[str, str] = {
    "status_mismatch": "requests whose status differs (drift)",
    "status_mismatch_rate": "status_mismatch / compared requests",
    "drift": "requests with at least one drift",
    "drift_rate": "drift / compared requests",
    "drift_paths": "distinct drifting paths",
    "errors": "failed sends and staging 5xx",
    "error_rate": "errors / attempted requests",
    "failed": "requests the replay could not send",
    "skipped": "requests the replay skipped",
    "noise_rate": "requests that differ only by noise / compared",
    "p50_latency_ratio": "staging p50 latency / recorded p50",
    "p95_latency_ratio": "staging p95 latency / recorded p95",
    "p99_latency_ratio": "staging p99 latency / recorded p99",
}
_RATES = {"status_mismatch_rate", "drift_rate", "error_rate", "noise_rate"}
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
_RULE = re.compile(r"^\s*([a-z0-9_]+)\s*(>=|<=|==|!=|>|<)\s*([0-9]*\.?[0-9]+)\s*(%?)\s*$")


@dataclass(frozen=True, slots=True)
class Gate:
    text: str
    metric: str
    op: str
    limit: float
    percent: bool

    def crossed(self, value: float | None) -> bool:
        return value is not None and _OPS[self.op](value, self.limit)

    def show(self, value: float | None) -> str:
        if value is None:
            return "n/a"
        if self.metric in _RATES:
            return f"{value:.2%}"
        if self.metric.endswith("_ratio"):
            return f"{value:.2f}x"
        return f"{value:g}"


@dataclass(frozen=True, slots=True)
class GateResult:
    gate: Gate
    tripped: bool
    # Where it tripped, with the value there: [(route or "(all routes)", value)].
    where: tuple[tuple[str, float], ...]

    def describe(self) -> str:
        if not self.tripped:
            return f"{self.gate.text}: ok"
        shown = ", ".join(f"{r} = {self.gate.show(v)}" for r, v in self.where[:5])
        more = f" and {len(self.where) - 5} more" if len(self.where) > 5 else ""
        return f"{self.gate.text}: tripped ({shown}{more})"


def parse_gate(text: str) -> Gate:
    m = _RULE.match(text)
    if m is None:
        raise InputError(
            f"--fail-on {text!r}: not a rule; write METRIC OP NUMBER[%], "
            "e.g. 'drift_rate>1%' or 'p99_latency_ratio>1.5'"
        )
    metric, op, number, pct = m.groups()
    if metric not in METRICS:
        raise InputError(
            f"--fail-on {text!r}: unknown metric {metric!r}; known: {', '.join(METRICS)}"
        )
    limit = float(number) / 100 if pct else float(number)
    if pct and metric not in _RATES:
        raise InputError(f"--fail-on {text!r}: {metric} is not a rate; drop the '%'")
    return Gate(text=text.strip(), metric=metric, op=op, limit=limit, percent=bool(pct))


def parse_gates(texts: Sequence[str]) -> list[Gate]:
    return [parse_gate(t) for t in texts]


def _value(fig: RouteFigures, metric: str) -> float | None:
    return fig.metric(metric)


def evaluate(gates: Sequence[Gate], data: ReportData) -> list[GateResult]:
    out = []
    scopes = [data.overall, *data.routes]
    for gate in gates:
        where = []
        for fig in scopes:
            value = _value(fig, gate.metric)
            if gate.crossed(value):
                where.append((fig.route, float(value)))  # type: ignore[arg-type]
        out.append(GateResult(gate, bool(where), tuple(where)))
    return out
