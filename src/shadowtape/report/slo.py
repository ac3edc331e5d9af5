"""Error budgets: service-level objectives for the candidate, and how much of each budget the
replay consumed.

An objective is a rule, for the whole run or for a route (a label, or a glob such as
`GET /api/orders/*`):

    availability >= 99.9%                      non-5xx share of attempts (a failed send counts
                                               as unavailable): the budget is 0.1% of them
    GET /api/products/search: p95 <= 300ms     95% of requests within 300 ms: the budget is
                                               the 5% allowed above it
    p99 <= 1s

Budget consumed = the bad share observed / the bad share allowed: 40% leaves room, 100% is
the budget spent, 250% is two and a half budgets. `--fail-on 'slo_budget>100%'` gates on it.

Rules come from `report --slo RULE` (repeatable; in shadowtape.toml `[report] slo = [...]`)
and from a file (`--slo-file`, YAML or TOML):

    slo:
      - availability >= 99.9%
      - GET /api/products/search: p95 <= 300ms
      - route: GET /api/orders/{uuid}
        availability: 99.5%
        p99: 800ms
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shadowtape.errors import InputError
from shadowtape.report.aggregate import ALL_ROUTES, ReportData, RouteFigures

AVAILABILITY = "availability"
_LATENCY = re.compile(r"^p(50|90|95|99|999)$")
_RULE = re.compile(
    r"^\s*(?:(?P<route>[A-Za-z]+\s+/\S*)\s*:\s*)?"
    r"(?P<objective>availability|p\d+)\s*(?P<op>>=|<=)\s*(?P<value>[0-9]*\.?[0-9]+)\s*"
    r"(?P<unit>%|ms|s)?\s*$"
)
_EXAMPLES = "e.g. 'availability >= 99.9%' or 'GET /api/search: p95 <= 300ms'"


@dataclass(frozen=True, slots=True)
class SloRule:
    objective: str  # availability | p50 | p90 | p95 | p99 | p999
    target: float  # availability: the share (0.999); pNN: the ceiling in ms
    route: str | None = None  # None: the whole run; else a route label or glob
    source: str = "--slo"  # where the rule was written, for messages

    @property
    def quantile(self) -> float:
        """pNN's share of requests that must be within the ceiling (p999 -> 0.999)."""
        digits = self.objective[1:]
        return int(digits) / 10 ** len(digits)

    @property
    def allowed(self) -> float:
        """The bad share the objective allows: its error budget."""
        if self.objective == AVAILABILITY:
            return 1.0 - self.target
        return 1.0 - self.quantile

    @property
    def text(self) -> str:
        if self.objective == AVAILABILITY:
            rule = f"availability >= {self.target * 100:g}%"
        else:
            rule = f"{self.objective} <= {self.target:g}ms"
        return f"{self.route}: {rule}" if self.route else rule

    def applies_to(self, route: str) -> bool:
        if self.route is None:
            return route == ALL_ROUTES
        return route == self.route or fnmatch.fnmatchcase(route, self.route)


@dataclass(frozen=True, slots=True)
class SloResult:
    rule: SloRule
    scope: str  # the route it was measured on, or "(all routes)"
    requests: int
    bad: float | None  # the bad share observed; None when nothing was measured
    observed: str  # what was measured, for people: "99.52% available", "p95 312 ms"

    @property
    def consumed(self) -> float | None:
        """Share of the error budget used (1.0 = spent); None when nothing was measured."""
        if self.bad is None:
            return None
        return self.bad / self.rule.allowed  # parse_rule keeps every budget above 0

    @property
    def exhausted(self) -> bool:
        return self.consumed is not None and self.consumed > 1.0

    def describe(self) -> str:
        where = (
            "" if self.scope == ALL_ROUTES or self.rule.route == self.scope else f" [{self.scope}]"
        )
        if self.consumed is None:
            return f"{self.rule.text}{where}: no requests measured"
        state = "EXHAUSTED" if self.exhausted else "within budget"
        return (
            f"{self.rule.text}{where}: {self.observed}, {self.consumed:.0%} of the error budget "
            f"consumed ({state})"
        )


def parse_rule(text: str, source: str = "--slo") -> SloRule:
    m = _RULE.match(text)
    if m is None:
        raise InputError(
            f"{source}: SLO {text!r} is not a rule; write [ROUTE:] METRIC OP VALUE, {_EXAMPLES}"
        )
    route = " ".join(m["route"].split()) if m["route"] else None
    return _rule(m["objective"], m["op"], float(m["value"]), m["unit"], route, f"{source} {text!r}")


