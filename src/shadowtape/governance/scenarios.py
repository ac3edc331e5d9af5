"""Scenarios: named slices of traffic, tagged by risk, defined in shadowtape.toml.

    [governance]
    confirm-risk = "high"            # replaying a scenario at or above this needs
                                     # --confirm-risk LEVEL (recorded in the audit trail)
    [scenarios.checkout]
    description = "cart to paid order"
    routes = ["POST /cart/{id}/checkout", "GET /orders/{id}"]
    methods = ["GET", "POST"]        # optional: only exchanges with these methods count
    sessions = "^tenant-a/"          # optional: a regex the session id must match (search)
    risk = "high"                    # low | medium | high | critical (default medium)
    requires = { min-sessions = 5, writes = true }
    depends-on = ["login"]           # replayed with it; must be defined
    fail-on = ["status_mismatch>0"]  # report gates for this scenario's routes

A session belongs to a scenario when its id matches `sessions` (if given) and at least one of
its exchanges matches one of `routes` (any exchange when no routes are given) with a method in
`methods` (any when not given). Whole sessions are replayed, never single requests: a checkout
needs the login before it. In `report` (which works on routes, not sessions) a scenario's
figures are those of the routes its templates match.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shadowtape.errors import InputError
from shadowtape.governance.routes import RouteTemplate, compile_route

RISKS = ("low", "medium", "high", "critical")
TABLE = "scenarios"
GOVERNANCE = "governance"
_KEYS = {
    "description",
    "routes",
    "methods",
    "sessions",
    "risk",
    "requires",
    "depends-on",
    "fail-on",
}
_REQUIRES = {"min-sessions", "writes"}
_GOVERNANCE_KEYS = {"confirm-risk"}
_RISK_FILTER = re.compile(r"^\s*(>=|<=|==|>|<|=)?\s*([a-z]+)\s*$")


def risk_rank(level: str) -> int:
    return RISKS.index(level)


def check_risk(level: str, where: str) -> str:
    value = level.strip().lower() if isinstance(level, str) else level
    if value not in RISKS:
        raise InputError(f"{where}: risk {level!r}: use one of {', '.join(RISKS)}")
    return value


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    risk: str = "medium"
    description: str = ""
    routes: tuple[RouteTemplate, ...] = ()
    methods: frozenset[str] = frozenset()
    sessions: re.Pattern[str] | None = None
    min_sessions: int = 1
    needs_writes: bool = False
    depends_on: tuple[str, ...] = ()
    fail_on: tuple[str, ...] = ()
    source: str = ""  # FILE:LINE [scenarios.NAME] of its table
    requires_source: str = ""  # ... and of its `requires`

    def matches_exchange(self, method: str, path: str | None) -> bool:
        m = (method or "").upper()
        if self.methods and m not in self.methods:
            return False
        return not self.routes or any(r.matches(m, path) for r in self.routes)

    def matches_session_id(self, session_id: str) -> bool:
        return self.sessions is None or bool(self.sessions.search(session_id))

    def matches_route_label(self, label: str) -> bool:
        method = label.partition(" ")[0].upper()
        if self.methods and method not in self.methods:
            return False
        return not self.routes or any(r.matches_label(label) for r in self.routes)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "risk": self.risk,
            "routes": [r.text for r in self.routes],
            "methods": sorted(self.methods),
            "sessions": self.sessions.pattern if self.sessions else None,
            "min_sessions": self.min_sessions,
            "writes": self.needs_writes,
            "depends_on": list(self.depends_on),
            "fail_on": list(self.fail_on),
        }


@dataclass(frozen=True, slots=True)
class Registry:
    scenarios: Mapping[str, Scenario] = field(default_factory=dict)
    confirm_risk: str | None = None
    confirm_source: str = ""

    def __bool__(self) -> bool:
        return bool(self.scenarios)

    def names(self) -> list[str]:
        return sorted(self.scenarios)


# --- reading the config tables ------------------------------------------------------------


def _where(path: Path | None, lines: Mapping[tuple[str, str], int], section: str, key: str) -> str:
    line = lines.get((section, key)) or lines.get((section, ""))
    return f"{path}:{line} [{section}]" if path is not None and line else f"[{section}]"


def _strings(value: Any, where: str, key: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{where}: {key} must be a string or a list of strings")
    return value


def _scenario(
    name: str,
    table: Mapping[str, Any],
    path: Path | None,
    lines: Mapping[tuple[str, str], int],
    check_gate: Callable[[str], object] | None,
) -> Scenario:
    section = f"{TABLE}.{name}"

    def where(key: str) -> str:
        return _where(path, lines, section, key)

    if not isinstance(table, dict):
        raise InputError(f"{where('')}: [{section}] must be a table of settings")
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise InputError(
            f"{where(unknown[0])}: unknown scenario setting {unknown[0]!r}; "
            f"allowed: {', '.join(sorted(_KEYS))}"
        )
    routes = []
    for text in _strings(table.get("routes", []), where("routes"), "routes"):
        try:
            routes.append(compile_route(text))
        except InputError as exc:
            raise InputError(f"{where('routes')}: {exc}") from None
    methods = frozenset(
        m.upper() for m in _strings(table.get("methods", []), where("methods"), "methods")
    )
    sessions = None
    if "sessions" in table:
        pattern = table["sessions"]
        if not isinstance(pattern, str):
            raise InputError(f"{where('sessions')}: sessions must be a regex string")
        try:
            sessions = re.compile(pattern)
        except re.error as exc:
            raise InputError(
                f"{where('sessions')}: sessions {pattern!r}: bad regex ({exc})"
            ) from None
    risk = check_risk(table.get("risk", "medium"), where("risk"))
    requires = table.get("requires", {})
    if not isinstance(requires, dict):
        raise InputError(
            f"{where('requires')}: requires must be a table, e.g. {{ min-sessions = 5 }}"
        )
    bad = sorted(set(requires) - _REQUIRES)
    if bad:
        raise InputError(
            f"{where('requires')}: unknown requirement {bad[0]!r}; "
            f"allowed: {', '.join(sorted(_REQUIRES))}"
        )
    min_sessions = requires.get("min-sessions", 1)
    if not isinstance(min_sessions, int) or isinstance(min_sessions, bool) or min_sessions < 0:
        raise InputError(f"{where('requires')}: min-sessions must be a whole number >= 0")
    writes = requires.get("writes", False)
    if not isinstance(writes, bool):
        raise InputError(f"{where('requires')}: writes must be true or false")
    fail_on = tuple(_strings(table.get("fail-on", []), where("fail-on"), "fail-on"))
    for rule in fail_on if check_gate is not None else ():
        try:
            check_gate(rule)
        except InputError as exc:
            raise InputError(f"{where('fail-on')}: {exc}") from None
    description = table.get("description", "")
    if not isinstance(description, str):
        raise InputError(f"{where('description')}: description must be a string")
    return Scenario(
        name=name,
        risk=risk,
        description=description,
        routes=tuple(routes),
        methods=methods,
        sessions=sessions,
        min_sessions=min_sessions,
        needs_writes=writes,
        depends_on=tuple(_strings(table.get("depends-on", []), where("depends-on"), "depends-on")),
        fail_on=fail_on,
        source=where(""),
        requires_source=where("requires"),
    )


def load_registry(
    tables: Mapping[str, Any],
    path: Path | None = None,
    lines: Mapping[tuple[str, str], int] | None = None,
    check_gate: Callable[[str], object] | None = None,
) -> Registry:
    """The [scenarios.*] and [governance] tables of shadowtape.toml, checked, with FILE:LINE
    in every error. `check_gate` validates `fail-on` rules (the report stage's grammar, passed
    in so this leaf imports no stage)."""
    lines = lines or {}
    raw = tables.get(TABLE, {}) or {}
    scenarios = {name: _scenario(name, t, path, lines, check_gate) for name, t in raw.items()}
    for s in scenarios.values():
        for dep in s.depends_on:
            if dep not in scenarios:
                raise InputError(
                    f"{_where(path, lines, f'{TABLE}.{s.name}', 'depends-on')}: depends on "
                    f"{dep!r}, which is not defined; defined: {', '.join(sorted(scenarios))}"
                )
    for name in scenarios:
        _closure(scenarios, [name], path, lines)  # raises on a cycle
    gov = tables.get(GOVERNANCE, {}) or {}
    unknown = sorted(set(gov) - _GOVERNANCE_KEYS)
    if unknown:
        raise InputError(
            f"{_where(path, lines, GOVERNANCE, unknown[0])}: unknown setting {unknown[0]!r}; "
            f"allowed: {', '.join(sorted(_GOVERNANCE_KEYS))}"
        )
    confirm = None
    where = _where(path, lines, GOVERNANCE, "confirm-risk")
    if "confirm-risk" in gov:
        confirm = check_risk(gov["confirm-risk"], where)
    return Registry(scenarios, confirm, where)


def _closure(
    scenarios: Mapping[str, Scenario],
    names: Iterable[str],
    path: Path | None = None,
    lines: Mapping[tuple[str, str], int] | None = None,
) -> list[Scenario]:
    out: dict[str, Scenario] = {}

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if name in trail:
            cycle = " -> ".join((*trail, name))
            raise InputError(
                f"{_where(path, lines or {}, f'{TABLE}.{trail[0]}', 'depends-on')}: "
                f"dependency cycle {cycle}"
            )
        if name in out:
            return
        s = scenarios[name]
        out[name] = s
        for dep in s.depends_on:
            visit(dep, (*trail, name))

    for n in names:
        visit(n, ())
    return list(out.values())


# --- selecting ----------------------------------------------------------------------------


def parse_risk_filter(text: str) -> tuple[str, str]:
    """`>=high`, `high` (= exactly), `<medium` -> (op, level)."""
    m = _RISK_FILTER.match(text or "")
    if m is None or m.group(2) not in RISKS:
        raise InputError(
            f"--risk {text!r}: write [OP]LEVEL, e.g. '>=high' or 'critical'; "
            f"levels {', '.join(RISKS)}, OP one of >= > <= < =="
        )
    op = m.group(1) or "=="
    return ("==" if op == "=" else op), m.group(2)


def _risk_matches(level: str, op: str, bound: str) -> bool:
    a, b = risk_rank(level), risk_rank(bound)
    return {">=": a >= b, ">": a > b, "<=": a <= b, "<": a < b, "==": a == b}[op]


def select(
    registry: Registry, names: Sequence[str] = (), risk: str | None = None
) -> list[Scenario]:
    """The scenarios `--scenario NAME` (repeatable) and `--risk FILTER` pick, with their
    dependencies; [] when neither is given."""
    if not names and risk is None:
        return []
    if not registry:
        raise InputError(
            "no scenarios are defined; add [scenarios.NAME] tables to shadowtape.toml "
            "(see `shadowtape replay --help`)"
        )
    chosen: list[str] = []
    for n in names:
        if n not in registry.scenarios:
            raise InputError(
                f"--scenario {n}: not defined in shadowtape.toml; "
                f"defined: {', '.join(registry.names())}"
            )
        chosen.append(n)
    if risk is not None:
        op, bound = parse_risk_filter(risk)
        picked = [s.name for s in registry.scenarios.values() if _risk_matches(s.risk, op, bound)]
        if not picked:
            raise InputError(
                f"--risk {risk!r}: no scenario has that risk; defined: {_risks(registry)}"
            )
        chosen += [p for p in sorted(picked) if p not in chosen]
    return _closure(registry.scenarios, chosen)


def _risks(registry: Registry) -> str:
    return ", ".join(f"{s.name} ({s.risk})" for s in registry.scenarios.values())


def needed_confirmation(registry: Registry, scenarios: Sequence[Scenario]) -> str | None:
    """The risk level that must be confirmed to run these scenarios, or None."""
    if registry.confirm_risk is None or not scenarios:
        return None
    top = max(scenarios, key=lambda s: risk_rank(s.risk))
    return top.risk if risk_rank(top.risk) >= risk_rank(registry.confirm_risk) else None


def check_confirmed(
    registry: Registry, scenarios: Sequence[Scenario], confirmed: str | None
) -> str | None:
    """Refuses (InputError, exit 2) unless --confirm-risk covers the riskiest scenario;
    returns the level confirmed (for the audit record) or None when none was needed."""
    if confirmed is not None:
        confirmed = check_risk(confirmed, "--confirm-risk")
    need = needed_confirmation(registry, scenarios)
    if need is None:
        return confirmed
    if confirmed is None or risk_rank(confirmed) < risk_rank(need):
        names = ", ".join(s.name for s in scenarios if risk_rank(s.risk) >= risk_rank(need))
        raise InputError(
            f"scenario {names} is {need} risk ([governance] confirm-risk = "
            f"{registry.confirm_risk!r} at {registry.confirm_source}); pass --confirm-risk {need} "
            "to run it (recorded in the audit log with --actor)"
        )
    return confirmed


def check_requirements(scenarios: Sequence[Scenario], allow_writes: bool) -> None:
    for s in scenarios:
        if s.needs_writes and not allow_writes:
            raise InputError(
                f"scenario {s.name} requires writes ({s.requires_source}: writes = true); "
                "add --allow-writes"
            )


@dataclass(frozen=True, slots=True)
class SessionFilter:
    """What replay needs of the chosen scenarios: picklable, so Ray senders get it."""

    scenarios: tuple[Scenario, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.scenarios)

    def matching(self, session_id: str, method: str, path: str | None) -> list[str]:
        """Names of the scenarios this one exchange puts its session in."""
        return [
            s.name
            for s in self.scenarios
            if s.matches_session_id(session_id) and s.matches_exchange(method, path)
        ]

    def check_counts(self, sessions: Mapping[str, int], source: str) -> None:
        for s in self.scenarios:
            n = sessions.get(s.name, 0)
            if n < s.min_sessions:
                raise InputError(
                    f"scenario {s.name} needs at least {s.min_sessions} sessions "
                    f"(min-sessions at {s.requires_source}); {source} has {n}"
                )
