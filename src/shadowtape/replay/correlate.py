"""Learning correlation rules: values a server minted that the client sent back later.

A value first seen in a response of a session (a login token, a created order's id, an ETag)
and later seen in a request of the same session is a correlation. Counted across sessions, the
(step, response location) -> request locations pairs with enough support become rules that
replay applies: take staging's value at the same place, send it where the recorded one went.

Sanitized datasets correlate as well as raw ones: pseudonyms and credential tokens are keyed
and deterministic, so a token in a login body and in a later `Authorization` header stay equal.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shadowtape.errors import InputError
from shadowtape.http import jsonpath
from shadowtape.http.target import target_path
from shadowtape.replay.locations import request_values, response_values
from shadowtape.replay.plan import step_key
from shadowtape.replay.scan import iter_rows
from shadowtape.replay.sender import RequestParts

RULES_VERSION = 1
_TRIVIAL = frozenset({"true", "false", "null", "none", "ok", "yes", "no"})


@dataclass(frozen=True, slots=True)
class CorrelationRule:
    name: str
    step: str  # the step whose response mints the value, e.g. "POST /login"
    source: str  # where in that response, e.g. "json:$.token"
    targets: tuple[str, ...]  # where later requests send it, e.g. ("header:authorization",)
    support: int = 0  # sessions in which the pair was seen

    def to_yaml(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "step": self.step,
            "source": self.source,
            "targets": list(self.targets),
            "support": self.support,
        }


def worth_correlating(value: str) -> bool:
    """Minted values are ids and tokens: short words, flags and tiny numbers are coincidences."""
    v = value.strip()
    if len(v) < 3 or v.lower() in _TRIVIAL:
        return False
    return any(c.isdigit() for c in v) or len(v) >= 8


def parts_of(row: Mapping[str, Any]) -> RequestParts:
    target = row.get("request_target")
    return RequestParts(
        method=row["method"],
        host=row.get("host"),
        # The target's own path is exact (the path column shows odd bytes as display text),
        # so an unchanged path is sent as recorded.
        path=target_path(target) if target is not None else row.get("path") or "/",
        query=list(row.get("query") or []),
        headers=list(row.get("request_headers") or []),
        body=row.get("request_body"),
        target=target,
    )


@dataclass(slots=True)
class _SessionState:
    minted: dict[str, tuple[str, str]] = field(default_factory=dict)  # value -> (step, source)
    sent_first: set[str] = field(default_factory=set)
    pairs: set[tuple[str, str, str]] = field(default_factory=set)


def _learn_session(rows: list[Mapping[str, Any]], max_values: int) -> set[tuple[str, str, str]]:
    state = _SessionState()
    for row in sorted(rows, key=lambda r: (r["seq"], r["started_at"])):
        for location, value in request_values(parts_of(row)):
            origin = state.minted.get(value)
            if origin is not None:
                state.pairs.add((origin[0], origin[1], location))
            elif len(state.sent_first) < max_values:
                state.sent_first.add(value)
        step = step_key(row["method"], row.get("path"), row.get("route"))
        for location, value in response_values(
            list(row.get("response_headers") or []), row.get("response_body")
        ):
            if (
                value not in state.minted
                and value not in state.sent_first
                and len(state.minted) < max_values
                and worth_correlating(value)
            ):
                state.minted[value] = (step, location)
    return state.pairs


def learn_rules(
    rows: Iterable[Mapping[str, Any]],
    *,
    min_support: int = 2,
    max_sessions: int = 2000,
    max_rows: int = 50_000,
    max_values: int = 500,
) -> list[CorrelationRule]:
    """Rules from exchange rows (any order). Bounded: the first `max_sessions` sessions seen,
    at most `max_rows` rows, so learning over a huge dataset costs what a sample costs."""
    sessions: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    taken = 0
    for row in rows:
        sid = row["session_id"]
        if sid not in sessions and len(sessions) >= max_sessions:
            continue
        sessions[sid].append(row)
        taken += 1
        if taken >= max_rows:
            break
    support: Counter[tuple[str, str, str]] = Counter()
    for session_rows in sessions.values():
        support.update(_learn_session(session_rows, max_values))
    grouped: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for (step, source, target), n in support.items():
        if n >= min_support:
            grouped[(step, source)][target] = n
    rules = []
    for i, ((step, source), targets) in enumerate(sorted(grouped.items()), start=1):
        rules.append(
            CorrelationRule(
                name=f"r{i}",
                step=step,
                source=source,
                targets=tuple(sorted(targets)),
                support=max(targets.values()),
            )
        )
    return rules


def dump_rules(rules: list[CorrelationRule], path: str | os.PathLike[str]) -> None:
    doc = {
        "version": RULES_VERSION,
        "comment": (
            "shadowtape correlation rules: the value at `source` in the response to `step` "
            "is replaced by staging's value wherever later requests of the session send it "
            "at `targets`. Edit freely; delete a rule to turn it off."
        ),
        "rules": [r.to_yaml() for r in rules],
    }
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False, width=100))
    os.replace(tmp, p)


def load_rules(path: str | os.PathLike[str]) -> list[CorrelationRule]:
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise InputError(f"{p}: cannot read rules file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{p}: not valid YAML{where} ({problem})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list):
        raise InputError(f"{p}: a rules file needs a top-level `rules:` list")
    if doc.get("version", RULES_VERSION) != RULES_VERSION:
        raise InputError(f"{p}: rules version {doc.get('version')!r}; this shadowtape reads 1")
    rules = []
    names: set[str] = set()
    for i, item in enumerate(doc["rules"]):
        where = f"{p}: rule {i + 1}"
        if not isinstance(item, dict):
            raise InputError(f"{where}: must be a mapping with step, source and targets")
        missing = [k for k in ("step", "source", "targets") if not item.get(k)]
        if missing:
            raise InputError(f"{where}: missing {', '.join(missing)}")
        targets = item["targets"]
        if isinstance(targets, str):
            targets = [targets]
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise InputError(f"{where}: targets must be a list of locations")
        for loc in [item["source"], *targets]:
            if not isinstance(loc, str) or not _valid_location(loc):
                raise InputError(
                    f"{where}: bad location {loc!r}; use e.g. json:$.token, header:etag, "
                    "path[2], query:id, cookie:sid"
                )
        # JSON locations are compared as strings: spell them the one way (a file written
        # by hand, or before http.jsonpath, may quote keys differently).
        source = _canonical_location(item["source"])
        targets = [_canonical_location(t) for t in targets]
        name = str(item.get("name") or f"r{i + 1}")
        if name in names:
            raise InputError(f"{where}: duplicate rule name {name!r}")
        names.add(name)
        rules.append(
            CorrelationRule(
                name=name,
                step=str(item["step"]),
                source=source,
                targets=tuple(targets),
                support=int(item.get("support") or 0),
            )
        )
    return rules


_KINDS = ("json", "header", "set-cookie", "location", "query", "cookie", "form")


def _valid_location(loc: str) -> bool:
    if loc.startswith("path[") and loc.endswith("]"):
        return loc[5:-1].isdigit()
    kind, sep, name = loc.partition(":")
    if kind == "json" and sep:
        try:
            jsonpath.parse(name)
        except ValueError:
            return False
    return bool(sep and name) and kind in _KINDS


def _canonical_location(loc: str) -> str:
    kind, sep, name = loc.partition(":")
    return f"json:{jsonpath.canonical(name)}" if kind == "json" and sep else loc


def correlate_dataset(
    source: str, out: str | os.PathLike[str] | None, *, min_support: int = 2
) -> list[CorrelationRule]:
    """Learn rules from a dataset and write them to `out` (YAML) when given."""
    if min_support < 1:
        raise InputError("--min-support must be at least 1")
    rules = learn_rules(iter_rows(source), min_support=min_support)
    if out is not None:
        dump_rules(rules, out)
    return rules
