"""Verify: re-scan a sanitized dataset for anything that still looks sensitive.

Two checks, both independent of the sanitize run that made the data:
- the detectors (the policy's entities) over every value sanitize would have scanned: path
  segments, query values, headers and cookies, decoded bodies (JSON leaves and keys, form
  fields, text) and error messages. Our own pseudonyms carry markers the detectors skip
  (see pseudonyms.py), so sanitize's output passes without the key.
- credential locations (every header, cookie, query parameter, form field or JSON member whose
  policy action is `secret`) must hold one of our tokens, the redact marker or nothing: a raw
  password there is reported as CREDENTIAL even if no pattern matches it.

Values in locations the policy keeps (Date, Content-Type, ...) are not scanned: keeping them is
the policy's decision, and scanning them would report structure as leaks. Findings name the
row id, the field and the entity type, never the value.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from shadowtape import schema
from shadowtape.errors import InputError
from shadowtape.http import cookies, jsonpath
from shadowtape.http.target import decode_segment, query_pairs, split_target
from shadowtape.keyed import is_token
from shadowtape.sanitize import bodies
from shadowtape.sanitize.detectors import Detector, check_nlp_model
from shadowtape.sanitize.pipeline import read_column
from shadowtape.sanitize.policy import Policy, PolicyRules, Rule
from shadowtape.sanitize.scrub import READ_COLUMNS

MAX_KEPT_FINDINGS = 10_000
_HASH_RE = re.compile(r"^[0-9a-f]{32}$")
_COLUMNS = ("id", *READ_COLUMNS)


@dataclass(frozen=True, slots=True)
class VerifyFinding:
    row_id: str
    field: str
    entity: str


@dataclass(slots=True)
class VerifyReport:
    rows: int = 0
    values_scanned: int = 0
    findings: list[VerifyFinding] = field(default_factory=list)
    by_entity: Counter[str] = field(default_factory=Counter)
    unscanned_bodies: int = 0
    policy_mismatch: bool = False

    @property
    def total_findings(self) -> int:
        return sum(self.by_entity.values())

    @property
    def clean(self) -> bool:
        return self.total_findings == 0


Progress = Callable[[int, int], None]


class _Scanner:
    def __init__(self, policy: Policy, detector: Detector) -> None:
        self.rules = PolicyRules(policy)
        self.policy = policy
        self.detector = detector
        self._cache: dict[str, tuple[str, ...]] = {}

    def entities_in(self, value: str) -> tuple[str, ...]:
        hit = self._cache.get(value)
        if hit is None:
            hit = tuple(f.entity for f in self.detector.find(value))
            if len(self._cache) > 200_000:
                self._cache.clear()
            self._cache[value] = hit
        return hit

    def check(self, value: str, rule: Rule, where: str) -> tuple[str, ...]:
        """What is wrong with a value: detector entities, or the rule's action not done."""
        action = rule.action
        if not value or action == "keep":
            return ()
        if action == "secret":
            return () if self._is_scrubbed_secret(value) else ("CREDENTIAL",)
        if action == "hash":
            ok = value == self.policy.redact_marker or bool(_HASH_RE.match(value))
            return () if ok else ("UNHASHED",)
        if action == "redact" or (action == "drop" and where == "path"):
            return () if value == self.policy.redact_marker else ("UNREDACTED",)
        if action == "drop":
            return ("UNDROPPED",)
        return self.entities_in(value)

    def _is_scrubbed_secret(self, value: str) -> bool:
        if value == self.policy.redact_marker or is_token(value):
            return True
        scheme, _, rest = value.partition(" ")
        return bool(rest) and is_token(rest.strip())

    def values(self, row: dict[str, Any]) -> Iterator[tuple[str, str, Rule]]:
        """(field, value, rule) for every value of a row that sanitize decides about."""
        default = self.policy.default
        # The raw target, when there is one, is what replay would send: check it, not only
        # the parsed view beside it.
        target = row.get("request_target")
        if target is not None:
            path, raw_query = split_target(target)
            query = query_pairs(raw_query)
        else:
            path = row["path"] or ""
            query = [(p["name"], p["value"]) for p in row["query"] or ()]
        named = self.rules.path_params(row["method"] or "", path)
        spans = {(s, e): r for s, e, r in named}
        pos = 0
        for segment in path.split("/"):
            start, end = pos, pos + len(segment)
            pos = end + 1
            if segment:
                yield "path", decode_segment(segment), spans.get((start, end), default)
        for name, value in query:
            yield f"query:{name}", value, self.rules.name_rule("query", name)
        for side in ("request", "response"):
            for pair in row[f"{side}_headers"] or ():
                name, value = pair["name"], pair["value"]
                rule = self.rules.name_rule("headers", name)
                low = name.lower()
                if low in ("cookie", "set-cookie") and rule.action not in (
                    "keep",
                    "drop",
                    "redact",
                ):
                    yield from self._cookies(value, low == "set-cookie", f"{side}_header:{name}")
                else:
                    yield f"{side}_header:{name}", value, rule
        if row["error"]:
            yield "error", row["error"], default

    def _cookies(self, header: str, is_set: bool, where: str) -> Iterator[tuple[str, str, Rule]]:
        if is_token(header):
            return
        items = (
            [cookies.parse_set_cookie(header).cookie]
            if is_set
            else cookies.parse_cookie_header(header)
        )
        for item in items:
            value, _ = cookies.unquote(item.value)
            yield f"{where}:{item.name}", value, self.rules.name_rule("cookies", item.name)

    def body_values(
        self, raw: bytes | None, headers: list[dict[str, str]] | None, side: str
    ) -> Iterator[tuple[str, str, Rule]] | None:
        """Values of a body, or None when it cannot be decoded (and so was not scanned)."""
        if not raw or raw == self.policy.redact_marker.encode():
            return iter(())
        heads = {p["name"].lower(): p["value"] for p in headers or ()}
        try:
            data = bodies.decode_content(raw, bodies.split_encodings(heads.get("content-encoding")))
            kind = bodies.classify(heads.get("content-type"), data)
            if kind.kind == bodies.BINARY:
                return None
            text = bodies.decode_text(data, kind.charset)
            where = f"{side}_body"
            if kind.kind == bodies.JSON:
                return self._json(bodies.parse_json(text), (), None, where)
            if kind.kind == bodies.FORM:
                return (
                    (f"{where}:{n}", v, self.rules.name_rule("form", n))
                    for n, v in bodies.parse_form(text)
                )
            return iter(((where, text, self.policy.default),))
        except bodies.Undecodable:
            return None

    def _json(
        self, node: Any, path: tuple[str | int, ...], inherited: Rule | None, where: str
    ) -> Iterator[tuple[str, str, Rule]]:
        rule = (self.rules.json_rule(path) if path else None) or inherited
        if isinstance(node, dict):
            for key, value in node.items():
                if rule is None or rule.action == "detect":
                    yield f"{where}:{jsonpath.spell(path)}{{key}}", key, self.policy.default
                yield from self._json(value, (*path, key), rule, where)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from self._json(value, (*path, i), rule, where)
        elif isinstance(node, str) or (isinstance(node, int) and not isinstance(node, bool)):
            yield f"{where}:{jsonpath.spell(path)}", str(node), rule or self.policy.default


