"""`--fail-on` rules for CI gates: `status_mismatch>0`, `drift_rate>1%`,
`latency_regressions>0`, `slo_budget>100%`, `p99_latency_ratio>1.5`, `error_rate>0.5%`.

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
    "p50_latency_ratio": "staging p50 latency / the baseline's p50 (else the recorded p50)",
    "p95_latency_ratio": "staging p95 latency / the baseline's p95 (else the recorded p95)",
    "p99_latency_ratio": "staging p99 latency / the baseline's p99 (else the recorded p99)",
    "latency_regressions": "routes significantly slower than the baseline by more than "
    "--latency-threshold (needs replay --baseline)",
    "slo_budget": "error budget consumed, the most of the --slo rules (100% = spent)",
    "availability": "staging non-5xx share of attempted requests",
    "baseline_errors": "failed sends and 5xx of the baseline",
}
_RATES = {
    "status_mismatch_rate", "drift_rate", "error_rate", "noise_rate", "slo_budget", "availability",
}  # fmt: skip
# Why a metric has no value anywhere, for the gate's line.
_NOT_APPLICABLE = {
    "latency_regressions": "these results have no baseline (replay --baseline); recorded vs "
    "staging latency is context only",
    "slo_budget": "no --slo rules given",
}
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
    # Why the rule could not be checked anywhere (no value on any scope), if it could not.
    not_applicable: str | None = None

    def describe(self) -> str:
        if self.not_applicable is not None:
            return f"{self.gate.text}: not applicable, {self.not_applicable}"
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
        measured = False
        for fig in scopes:
            value = _value(fig, gate.metric)
            measured |= value is not None
            if gate.crossed(value):
                where.append((fig.route, float(value)))  # type: ignore[arg-type]
        missing = None
        if not measured:
            missing = _NOT_APPLICABLE.get(gate.metric, "no value on any route")
        out.append(GateResult(gate, bool(where), tuple(where), missing))
    return out
