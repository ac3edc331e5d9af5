"""How close a live request is to a recorded one: pure functions, no I/O.

Candidates are the recorded exchanges of the request's method and route template. Each is
scored like WireMock scores a near miss: every compared part gets a distance in [0, 1], the
distances are averaged with weights, and the score is 1 minus that average (1.0 = identical in
every compared part). The path weighs most, as the URL does in WireMock:

    part      weight   distance
    path      4        share of path segments that differ
    query     2        1 - |A ∩ B| / |A ∪ B| over name=value pairs (order does not matter)
    headers   1        the same over the chosen headers (none unless a matcher file names them)
    body      3        JSON: share of leaves (by JSON path) that differ or are missing on one
                       side; form bodies: like the query; anything else: 0 if equal, else 1

Matcher rules (matchers.py) take parts out of the comparison (ignore, regex, json_subset) or
make them hard requirements (exact). Two requests that agree on every compared part share a
fingerprint, so the common case, a request the recording holds, is a dict lookup.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import orjson

from shadowtape.http.jsonpath import Step, covers, index_step, key_step
from shadowtape.http.target import query_pairs
from shadowtape.serve.matchers import RouteMatchers, Rule

WEIGHT_PATH = 4.0
WEIGHT_QUERY = 2.0
WEIGHT_HEADERS = 1.0
WEIGHT_BODY = 3.0
_FORM = "application/x-www-form-urlencoded"


class _Missing:
    def __repr__(self) -> str:
        return "(absent)"


MISSING: Any = _Missing()
_NOT_JSON: Any = object()
_UNPARSED: Any = object()


@dataclass(slots=True)
class RequestView:
    """A request as matching sees it, recorded and live alike."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, list[str]]  # lower-case name -> values, in order
    body: bytes = b""
    _json: Any = field(default=_UNPARSED, repr=False)

    @classmethod
    def of(
        cls,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        header_pairs: list[tuple[str, str]],
        body: bytes | None,
    ) -> RequestView:
        headers: dict[str, list[str]] = {}
        for name, value in header_pairs:
            headers.setdefault(name.lower(), []).append(value)
        return cls(method.upper(), path or "/", list(query), headers, body or b"")

    @property
    def content_type(self) -> str:
        values = self.headers.get("content-type")
        return values[0].split(";", 1)[0].strip().lower() if values else ""

    def json(self) -> Any:
        """The body as JSON, or _NOT_JSON; parsed once."""
        if self._json is _UNPARSED:
            self._json = _NOT_JSON
            body = self.body.lstrip()
            if body[:1] in (b"{", b"[") or "json" in self.content_type:
                with contextlib.suppress(orjson.JSONDecodeError):
                    self._json = orjson.loads(self.body)
        return self._json


@dataclass(frozen=True, slots=True)
class Compared:
    """The parts of a request that ranking compares, once the route's rules took theirs out."""

    segments: tuple[str, ...]
    query: Counter[tuple[str, str]]
    headers: Counter[tuple[str, str]]
    body_kind: str  # empty | json | form | bytes
    body: Any  # json: {raw path: canonical leaf}; form: Counter; bytes: bytes
    fingerprint: Hashable


def value_at(doc: Any, steps: tuple[Step, ...]) -> Any:
    """The value a concrete JSON path names, or MISSING."""
    value = doc
    for kind, key in steps:
        found = (
            (isinstance(value, dict) and key in value)
            if kind == "key"
            else (isinstance(value, list) and key < len(value))
        )
        if not found:
            return MISSING
        value = value[key]
    return value