def verify_dataset(
    path: str | os.PathLike[str],
    policy: Policy,
    *,
    nlp_model: str | None = None,
    allow_unsanitized: bool = False,
    progress: Progress | None = None,
) -> VerifyReport:
    check_nlp_model(nlp_model)
    meta = schema.dataset_metadata(path, schema.KIND_EXCHANGES)
    if not meta:
        raise InputError(f"{path}: no Parquet files to verify")
    if meta.get(schema.META_SANITIZED) != "true" and not allow_unsanitized:
        raise InputError(
            f"{path}: not a sanitized dataset (no shadowtape.sanitized flag on every file); "
            "run `shadowtape sanitize` first, or pass --allow-unsanitized to scan it anyway"
        )
    report = VerifyReport()
    report.policy_mismatch = meta.get(schema.META_POLICY) not in (None, policy.fingerprint)
    scanner = _Scanner(policy, Detector(policy.entities, policy.score_threshold, nlp_model))
    total = sum(info.num_rows for info in schema.read_files(path, schema.KIND_EXCHANGES))
    for batch in schema.iter_batches(path, schema.KIND_EXCHANGES, columns=_COLUMNS):
        cols = {name: read_column(batch, name) for name in _COLUMNS}
        for i in range(batch.num_rows):
            row = {name: cols[name][i] for name in _COLUMNS}
            _scan_row(scanner, row, report)
        report.rows += batch.num_rows
        if progress:
            progress(report.rows, total)
    return report


def _scan_row(scanner: _Scanner, row: dict[str, Any], report: VerifyReport) -> None:
    sources: list[Iterator[tuple[str, str, Rule]]] = [scanner.values(row)]
    for side in ("request", "response"):
        found = scanner.body_values(row[f"{side}_body"], row[f"{side}_headers"], side)
        if found is None:
            report.unscanned_bodies += 1
        else:
            sources.append(found)
    for source in sources:
        for where, value, rule in source:
            report.values_scanned += 1
            for entity in scanner.check(value, rule, where):
                report.by_entity[entity] += 1
                if len(report.findings) < MAX_KEPT_FINDINGS:
                    report.findings.append(VerifyFinding(row["id"], where, entity))
