"""Telling noise from drift, per route and path over many requests, never per request.

For each (route, part, location) the model counts
  R  requests where recorded and staging differ there,
  S  sampled pairs where two staging answers (or two recordings) of one request differ there,
  N  requests of the route.
A field that differs between two answers of the *same* system to the *same* request is not
evidence of a change between the systems. S comes from a sample, so it is scaled to the
route's size before the rule: drift only when R > S' and both (R-S')/N and (R-S')/(R+S')
reach their thresholds; otherwise noise. A path whose every difference is a known volatile
kind (timestamps near the exchange, UUIDs, request ids, ETags, Date) is noise too.

Noise is kept and marked, never dropped: the report shows how much each route's noise hides.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml

from shadowtape.diff.compare import BODY, CHANGED, HEADER, Difference
from shadowtape.errors import InputError
from shadowtape.http import jsonpath
from shadowtape.keyed import is_token

DRIFT = "drift"
NOISE = "noise"
IGNORED = "ignored"

VOLATILE_HEADERS = frozenset(
    {
        "date",
        "etag",
        "last-modified",
        "expires",
        "age",
        "x-request-id",
        "request-id",
        "x-correlation-id",
        "x-trace-id",
        "traceparent",
        "tracestate",
        "x-amzn-requestid",
        "x-amz-request-id",
        "cf-ray",
        "server-timing",
        "x-runtime",
        "x-response-time",
    }
)
_ID_KEYS = re.compile(
    r"(?:^|[._\-\[\"])(request|req|trace|span|correlation|transaction)[_\-]?id\"?\]?$|"
    r"(?:^|[._\-\[\"])(requestId|traceId|spanId|correlationId|etag)\"?\]?$",
    re.IGNORECASE,
)
_UUID = re.compile(
    r'^"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"$'
)
_ISO = re.compile(
    r'^"(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)"$'
)
# "Near now": the value lies within this distance of the exchange it came with.
NEAR_US = 24 * 3600 * 1_000_000


def _timestamp_us(shown: str) -> int | None:
    """A displayed JSON value read as a point in time (ISO 8601 or Unix s/ms/µs), if it is one."""
    m = _ISO.match(shown)
    if m:
        text = m.group(1).replace(" ", "T").replace("Z", "+00:00")
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            return None
        if dt.tzinfo is None:  # a timestamp without zone is read as UTC, as APIs mostly mean
            dt = dt.replace(tzinfo=UTC)
        return int(dt.timestamp() * 1_000_000)
    try:
        number = float(shown)
    except ValueError:
        return None
    for scale in (1_000_000, 1_000, 1):
        value = int(number * scale)
        if 1_000_000_000_000_000 <= value <= 10_000_000_000_000_000:  # years 2001..2286
            return value
    return None


def _is_credential_token(shown: str) -> bool:
    if len(shown) < 3 or not shown.startswith('"') or not shown.endswith('"'):
        return False
    return is_token(shown[1:-1])


def volatile_kind(diff: Difference, recorded_at: int | None, staged_at: int | None) -> str | None:
    """Why this single difference is of a kind known to change on every response, or None."""
    if diff.part == HEADER:
        return f"volatile header {diff.location}" if diff.location in VOLATILE_HEADERS else None
    if diff.part != BODY or diff.kind != CHANGED or diff.recorded is None or diff.staging is None:
        return None
    if _ID_KEYS.search(diff.location):
        return "request id"
    if _UUID.match(diff.recorded) and _UUID.match(diff.staging):
        return "uuid"
    if _is_credential_token(diff.recorded):
        # The recording holds capture's keyed token in place of a server-minted credential;
        # staging mints its own, so the two can never be equal and the difference says nothing.
        return "credential token"
    if recorded_at is not None and staged_at is not None:
        ta, tb = _timestamp_us(diff.recorded), _timestamp_us(diff.staging)
        if (
            ta is not None
            and tb is not None
            and abs(ta - recorded_at) <= NEAR_US
            and abs(tb - staged_at) <= NEAR_US
        ):
            return "timestamp near the exchange"
    return None


# --- pinned rules -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PinnedRule:
    classification: str  # ignored | noise | drift
    location: str  # a JSON path ($...), a header name, or "status"
    route: str | None = None  # None: every route
    part: str = BODY

    def covers(self, route: str, part: str, location: str) -> bool:
        if self.route is not None and self.route != route:
            return False
        if self.part != part:
            return False
        if part == BODY and self.location.startswith(jsonpath.ROOT):
            return _covers(self.location, location)
        return self.location == location


def _covers(pattern: str, location: str) -> bool:
    """Whether a pinned rule's path covers a normalised location: the path itself and all
    below it (`$.meta` covers `$.meta.generated_at`), array positions in the rule read as
    `[*]` (locations are normalised), in http.jsonpath's grammar."""
    if pattern == location:
        return True
    try:
        return jsonpath.covers(jsonpath.normalise(pattern), location)
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class PinnedRules:
    rules: tuple[PinnedRule, ...] = ()

    def find(self, route: str, part: str, location: str) -> PinnedRule | None:
        for rule in self.rules:
            if rule.covers(route, part, location):
                return rule
        return None


