"""Matcher files: which parts of a request decide which recorded exchange answers it.

In the spirit of WireMock's request matching, a rule names one part of a request (a query
parameter, a header, a JSON path in the body) and says how it is judged:

    exact        the live value must equal the recorded one (else that exchange is no candidate)
    regex        the live value must match the pattern (full match); the recorded value is moot
    json_subset  the live JSON at the path must contain the given value (objects: these keys at
                 least; arrays: these elements at least); the recorded value is moot
    ignore       the part is not compared at all (timestamps, nonces, idempotency keys)

Everything no rule names is compared softly and only ranks candidates (see compare.py). The
defaults need no file: method and route template select, path, query and body rank.

    headers: [x-tenant]          # headers compared for every route (none by default)
    min_score: 0.0               # below this the best candidate is a miss
    rules:                       # for every route
      - {body: $.meta, ignore: true}
    routes:
      POST /v1/charges:
        rules:
          - {body: $.amount, exact: true}
          - {header: idempotency-key, ignore: true}
        faults: {error_rate: 0.05, timeout_rate: 0.01, reset_rate: 0}

A bad file is refused with one line naming the file, the line and the fix.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from shadowtape.errors import InputError
from shadowtape.http import jsonpath
from shadowtape.http.routes import PLACEHOLDER

PARTS = ("query", "header", "body")
KINDS = ("exact", "regex", "json_subset", "ignore")
_TOP_KEYS = {"headers", "min_score", "rules", "routes"}
_ROUTE_KEYS = {"headers", "min_score", "rules", "faults"}
_FAULT_KEYS = {"error_rate", "timeout_rate", "reset_rate"}


@dataclass(frozen=True, slots=True)
class Rule:
    part: str  # query | header | body
    name: str  # parameter name, lower-case header name, or JSON path
    kind: str  # exact | regex | json_subset | ignore
    where: str  # "FILE:LINE" for messages
    pattern: re.Pattern[str] | None = None
    value: Any = None
    steps: tuple[jsonpath.Step, ...] = ()  # JSON path steps (body rules)

    @property
    def label(self) -> str:
        shown = {"regex": f" /{self.pattern.pattern if self.pattern else ''}/"}.get(self.kind, "")
        return f"{self.part} {self.name} {self.kind}{shown}"


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Shares of requests given an injected fault; they add up to at most 1."""

    error: float = 0.0
    timeout: float = 0.0
    reset: float = 0.0

    @property
    def any(self) -> bool:
        return bool(self.error or self.timeout or self.reset)


@dataclass(frozen=True, slots=True)
class RouteMatchers:
    """The rules that apply to one route: the file's defaults merged with the route's own."""

    headers: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()
    min_score: float | None = None  # None: the file's default, else 0
    faults: FaultRates | None = None  # None: the command line's rates

    @property
    def threshold(self) -> float:
        return self.min_score or 0.0

    def rules_for(self, part: str) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.part == part)


@dataclass(frozen=True, slots=True)
class MatcherSet:
    defaults: RouteMatchers = field(default_factory=RouteMatchers)
    routes: dict[str, RouteMatchers] = field(default_factory=dict)  # template_key -> own rules
    route_lines: dict[str, str] = field(default_factory=dict)  # template_key -> "FILE:LINE"
    source: str = ""

    def for_route(self, label: str) -> RouteMatchers:
        own = self.routes.get(template_key(label))
        if own is None:
            return self.defaults
        d = self.defaults
        # A route's rule replaces a default rule on the same part and name.
        mine = {(r.part, r.name) for r in own.rules}
        rules = tuple(r for r in d.rules if (r.part, r.name) not in mine) + own.rules
        headers = tuple(dict.fromkeys(d.headers + own.headers))
        return RouteMatchers(
            headers=headers,
            rules=rules,
            min_score=own.min_score if own.min_score is not None else d.min_score,
            faults=own.faults if own.faults is not None else d.faults,
        )

    def unknown_routes(self, labels: set[str]) -> list[str]:
        """Routes the file names that the recording does not hold (a typo, most likely)."""
        known = {template_key(label) for label in labels}
        return [f"{self.route_lines[k]}: {k}" for k in self.routes if k not in known]


