"""The double's decision for one request: which recorded answer, after what delay, with what
fault; or a miss, and why. Pure logic over the loaded recording and the double's state; the
server does the I/O.

In order: the route (method + template) and the request's arrival index on it; an injected
fault, seeded (a fault stands in for the dependency failing before it answers, so it uses up
no recorded answer and a retry gets the answer the first try would have had); the recorded
session the request belongs to, by `--session-key`; candidates from that session's exchanges on
the route, else the whole route's; the best-scoring candidates (compare.py), a recorded
exchange for the very same path preferred; the next of them in recorded order (selection.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from shadowtape.serve.compare import Compared, RequestView, RouteComparer, path_distance
from shadowtape.serve.faults import (
    FAULT_ERROR,
    FAULT_RESET,
    FAULT_TIMEOUT,
    LatencyModel,
    injected_fault,
)
from shadowtape.serve.matchers import FaultRates
from shadowtape.serve.recording import Recorded, Recording
from shadowtape.serve.selection import MISS, Pool
from shadowtape.serve.stats import ServeCounters
from shadowtape.sessions import SessionKey, session_identity

# Candidates scored at most per request when the recording does not hold it verbatim: beyond
# this a near-miss search costs more than it tells. Counted when it happens.
MAX_SCORED = 5000

MATCHED = "matched"
MISSED = "missed"
FALLBACK = "fallback"
FAULT = "fault"

SEND = "send"
RESET = "reset"
HOLD = "hold"
FORWARD = "forward"

# Miss reason kinds, the keys of the missed counter.
NO_ROUTE = "no_route"
RULE = "rule"
BELOW_MIN_SCORE = "below_min_score"
EXHAUSTED = "exhausted"


@dataclass(slots=True)
class Decision:
    route: str
    arrival: int
    outcome: str  # matched | missed | fallback | fault
    action: str  # send | reset | hold | forward
    scope: str | None = None  # session | route
    exchange: Recorded | None = None
    score: float | None = None
    exhausted: str | None = None
    miss_kind: str | None = None
    miss_reason: str | None = None
    closest: Recorded | None = None
    closest_score: float | None = None
    recorded_fault: str | None = None
    injected_fault: str | None = None
    delay_us: int = 0


@dataclass(frozen=True, slots=True)
class Policy:
    exhausted: str
    miss: str  # 404 | 502 | fallback
    rates: FaultRates
    seed: int
    latency: LatencyModel
    session_key: SessionKey


@dataclass(slots=True)
class _Best:
    group: list[int]
    stable: bool
    score: float | None
    failure: str | None = None  # why no candidate qualified
    failure_kind: str | None = None
    closest: int | None = None
    closest_score: float | None = None


class Decider:
    def __init__(self, recording: Recording, policy: Policy, counters: ServeCounters) -> None:
        self.recording = recording
        self.policy = policy
        self.counters = counters
        self.arrivals: dict[str, int] = {}
        n = len(recording.exchanges)
        self.session_pool = Pool(n)
        self.route_pool = Pool(n)
        self.truncated_searches = 0

    def decide(self, view: RequestView, header_pairs: list[tuple[str, str]]) -> Decision:
        rec = self.recording
        route = rec.route_of(view.method, view.path)
        if view.method == "HEAD" and route not in rec.by_route:
            # HEAD is GET without the body (RFC 9110 9.3.2): a recorded GET answers it.
            as_get = rec.route_of("GET", view.path)
            route = as_get if as_get in rec.by_route else route
        arrival = self.arrivals.get(route, 0)
        self.arrivals[route] = arrival + 1
        c = self.counters
        c.requests += 1
        rc = c.route(route)
        rc.requests += 1

        comparer = rec.comparer(route)
        rates = comparer.matchers.faults or self.policy.rates
        fault = injected_fault(self.policy.seed, rates, route, arrival)
        if fault is not None:
            c.injected_faults[fault] += 1
            rc.faults += 1
            action = {FAULT_RESET: RESET, FAULT_TIMEOUT: HOLD, FAULT_ERROR: SEND}[fault]
            return Decision(route, arrival, FAULT, action, injected_fault=fault)

        if route not in rec.by_route:
            reason, nearest = self._no_route(view, route)
            return self._miss(route, arrival, NO_ROUTE, reason, nearest, None)

        live = comparer.compared(view)
        failure = comparer.request_failure(view)
        if failure is not None:
            return self._miss(route, arrival, RULE, failure, None, None)

        scope, best = "route", None
        session_id = self._session_of(header_pairs)
        if session_id is not None and (session_id, route) in rec.by_session:
            key = (session_id, route)
            best = self._best(
                view,
                live,
                comparer,
                rec.by_session_fingerprint[key],
                rec.by_session_path[key],
                rec.by_session[key],
            )
            scope = "session" if best.group else "route"
        if best is None or not best.group:
            best = self._best(
                view,
                live,
                comparer,
                rec.by_fingerprint[route],
                rec.by_path[route],
                rec.by_route[route],
            )
        if not best.group:
            closest = rec.exchanges[best.closest] if best.closest is not None else None
            kind = best.failure_kind or BELOW_MIN_SCORE
            return self._miss(
                route, arrival, kind, best.failure or "no candidate", closest, best.closest_score
            )
        pool = self.session_pool if scope == "session" else self.route_pool
        pick = pool.pick(best.group, self.policy.exhausted, best.stable)
        if pick.index is None:
            last = rec.exchanges[best.group[-1]]
            reason = (
                f"all {len(best.group)} recorded answers for this request in the {scope} "
                "are used (--exhausted miss)"
            )
            return self._miss(route, arrival, EXHAUSTED, reason, last, best.score)
        if pick.exhausted is not None:
            c.exhausted[pick.exhausted] += 1
        ex = rec.exchanges[pick.index]
        c.matched += 1
        rc.matched += 1
        score = best.score if best.score is not None else 1.0
        rc.score_sum += score
        if scope == "session":
            c.matched_by_session += 1
        else:
            c.matched_by_route += 1
        c.exact_matches += int(score == 1.0)
        decision = Decision(
            route, arrival, MATCHED, SEND, scope, ex, score, exhausted=pick.exhausted
        )
        if ex.fault is not None:
            c.recorded_faults[ex.fault] += 1
            decision.recorded_fault = ex.fault
            decision.action = RESET if ex.fault == FAULT_RESET else HOLD
            return decision
        decision.delay_us = self.policy.latency.delay_us(
            ex.latency_us, rec.latencies.get(route, []), route, arrival
        )
        return decision

    def _session_of(self, header_pairs: list[tuple[str, str]]) -> str | None:
        key = self.policy.session_key
        if key.kind == "client":
            return None
        identity = session_identity(key, header_pairs)
        if identity is None:
            return None
        session_id = self.recording.session_of.get(identity)
        if session_id is None:
            self.counters.unknown_sessions += 1
        return session_id

    def _best(
        self,
        view: RequestView,
        live: Compared,
        comparer: RouteComparer,
        by_fp: dict,
        by_path: dict,
        everything: list[int],
    ) -> _Best:
        exchanges = self.recording.exchanges
        group = by_fp.get(live.fingerprint)
        if group is not None:
            if not comparer.exact_rules:
                return _Best(group, True, 1.0)
            kept = [i for i in group if comparer.exact_failure(view, exchanges[i].view) is None]
            if kept:
                return _Best(kept, len(kept) == len(group), 1.0)
        # Not held verbatim: rank the candidates, those for the very same path first.
        candidates = by_path.get(view.path) or everything
        if len(candidates) > MAX_SCORED:
            self.truncated_searches += 1
            candidates = candidates[:MAX_SCORED]
        best_score = -1.0
        best: list[int] = []
        closest = None
        failure = None
        for i in candidates:
            ex = exchanges[i]
            assert ex.compared is not None
            reason = comparer.exact_failure(view, ex.view) if comparer.exact_rules else None
            if reason is not None:
                if failure is None:
                    failure = reason
                    closest = i
                continue
            score = comparer.score(live, ex.compared)
            if score > best_score:
                best_score, best = score, [i]
            elif score == best_score:
                best.append(i)
        if not best:
            return _Best([], False, None, failure, RULE, closest, None)
        threshold = comparer.matchers.threshold
        if best_score < threshold:
            ex = exchanges[best[0]]
            assert ex.compared is not None
            why = (
                f"best candidate scores {best_score:.3f}, below min_score {threshold:g}; "
                + comparer.explain(live, ex.compared)
            )
            return _Best([], False, None, why, BELOW_MIN_SCORE, best[0], best_score)
        return _Best(best, False, best_score)

    def _no_route(self, view: RequestView, route: str) -> tuple[str, Recorded | None]:
        """The nearest recorded route, for a request on a route the recording lacks."""
        method, _, template = route.partition(" ")
        segments = tuple(view.path.split("/"))
        nearest: Recorded | None = None
        nearest_d = 0.0
        for indices in self.recording.by_route.values():
            other = self.recording.exchanges[indices[0]]
            d = path_distance(segments, tuple(other.view.path.split("/")))
            d += 0.5 * (other.view.method != method)
            if nearest is None or d < nearest_d:
                nearest, nearest_d = other, d
        if nearest is None:
            return f"no recording for {route}; the recording is empty", None
        why = "method differs" if nearest.route.partition(" ")[2] == template else "path differs"
        return f"no recording for {route}; nearest route {nearest.route} ({why})", nearest

    def _miss(
        self,
        route: str,
        arrival: int,
        kind: str,
        reason: str,
        closest: Recorded | None,
        closest_score: float | None,
    ) -> Decision:
        # Every miss is counted by its reason, forwarded or not: matched + missed + faults
        # add up to the requests.
        forward = self.policy.miss == "fallback"
        self.counters.missed[kind] += 1
        self.counters.route(route).missed += 1
        if forward:
            self.counters.fallback_forwarded += 1
        return Decision(
            route,
            arrival,
            FALLBACK if forward else MISSED,
            FORWARD if forward else SEND,
            miss_kind=kind,
            miss_reason=reason,
            closest=closest,
            closest_score=closest_score,
        )


__all__ = ["MISS", "Decider", "Decision", "Policy"]