def _parse_rule(entry: object, classification: str, where: str) -> PinnedRule:
    route = None
    if isinstance(entry, dict):
        route = entry.get("route")
        target = entry.get("path") or entry.get("header") or entry.get("location")
        if "header" in entry:
            return PinnedRule(classification, str(entry["header"]).lower(), route, HEADER)
        if target is None and entry.get("status"):
            target = "status"
    else:
        target = entry
    if not isinstance(target, str) or not target.strip():
        raise InputError(
            f"{where}: rule {entry!r} under '{classification}' names no path; "
            "write `- $.meta.generated_at`, `- header: etag` or `- {path: $.x, route: GET /y}`"
        )
    target = target.strip()
    if target == "status":
        return PinnedRule(classification, "status", route, "status")
    if target.lower().startswith("header:"):
        return PinnedRule(classification, target[7:].strip().lower(), route, HEADER)
    if target.startswith(jsonpath.ROOT):
        try:
            jsonpath.parse(target)
        except ValueError as exc:
            raise InputError(f"{where}: {exc}") from None
        return PinnedRule(classification, target, route, BODY)
    # Anything else names a text body location such as "line 3".
    return PinnedRule(classification, target, route, BODY)


_SECTIONS = {"ignore": IGNORED, "noise": NOISE, "drift": DRIFT}


def load_pinned_rules(path: str | Path) -> PinnedRules:
    """A YAML file with any of `ignore:`, `noise:`, `drift:`, each a path or a list of them."""
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{p}: cannot read the ignore file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if doc is None:
        return PinnedRules()
    if not isinstance(doc, dict) or not set(doc) <= set(_SECTIONS):
        raise InputError(
            f"{p}: expected a mapping with ignore:, noise: or drift: lists "
            "(e.g. `ignore: [$.meta.generated_at]`)"
        )
    rules = []
    for section, classification in _SECTIONS.items():
        entries = doc.get(section) or []
        if not isinstance(entries, list):
            entries = [entries]
        rules.extend(_parse_rule(e, classification, str(p)) for e in entries)
    return PinnedRules(tuple(rules))


# --- the model ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoiseThresholds:
    # Share of the route's requests the excess differences must reach (|R-S'|/N).
    min_request_rate: float = 0.01
    # How far the differences must stand out from replay-to-replay variation (|R-S'|/(R+S')).
    min_contrast: float = 0.5


@dataclass(slots=True)
class PathDecision:
    route: str
    part: str
    location: str
    requests_differing: int  # R
    replays_differing: int  # S (raw, in the sample)
    replays_differing_scaled: float  # S'
    requests: int  # N
    sampled: int  # pairs compared for S
    volatile: int
    classification: str
    reason: str


@dataclass
class NoiseModel:
    thresholds: NoiseThresholds = field(default_factory=NoiseThresholds)
    pinned: PinnedRules = field(default_factory=PinnedRules)
    requests: Counter = field(default_factory=Counter)  # route -> N
    sampled: Counter = field(default_factory=Counter)  # route -> pairs compared
    differing: Counter = field(default_factory=Counter)  # (route, part, location) -> R
    replays_differing: Counter = field(default_factory=Counter)  # ... -> S
    volatile: Counter = field(default_factory=Counter)  # ... -> requests all-volatile there
    volatile_reason: dict = field(default_factory=dict)

    def observe_request(self, route: str, count: int = 1) -> None:
        self.requests[route] += count

    def observe_differences(
        self, route: str, diffs: list[Difference], volatile: list[str | None]
    ) -> None:
        """One request's recorded-vs-staging differences; each location counts once."""
        seen: dict[tuple[str, str, str], bool] = {}
        for d, why in zip(diffs, volatile, strict=True):
            key = (route, d.part, d.location)
            seen[key] = seen.get(key, True) and why is not None
            if why is not None:
                self.volatile_reason.setdefault(key, why)
        for key, all_volatile in seen.items():
            self.differing[key] += 1
            if all_volatile:
                self.volatile[key] += 1

    def observe_replay_pair(self, route: str, diffs: list[Difference]) -> None:
        """Two answers to one request from the same side (two staging sends, two recordings)."""
        self.sampled[route] += 1
        for key in {(route, d.part, d.location) for d in diffs}:
            self.replays_differing[key] += 1

    def decide(self, route: str, part: str, location: str) -> PathDecision:
        key = (route, part, location)
        r = self.differing[key]
        s = self.replays_differing[key]
        n = max(self.requests[route], 1)
        sampled = self.sampled[route]
        # The sample stands for the whole route: scale its count to the route's size.
        s_scaled = s * n / sampled if sampled else 0.0
        v = self.volatile[key]

        def decision(classification: str, reason: str) -> PathDecision:
            return PathDecision(
                route,
                part,
                location,
                r,
                s,
                round(s_scaled, 3),
                n,
                sampled,
                v,
                classification,
                reason,
            )

        rule = self.pinned.find(route, part, location)
        if rule is not None:
            return decision(rule.classification, f"pinned {rule.classification}: {rule.location}")
        if r and v == r:
            return decision(NOISE, self.volatile_reason.get(key, "volatile"))
        if r <= s_scaled:
            return decision(
                NOISE, f"differs between two answers to the same request in {s}/{sampled} pairs"
            )
        excess = r - s_scaled
        rate, contrast = excess / n, excess / (r + s_scaled)
        if rate >= self.thresholds.min_request_rate and contrast >= self.thresholds.min_contrast:
            why = f"differs in {r}/{n} requests, {s}/{sampled} sampled replay pairs"
            if not sampled:
                why += " (no noise sample for this route)"
            return decision(DRIFT, why)
        return decision(
            NOISE,
            f"below thresholds: {rate:.2%} of requests (min "
            f"{self.thresholds.min_request_rate:.2%}), contrast {contrast:.2f} "
            f"(min {self.thresholds.min_contrast:.2f})",
        )

    def decisions(self) -> list[PathDecision]:
        keys = sorted(set(self.differing))
        return [self.decide(*k) for k in keys]