def template_key(label: str) -> str:
    """A route label with placeholder names dropped (`GET /a/{uuid}` -> `GET /a/{}`), so a
    matcher file may write `{id}` where inference wrote `{uuid}`."""
    method, _, path = label.strip().partition(" ")
    if not path:
        method, path = "", method
    return f"{method.upper()} {PLACEHOLDER.sub('{}', path)}".strip()


# --- loading --------------------------------------------------------------------------------


class _Where:
    def __init__(self, source: str) -> None:
        self.source = source

    def at(self, node: yaml.Node) -> str:
        return f"{self.source}:{node.start_mark.line + 1}"

    def fail(self, node: yaml.Node, what: str) -> InputError:
        return InputError(f"{self.at(node)}: {what}")


def _plain(node: yaml.Node) -> Any:
    """A YAML node as plain data (for json_subset values, which may be any JSON)."""
    return yaml.safe_load(yaml.serialize(node))


def _mapping(node: yaml.Node, where: _Where, what: str) -> list[tuple[yaml.Node, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise where.fail(node, f"{what} must be a mapping")
    return node.value


def _scalar(node: yaml.Node, where: _Where, what: str) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise where.fail(node, f"{what} must be a single value")
    return str(node.value)


def _rate(node: yaml.Node, where: _Where, what: str) -> float:
    text = _scalar(node, where, what)
    try:
        value = float(text)
    except ValueError:
        raise where.fail(node, f"{what} {text!r} is not a number, e.g. 0.05") from None
    if not 0.0 <= value <= 1.0:
        raise where.fail(node, f"{what} {value} is outside 0..1")
    return value


def _headers(node: yaml.Node, where: _Where) -> tuple[str, ...]:
    if not isinstance(node, yaml.SequenceNode):
        raise where.fail(node, "headers must be a list of header names, e.g. [x-tenant]")
    names = []
    for item in node.value:
        name = _scalar(item, where, "a header name").strip().lower()
        if not name or any(c in name for c in " :\t"):
            raise where.fail(item, f"{name!r} is not a header name")
        names.append(name)
    return tuple(names)


def _rule(node: yaml.Node, where: _Where) -> Rule:
    items = _mapping(node, where, "a rule")
    keys = {_scalar(k, where, "a rule key"): v for k, v in items}
    parts = [p for p in PARTS if p in keys]
    kinds = [k for k in KINDS if k in keys]
    extra = set(keys) - set(PARTS) - set(KINDS)
    if extra:
        raise where.fail(
            node,
            f"rule has unknown key {sorted(extra)[0]!r}; a rule is one of query/header/body "
            "and one of exact/regex/json_subset/ignore",
        )
    if len(parts) != 1:
        raise where.fail(node, "a rule names one of query: NAME, header: NAME, body: $.PATH")
    if len(kinds) != 1:
        raise where.fail(node, "a rule has exactly one of exact, regex, json_subset, ignore")
    part, kind = parts[0], kinds[0]
    name = _scalar(keys[part], where, part).strip()
    at = where.at(node)
    steps: tuple[jsonpath.Step, ...] = ()
    if part == "header":
        name = name.lower()
    if part == "body":
        try:
            steps = jsonpath.parse(name)
        except ValueError as exc:
            raise where.fail(keys[part], f"{exc}; write paths such as $.items[0].price") from None
        if kind != "ignore" and any(step[0] not in ("key", "index") for step in steps):
            raise where.fail(
                keys[part], f"{name}: only ignore rules may use wildcards; name one location"
            )
    if not name:
        raise where.fail(node, f"{part} needs a name")
    value_node = keys[kind]
    if kind in ("exact", "ignore"):
        flag = _plain(value_node)
        if flag is not True:
            example = f"{{{part}: {name}, {kind}: true}}"
            raise where.fail(value_node, f"{kind} takes true, e.g. {example}")
        return Rule(part, name, kind, at, steps=steps)
    if kind == "regex":
        text = _scalar(value_node, where, "regex")
        try:
            pattern = re.compile(text)
        except re.error as exc:
            raise where.fail(value_node, f"regex {text!r}: {exc}; fix the pattern") from None
        return Rule(part, name, kind, at, pattern=pattern, steps=steps)
    if part != "body":
        raise where.fail(node, "json_subset applies to body paths only")
    return Rule(part, name, kind, at, value=_plain(value_node), steps=steps)


def _route_matchers(node: yaml.Node, where: _Where, allowed: set[str], what: str) -> RouteMatchers:
    headers: tuple[str, ...] = ()
    rules: list[Rule] = []
    min_score: float | None = None
    faults: FaultRates | None = None
    for key_node, value in _mapping(node, where, what):
        key = _scalar(key_node, where, "a key")
        if key not in allowed:
            expected = ", ".join(sorted(allowed))
            raise where.fail(key_node, f"unknown key {key!r} in {what}; expected one of {expected}")
        if key == "headers":
            headers = _headers(value, where)
        elif key == "min_score":
            min_score = _rate(value, where, "min_score")
        elif key == "rules":
            if not isinstance(value, yaml.SequenceNode):
                raise where.fail(value, "rules must be a list of rules")
            rules.extend(_rule(item, where) for item in value.value)
        elif key == "faults":
            rates = {}
            for fk, fv in _mapping(value, where, "faults"):
                name = _scalar(fk, where, "a fault rate")
                if name not in _FAULT_KEYS:
                    raise where.fail(
                        fk, f"unknown fault {name!r}; expected {', '.join(sorted(_FAULT_KEYS))}"
                    )
                rates[name.removesuffix("_rate")] = _rate(fv, where, name)
            faults = FaultRates(**rates)
            if faults.error + faults.timeout + faults.reset > 1.0:
                raise where.fail(value, "fault rates add up to more than 1")
    seen: dict[tuple[str, str], Rule] = {}
    for rule in rules:
        other = seen.get((rule.part, rule.name))
        if other is not None:
            raise InputError(
                f"{rule.where}: a second rule for {rule.part} {rule.name} (the first is at "
                f"{other.where}); keep one"
            )
        seen[(rule.part, rule.name)] = rule
    return RouteMatchers(headers=headers, rules=tuple(rules), min_score=min_score, faults=faults)


def load_matchers(path: str | Path) -> MatcherSet:
    """A YAML or JSON matcher file; InputError (exit 2) with file and line when it is wrong."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{p}: cannot read the matcher file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise InputError(f"{p}: not UTF-8 text; a matcher file is YAML or JSON") from None
    where = _Where(str(p))
    if p.suffix.lower() == ".json":
        try:
            json.loads(text)
        except ValueError as exc:
            raise InputError(f"{p}: not valid JSON ({exc}); fix the file") from None
        # Valid JSON holds tabs only as whitespace, which YAML (read for its line numbers)
        # refuses there; spaces say the same.
        text = text.replace("\t", " ")
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{p}{line}: not valid YAML/JSON ({problem}); fix the file") from None
    if root is None:
        return MatcherSet(source=str(p))
    top = _route_matchers(
        _strip_routes(root, where), where, _TOP_KEYS - {"routes"}, "the matcher file"
    )
    defaults = replace(top, min_score=top.threshold)
    routes: dict[str, RouteMatchers] = {}
    lines: dict[str, str] = {}
    for key_node, value in _routes_node(root, where):
        label = _scalar(key_node, where, "a route")
        method, _, route_path = label.strip().partition(" ")
        if not route_path.startswith("/") or not method.isalpha():
            raise where.fail(key_node, f"route {label!r}: write it as METHOD /path/{{param}}")
        key = template_key(label)
        if key in routes:
            raise where.fail(key_node, f"route {label!r} appears twice (first at {lines[key]})")
        routes[key] = _route_matchers(value, where, _ROUTE_KEYS, f"route {label!r}")
        lines[key] = where.at(key_node)
    return MatcherSet(defaults, routes, lines, str(p))


def _strip_routes(root: yaml.Node, where: _Where) -> yaml.Node:
    items = _mapping(root, where, "the matcher file")
    for key_node, _ in items:
        key = _scalar(key_node, where, "a key")
        if key not in _TOP_KEYS:
            raise where.fail(
                key_node,
                f"unknown key {key!r}; a matcher file has {', '.join(sorted(_TOP_KEYS))}",
            )
    kept = [(k, v) for k, v in items if k.value != "routes"]
    return yaml.MappingNode(root.tag, kept, root.start_mark, root.end_mark)


def _routes_node(root: yaml.Node, where: _Where) -> list[tuple[yaml.Node, yaml.Node]]:
    for key_node, value in root.value:
        if key_node.value == "routes":
            return _mapping(value, where, "routes")
    return []
