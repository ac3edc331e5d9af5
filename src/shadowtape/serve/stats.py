"""What the double did, counted: live at /__shadowtape/stats, and in the summary at exit.

Every request lands in exactly one outcome (matched, missed, fallback, fault), so the outcomes
add up to the requests; every served-dataset row is written or counted as dropped.
Counters are touched only on the event loop's thread, so they need no lock.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


def counts_text(counts: Counter[str]) -> str:
    """`error 3, reset 1`: a counter in one short phrase, keys in order."""
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


@dataclass(slots=True)
class RouteCounters:
    requests: int = 0
    matched: int = 0
    missed: int = 0
    faults: int = 0
    score_sum: float = 0.0

    def as_json(self) -> dict[str, Any]:
        mean = self.score_sum / self.matched if self.matched else None
        return {
            "requests": self.requests,
            "matched": self.matched,
            "missed": self.missed,
            "faults": self.faults,
            "mean_score": None if mean is None else round(mean, 4),
        }


@dataclass
class ServeCounters:
    requests: int = 0
    matched: int = 0
    matched_by_session: int = 0
    matched_by_route: int = 0
    exact_matches: int = 0  # score 1.0
    missed: Counter[str] = field(default_factory=Counter)  # by reason kind
    exhausted: Counter[str] = field(default_factory=Counter)  # by policy that answered
    unknown_sessions: int = 0  # a session key the recording does not hold
    fallback_forwarded: int = 0
    fallback_failed: int = 0
    fallback_recorded: int = 0
    recorded_faults: Counter[str] = field(default_factory=Counter)
    injected_faults: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)  # 2xx, 4xx, ... as sent
    client_gone: int = 0  # the client closed before its answer was due
    bad_requests: int = 0  # unparseable HTTP, answered 400 and closed
    internal: int = 0  # /__shadowtape/* calls, not counted as requests
    served_rows_written: int = 0
    served_rows_dropped: int = 0
    recorded_rows_dropped: int = 0
    per_route: dict[str, RouteCounters] = field(default_factory=dict)

    @property
    def missed_total(self) -> int:
        return sum(self.missed.values())

    @property
    def faults_total(self) -> int:
        return sum(self.injected_faults.values())

    def route(self, label: str) -> RouteCounters:
        counters = self.per_route.get(label)
        if counters is None:
            counters = self.per_route[label] = RouteCounters()
        return counters

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "matched": self.matched,
            "matched_by_session": self.matched_by_session,
            "matched_by_route": self.matched_by_route,
            "exact_matches": self.exact_matches,
            "missed": self.missed_total,
            "missed_by_reason": dict(sorted(self.missed.items())),
            "exhausted": dict(sorted(self.exhausted.items())),
            "unknown_sessions": self.unknown_sessions,
            "fallback": {
                "forwarded": self.fallback_forwarded,
                "failed": self.fallback_failed,
                "recorded": self.fallback_recorded,
                "recorded_dropped": self.recorded_rows_dropped,
            },
            "recorded_faults": dict(sorted(self.recorded_faults.items())),
            "injected_faults": dict(sorted(self.injected_faults.items())),
            "statuses": dict(sorted(self.statuses.items())),
            "client_gone": self.client_gone,
            "bad_requests": self.bad_requests,
            "internal_calls": self.internal,
            "served_rows": {
                "written": self.served_rows_written,
                "dropped": self.served_rows_dropped,
            },
            "routes": {k: v.as_json() for k, v in sorted(self.per_route.items())},
        }

    def line(self) -> str:
        """One line for a live display and for the demo's transcript."""
        parts = [
            f"{self.requests} requests",
            f"{self.matched} matched ({self.matched_by_session} by session, "
            f"{self.matched_by_route} by route, {self.exact_matches} exact)",
            f"{self.missed_total} missed",
        ]
        if self.fallback_forwarded or self.fallback_failed:
            parts.append(f"{self.fallback_forwarded} forwarded ({self.fallback_recorded} recorded)")
        if self.injected_faults:
            parts.append(f"faults {counts_text(self.injected_faults)}")
        if self.recorded_faults:
            parts.append(f"recorded failures {counts_text(self.recorded_faults)}")
        return ", ".join(parts)
