"""Applying correlation rules during replay, one session at a time.

After a step's response, the recorded value at each rule's source is bound to staging's
value at the same place (or to None when staging did not return one: a miss). Before each
later request of the session, recorded values found at the rules' targets are swapped for
their staging values.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from shadowtape.replay.correlate import CorrelationRule
from shadowtape.replay.locations import (
    parse_json,
    replace_in_request,
    request_values,
    response_value,
)
from shadowtape.replay.sender import RequestParts

Pairs = list[tuple[str, str]]
MAX_BINDINGS_PER_RULE = 1000


@dataclass(frozen=True, slots=True)
class Substitution:
    rule: str
    location: str
    outcome: str  # substituted | miss

    def as_row(self) -> dict[str, str]:
        return {"rule": self.rule, "location": self.location, "outcome": self.outcome}


@dataclass(slots=True)
class SessionBindings:
    """rule name -> recorded value -> staging value (None: staging did not mint one)."""

    values: dict[str, dict[str, str | None]] = field(default_factory=lambda: defaultdict(dict))


class Correlator:
    def __init__(self, rules: list[CorrelationRule]) -> None:
        self.rules = rules
        self.by_step: dict[str, list[CorrelationRule]] = defaultdict(list)
        for rule in rules:
            self.by_step[rule.step].append(rule)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def apply(self, bindings: SessionBindings, parts: RequestParts) -> list[Substitution]:
        """Swap bound values into `parts` in place; misses are reported, not swapped."""
        out: list[Substitution] = []
        if not bindings.values:
            return out
        for rule in self.rules:
            bound = bindings.values.get(rule.name)
            if not bound:
                continue
            targets = set(rule.targets)
            found = [
                (loc, value)
                for loc, value in request_values(parts)
                if loc in targets and value in bound
            ]
            done: set[tuple[str, str]] = set()
            for loc, value in found:
                if (loc, value) in done:
                    continue
                done.add((loc, value))
                new = bound[value]
                if new is None:
                    out.append(Substitution(rule.name, loc, "miss"))
                elif new == value or replace_in_request(parts, loc, value, new):
                    out.append(Substitution(rule.name, loc, "substituted"))
        return out

    def learn(
        self,
        bindings: SessionBindings,
        step: str,
        recorded_headers: Pairs,
        recorded_body: bytes | None,
        staging_headers: Pairs | None,
        staging_body: bytes | None,
    ) -> None:
        """Bind recorded -> staging values for the rules whose source is this step.

        `staging_headers` None means the step got no staging response (skipped, failed).
        """
        rules = self.by_step.get(step)
        if not rules:
            return
        rec_doc = parse_json(recorded_body)
        stg_doc = parse_json(staging_body) if staging_headers is not None else None
        for rule in rules:
            recorded = response_value(rule.source, recorded_headers, recorded_body, rec_doc)
            if recorded is None:
                continue
            staged = None
            if staging_headers is not None:
                staged = response_value(rule.source, staging_headers, staging_body, stg_doc)
            bound = bindings.values[rule.name]
            if len(bound) < MAX_BINDINGS_PER_RULE or recorded in bound:
                bound[recorded] = staged