def _rule(
    objective: str, op: str, value: float, unit: str | None, route: str | None, where: str
) -> SloRule:
    if route is not None:
        method, _, path = route.partition(" ")
        route = f"{method.upper()} {path}"
    if objective == AVAILABILITY:
        if op != ">=":
            raise InputError(f"{where}: availability is a floor; write availability >= 99.9%")
        if unit not in ("%", None) or (unit is None and value > 1):
            raise InputError(f"{where}: availability is a share; write it as a percentage (99.9%)")
        share = value / 100 if unit == "%" else value
        if not 0 < share < 1:
            # 100% leaves no budget: a single error would consume infinitely much of it.
            raise InputError(f"{where}: availability must lie between 0% and 100%, both excluded")
        return SloRule(AVAILABILITY, share, route, where)
    if not _LATENCY.match(objective):
        raise InputError(
            f"{where}: unknown objective {objective!r}; "
            "use availability, p50, p90, p95, p99 or p999"
        )
    if op != "<=":
        raise InputError(f"{where}: a latency objective is a ceiling; write {objective} <= 300ms")
    if unit == "%":
        raise InputError(f"{where}: a latency ceiling is a time; write 300ms or 1s")
    ms = value * 1000 if unit == "s" else value
    if ms <= 0:
        raise InputError(f"{where}: the ceiling must be more than 0 ms")
    return SloRule(objective, ms, route, where)


def _value_text(value: Any) -> tuple[float, str | None]:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(%|ms|s)?\s*", str(value))
    if m is None:
        raise ValueError(value)
    return float(m[1]), m[2]


def _from_mapping(entry: dict[str, Any], where: str) -> list[SloRule]:
    route = entry.get("route")
    if route is not None and not isinstance(route, str):
        raise InputError(f"{where}: route must be a label such as 'GET /api/orders/{{uuid}}'")
    objectives = {k: v for k, v in entry.items() if k != "route"}
    if not objectives:
        raise InputError(f"{where}: names no objective; give availability, p95 or p99")
    out = []
    for key, value in objectives.items():
        try:
            number, unit = _value_text(value)
        except ValueError:
            raise InputError(
                f"{where}: {key} = {value!r} is not a number (99.9%, 300ms, 1s)"
            ) from None
        op = ">=" if key == AVAILABILITY else "<="
        if key == AVAILABILITY and unit is None and number > 1:
            unit = "%"  # `availability: 99.9` can only mean a percentage
        out.append(_rule(str(key), op, number, unit, route, where))
    return out


def load_rules(path: str | Path) -> list[SloRule]:
    """An SLO file: YAML, or TOML (by its suffix), with an `slo:` list of rules."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{p}: cannot read the SLO file ({exc.strerror})") from None
    try:
        doc = tomllib.loads(text) if p.suffix.lower() == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(
            f"{p}: not valid {p.suffix.lstrip('.').upper() or 'YAML'} ({first})"
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("slo"), list):
        raise InputError(f"{p}: an SLO file needs a top-level `slo:` list ({_EXAMPLES})")
    rules: list[SloRule] = []
    for i, entry in enumerate(doc["slo"], start=1):
        where = f"{p}: slo rule {i}"
        if isinstance(entry, dict) and len(entry) == 1:
            ((key, value),) = entry.items()
            if isinstance(key, str) and " " in key.strip() and isinstance(value, str):
                # YAML reads `- GET /x: p95 <= 300ms` as a mapping; it is a rule's text.
                entry = f"{key}: {value}"
        if isinstance(entry, str):
            rules.append(parse_rule(entry, where))
        elif isinstance(entry, dict):
            rules.extend(_from_mapping(entry, where))
        else:
            raise InputError(f"{where}: write a rule as text or a mapping ({_EXAMPLES})")
    return rules


def gather_rules(texts: Sequence[str], files: Iterable[str | Path] = ()) -> list[SloRule]:
    return [*(r for f in files for r in load_rules(f)), *(parse_rule(t) for t in texts)]


def _measure(rule: SloRule, fig: RouteFigures) -> SloResult:
    if rule.objective == AVAILABILITY:
        attempted = fig.sent + fig.failed
        available = fig.availability
        if available is None:
            return SloResult(rule, fig.route, 0, None, "no requests")
        return SloResult(rule, fig.route, attempted, 1.0 - available, f"{available:.2%} available")
    hist = fig.histogram("staging")
    if not hist.total:
        return SloResult(rule, fig.route, 0, None, "no latencies")
    observed = hist.quantile_ms(rule.quantile)
    return SloResult(
        rule,
        fig.route,
        hist.total,
        hist.share_above(rule.target * 1000),
        f"{rule.objective} {observed:.1f} ms",
    )


def evaluate(rules: Sequence[SloRule], data: ReportData) -> list[SloResult]:
    """Every rule on every scope it applies to; each route's (and the run's) `slo_budget` is
    the most consumed of its budgets. A rule that matches no route says so in its result."""
    results: list[SloResult] = []
    for rule in rules:
        scopes = [f for f in [data.overall, *data.routes] if rule.applies_to(f.route)]
        if not scopes:
            results.append(SloResult(rule, rule.route or ALL_ROUTES, 0, None, "no such route"))
        results.extend(_measure(rule, fig) for fig in scopes)
    by_route = {f.route: f for f in [data.overall, *data.routes]}
    for result in results:
        fig = by_route.get(result.scope)
        if fig is not None and result.consumed is not None:
            fig.slo_budget = max(fig.slo_budget or 0.0, result.consumed)
    data.slo = results
    return results
