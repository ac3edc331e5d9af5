"""Which of equally good recorded answers comes next: recorded order, then a policy.

Candidates that score the same for a request (usually: the recording holds that very request
several times) are answered in recorded order, each once, so the Nth identical request gets the
Nth recorded answer: a `GET /orders/{id}` before and after a cancel gets "placed" and then
"cancelled". When they are all used the `--exhausted` policy decides: `cycle` starts over,
`repeat-last` keeps giving the last one (the state the recording ended in), `miss` answers
nothing. Session pools and the route-wide pool are used up separately.
"""

from __future__ import annotations

from dataclasses import dataclass, field

EXHAUSTED_POLICIES = ("repeat-last", "cycle", "miss")
CYCLE = "cycle"
REPEAT_LAST = "repeat-last"
MISS = "miss"


@dataclass(frozen=True, slots=True)
class Pick:
    index: int | None  # None: exhausted under `miss`
    exhausted: str | None  # the policy that answered, when the pool had run out


@dataclass
class Pool:
    """Used-up flags for one scope (all sessions' pools, or the route-wide pool)."""

    size: int
    used: bytearray = field(init=False)
    # Where the first unused member of a stable group may be; the fingerprint index's lists
    # are stable, so a long run of identical requests is not rescanned from the start.
    _hint: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.used = bytearray(self.size)

    def pick(self, group: list[int], policy: str, stable: bool = False) -> Pick:
        start = self._hint.get(id(group), 0) if stable else 0
        used = self.used
        for pos in range(start, len(group)):
            i = group[pos]
            if not used[i]:
                used[i] = 1
                if stable:
                    self._hint[id(group)] = pos + 1
                return Pick(i, None)
        if policy == REPEAT_LAST:
            return Pick(group[-1], REPEAT_LAST)
        if policy == CYCLE:
            for i in group:
                used[i] = 0
            used[group[0]] = 1
            if stable:
                self._hint[id(group)] = 1
            return Pick(group[0], CYCLE)
        return Pick(None, MISS)