def _same_json(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def json_contains(actual: Any, expected: Any) -> bool:
    """Whether `actual` holds `expected`: objects by keys (extra keys allowed), arrays by
    elements (each expected element found somewhere, extra elements allowed), scalars equal."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and json_contains(actual[k], v) for k, v in expected.items()
        )
    if isinstance(expected, list):
        return isinstance(actual, list) and all(
            any(json_contains(a, e) for a in actual) for e in expected
        )
    return _same_json(actual, expected)


def _leaf(value: Any) -> bytes:
    """A JSON scalar spelt one way: 10 and 10.0 are the same number, true is not 1."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    return orjson.dumps(value)


def _text_of(value: Any) -> str | None:
    if value is MISSING:
        return None
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _jaccard(a: Counter[Any], b: Counter[Any]) -> float:
    if not a and not b:
        return 0.0
    union = sum((a | b).values())
    return 1.0 - sum((a & b).values()) / union


class RouteComparer:
    """Compares requests on one route under that route's matcher rules."""

    def __init__(self, matchers: RouteMatchers) -> None:
        self.matchers = matchers
        taken = ("ignore", "regex")
        self._query_out = {r.name for r in matchers.rules_for("query") if r.kind in taken}
        self._headers = tuple(
            h
            for h in matchers.headers
            if h not in {r.name for r in matchers.rules_for("header") if r.kind in taken}
        )
        self._body_out = tuple(r.name for r in matchers.rules_for("body") if r.kind != "exact")
        self._excluded: dict[str, bool] = {}
        self._keys: dict[str, str] = {}
        self.exact_rules = tuple(r for r in matchers.rules if r.kind == "exact")
        self.request_rules = tuple(r for r in matchers.rules if r.kind in ("regex", "json_subset"))
        self.weights = (
            WEIGHT_PATH + WEIGHT_QUERY + WEIGHT_BODY + (WEIGHT_HEADERS if self._headers else 0.0)
        )

    # --- the compared form ----------------------------------------------------------------

    def compared(self, view: RequestView) -> Compared:
        segments = tuple(view.path.split("/"))
        query = Counter(p for p in view.query if p[0] not in self._query_out)
        headers: Counter[tuple[str, str]] = Counter()
        for name in self._headers:
            for value in view.headers.get(name, ()):
                headers[(name, value)] += 1
        kind, body = self._body(view)
        if kind == "json":
            body_key: Hashable = tuple(sorted(body.items()))
        elif kind == "form":
            body_key = tuple(sorted(body.items()))
        else:
            body_key = body
        fingerprint = (
            segments,
            tuple(sorted(query.items())),
            tuple(sorted(headers.items())),
            kind,
            body_key,
        )
        return Compared(segments, query, headers, kind, body, fingerprint)

    def _body(self, view: RequestView) -> tuple[str, Any]:
        if not view.body:
            return "empty", b""
        doc = view.json()
        if doc is not _NOT_JSON:
            leaves: dict[str, bytes] = {}
            self._flatten(doc, "$", leaves)
            return "json", leaves
        if view.content_type == _FORM:
            pairs = query_pairs(view.body.decode("utf-8", "surrogateescape"))
            return "form", Counter(pairs)
        return "bytes", view.body

    def _is_excluded(self, location: str) -> bool:
        if not self._body_out:
            return False
        hit = self._excluded.get(location)
        if hit is None:
            hit = any(covers(p, location) for p in self._body_out)
            if len(self._excluded) < 50_000:
                self._excluded[location] = hit
        return hit

    def _key_step(self, key: str) -> str:
        step = self._keys.get(key)
        if step is None:
            step = key_step(key)
            if len(self._keys) < 50_000:
                self._keys[key] = step
        return step

    def _flatten(self, value: Any, path: str, out: dict[str, bytes]) -> None:
        if self._is_excluded(path):
            return
        if isinstance(value, dict):
            if not value:
                out[path] = b"{}"
            for k, v in value.items():
                self._flatten(v, path + self._key_step(k), out)
        elif isinstance(value, list):
            if not value:
                out[path] = b"[]"
            for i, v in enumerate(value):
                self._flatten(v, path + index_step(i), out)
        else:
            out[path] = _leaf(value)

    # --- requirements ---------------------------------------------------------------------

    def request_failure(self, view: RequestView) -> str | None:
        """Why the live request fails a regex or json_subset rule, or None."""
        for rule in self.request_rules:
            reason = _request_rule_failure(rule, view)
            if reason is not None:
                return reason
        return None

    def exact_failure(self, live: RequestView, recorded: RequestView) -> str | None:
        """Why a recorded exchange is no candidate under the exact rules, or None."""
        for rule in self.exact_rules:
            have, want = _values(rule, live), _values(rule, recorded)
            same = _same_json(have, want) if rule.part == "body" else have == want
            if not same:
                return f"{rule.label} ({rule.where}): {_shown(have)} vs recorded {_shown(want)}"
        return None

    # --- scoring --------------------------------------------------------------------------

    def score(self, live: Compared, recorded: Compared) -> float:
        if live.fingerprint == recorded.fingerprint:
            return 1.0
        total = WEIGHT_PATH * path_distance(live.segments, recorded.segments)
        total += WEIGHT_QUERY * _jaccard(live.query, recorded.query)
        if self._headers:
            total += WEIGHT_HEADERS * _jaccard(live.headers, recorded.headers)
        total += WEIGHT_BODY * _body_distance(live, recorded)
        return round(1.0 - total / self.weights, 6)

    def explain(self, live: Compared, recorded: Compared, limit: int = 3) -> str:
        """What differs, in a few words, for miss logs and the served dataset."""
        out = []
        if live.segments != recorded.segments:
            out.append(f"path {'/'.join(live.segments)} (recorded {'/'.join(recorded.segments)})")
        for part, have, want in (
            ("query", live.query, recorded.query),
            ("headers", live.headers, recorded.headers),
        ):
            if have != want:
                names = sorted({n for n, _ in (have - want) + (want - have)})
                out.append(f"{part} " + ", ".join(names[:limit]))
        if live.body_kind != recorded.body_kind:
            out.append(f"body ({live.body_kind}, recorded {recorded.body_kind})")
        elif live.body != recorded.body:
            if live.body_kind == "json":
                keys = sorted(
                    k
                    for k in live.body.keys() | recorded.body.keys()
                    if live.body.get(k) != recorded.body.get(k)
                )
                more = f" +{len(keys) - limit}" if len(keys) > limit else ""
                out.append("body " + ", ".join(keys[:limit]) + more)
            else:
                out.append("body")
        return "differs in " + "; ".join(out) if out else "identical in every compared part"


def path_distance(a: tuple[str, ...], b: tuple[str, ...]) -> float:
    if a == b:
        return 0.0
    n = max(len(a), len(b))
    differ = sum(1 for i in range(n) if i >= len(a) or i >= len(b) or a[i] != b[i])
    return differ / n


def _body_distance(a: Compared, b: Compared) -> float:
    if a.body_kind != b.body_kind:
        return 1.0
    if a.body_kind == "json":
        keys = a.body.keys() | b.body.keys()
        if not keys:
            return 0.0
        return sum(1 for k in keys if a.body.get(k) != b.body.get(k)) / len(keys)
    if a.body_kind == "form":
        return _jaccard(a.body, b.body)
    return 0.0 if a.body == b.body else 1.0


def _values(rule: Rule, view: RequestView) -> Any:
    if rule.part == "query":
        return [v for n, v in view.query if n == rule.name]
    if rule.part == "header":
        return list(view.headers.get(rule.name, ()))
    doc = view.json()
    return MISSING if doc is _NOT_JSON else value_at(doc, rule.steps)


def _shown(value: Any, width: int = 60) -> str:
    if value is MISSING:
        return "(absent)"
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= width else text[: width - 3] + "..."


def _request_rule_failure(rule: Rule, view: RequestView) -> str | None:
    value = _values(rule, view)
    if rule.kind == "json_subset":
        if value is MISSING or not json_contains(value, rule.value):
            return f"{rule.part} {rule.name} lacks {_shown(rule.value)} ({rule.where})"
        return None
    assert rule.pattern is not None
    texts = value if isinstance(value, list) and rule.part != "body" else [_text_of(value)]
    if not texts or any(t is None or rule.pattern.fullmatch(t) is None for t in texts):
        shown = ", ".join(_shown(t) if t is not None else "(absent)" for t in texts) or "(absent)"
        return f"{rule.label} ({rule.where}): {shown} does not match"
    return None
