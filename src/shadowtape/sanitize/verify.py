"""Verify: an independent second opinion on a dataset, never sanitize asked twice.

A scrubber's blind spots are exactly what its own policy leaves out, so verify does not read
the policy sanitize ran with. It scans every value of every exchange (path segments, query
values, every header but the framing ones, cookies, bodies under their encodings and inside
base64, JSON keys and leaves at any depth, form fields, text, error messages) with its own
strict set:

- every recognizer that runs without a model (`detectors.strict_entities`: Presidio's
  global, US, UK and EU pattern recognizers, emails of any TLD, secret formats, the name
  lexicon and street-address patterns);
- the built-in key vocabularies (the default policy's `key_words`, not the user's): a value
  under a credential key must be one of our tokens or the redact marker (CREDENTIAL); under a
  personal key (a name, an address, ...) every word must carry the pseudonym marker (see
  markers.py), or the value must be the marker;
- the manifest: present, well-formed, listing every Parquet file with its row count and the
  digest of its bytes; anything missing, extra or altered is a MANIFEST finding.

Markers are trusted only when the dataset says it is sanitized: on raw input (with
--allow-unsanitized) a value in 2001:db8::/32 or a consonant-vowel name is reported like any
other. Findings name the row id, the field and the entity type, never the value.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from shadowtape import schema
from shadowtape.errors import InputError
from shadowtape.http import cookies, jsonpath
from shadowtape.http.target import decode_segment, query_pairs, split_target
from shadowtape.manifest_check import MANIFEST_NAME, FileCounts, manifest_path
from shadowtape.manifest_check import check_manifest as check_dataset_manifest
from shadowtape.sanitize import bodies, encoded, markers
from shadowtape.sanitize.detectors import Detector, check_nlp_model, strict_entities
from shadowtape.sanitize.keywords import Category, KeyVocabulary, value_fits
from shadowtape.sanitize.pipeline import read_column
from shadowtape.sanitize.policy import Policy, default_policy

MAX_KEPT_FINDINGS = 10_000
STRICT_THRESHOLD = 0.4
DEFAULT_REDACT_MARKER = "[REDACTED]"
_HASH_RE = re.compile(r"^[0-9a-f]{32}$")
_COLUMNS = ("id", "method", "path", "query", "request_target", "request_headers",
            "request_body", "response_headers", "response_body", "error")  # fmt: skip
# Headers whose values are framing that replay needs and that hold nothing personal; their
# syntax is checked instead of their content.
_FRAMING = {
    "content-length": re.compile(r"^\d+$"),
    "content-encoding": re.compile(r"^[A-Za-z0-9, -]*$"),
    "transfer-encoding": re.compile(r"^[A-Za-z0-9, -]*$"),
    # The server replay talks to, not a person: a host name or address and a port.
    "host": re.compile(r"^[A-Za-z0-9.-]+(?::\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](?::\d{1,5})?$"),
    "date": re.compile(r"^[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT$"),
}
_WORD_RE = re.compile(r"[^\W\d_]+")


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
    sanitized: bool = False
    # The fingerprint of the policy the dataset says it was sanitized under, if any.
    dataset_policy: str | None = None

    @property
    def total_findings(self) -> int:
        return sum(self.by_entity.values())

    @property
    def clean(self) -> bool:
        return self.total_findings == 0

    def add(self, row_id: str, where: str, entity: str) -> None:
        self.by_entity[entity] += 1
        if len(self.findings) < MAX_KEPT_FINDINGS:
            self.findings.append(VerifyFinding(row_id, where, entity))


Progress = Callable[[int, int], None]


class StrictScanner:
    """What verify finds in one value, with its own detector and vocabularies."""

    def __init__(
        self,
        trust_markers: bool,
        nlp_model: str | None = None,
        redact_markers: tuple[str, ...] = (DEFAULT_REDACT_MARKER,),
    ) -> None:
        self.trust = trust_markers
        self.redact_markers = redact_markers
        self.detector = Detector(
            strict_entities(), STRICT_THRESHOLD, nlp_model, trust_markers=trust_markers
        )
        builtin = default_policy()
        self.vocabulary = KeyVocabulary(builtin.key_words)
        self._cache: dict[tuple[str, str], tuple[str, ...]] = {}

    def category(self, path: tuple[str, ...], value: str) -> Category | None:
        """The built-in category of the key a value sits under (its last key; a part of the
        key above it)."""
        if not path:
            return None
        category = self.vocabulary.category(path[-1])
        if category is None and len(path) > 1:
            category = self.vocabulary.part_category(path[-2], path[-1])
        elif (
            category is not None
            and len(path) > 1
            and set(self.vocabulary.words(path[-2])).intersection(category.unless)
        ):
            category = None
        if category is not None and not value_fits(category, value):
            return None
        return category

    def check(self, value: str, path: tuple[str, ...] = ()) -> tuple[str, ...]:
        """The entities wrong with one value under the keys `path` (innermost last)."""
        if not value or value in self.redact_markers:
            return ()
        category = self.category(path, value)
        cache_key = (value, category.name if category else "", *path[-1:])
        hit = self._cache.get(cache_key)
        if hit is None:
            hit = self._check_uncached(value, category, path[-1] if path else "")
            if len(self._cache) > 200_000:
                self._cache.clear()
            self._cache[cache_key] = hit
        return hit

    def _check_uncached(self, value: str, category: Category | None, key: str) -> tuple[str, ...]:
        if markers.is_opaque_token(value):
            return ()
        if category is not None and category.action == "secret":
            return () if self._scrubbed_secret(value) else ("CREDENTIAL",)
        if category is not None and category.action in ("redact", "drop"):
            return ("UNREDACTED_" + category.name.upper(),)
        found = self._entities(value, key, 0)
        if (
            category is not None
            and category.needs == "letter"
            and not found
            and not _HASH_RE.match(value)
        ):
            # Under a personal key every word must be a pseudonym word (or a known safe
            # replacement such as an email pseudonym, found above as no finding).
            rest = value
            for m in markers.PSEUDONYM_EMAIL_RE.finditer(value) if "@" in value else ():
                rest = rest.replace(m.group(), " ")
            words = [w for w in _WORD_RE.findall(rest) if len(w) >= markers.MIN_MARKED_WORD]
            if any(not (self.trust and markers.is_marked_word(w)) for w in words):
                found = (category.name.upper(),)
        return found

    def _entities(self, value: str, key: str, depth: int) -> tuple[str, ...]:
        words = self.vocabulary.words(key) if key else ()
        b64 = encoded.base64_view(value) if depth < 3 else None
        if b64 is not None:
            inner = self._inner(b64.text, depth + 1)
            if inner:
                return inner
        view = encoded.percent_view(value)
        text = view.text if view is not None else value
        return tuple(f.entity for f in self.detector.find(text, words))

    def _inner(self, text: str, depth: int) -> tuple[str, ...]:
        doc = _json_or_none(text)
        if doc is not None:
            return tuple(e for _, v, p in _json_values(doc, ()) for e in self.check(v, p))
        return self._entities(text, "", depth)

    def _scrubbed_secret(self, value: str) -> bool:
        if value in self.redact_markers or markers.is_opaque_token(value) or _HASH_RE.match(value):
            return True
        _scheme, _, rest = value.partition(" ")
        return bool(rest) and markers.is_opaque_token(rest.strip())


def _json_values(
    node: Any, path: tuple[str | int, ...]
) -> Iterator[tuple[str, str, tuple[str, ...]]]:
    """(where, value, keys) of every key and scalar of a JSON document."""
    keys = tuple(p for p in path if isinstance(p, str))
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{jsonpath.spell(path)}{{key}}", key, ()
            yield from _json_values(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _json_values(value, (*path, i))
    elif isinstance(node, str) or (isinstance(node, int) and not isinstance(node, bool)):
        yield jsonpath.spell(path), str(node), keys


def _row_values(row: dict[str, Any]) -> Iterator[tuple[str, str, tuple[str, ...]]]:
    """(field, value, keys) for every value of a row outside its bodies."""
    # The raw target, when there is one, is what replay would send: check it, and the parsed
    # query beside it wherever the two differ.
    target = row.get("request_target")
    columns = [(p["name"], p["value"]) for p in row["query"] or ()]
    if target is not None:
        path, raw_query = split_target(target)
        query = query_pairs(raw_query)
        query += [pair for pair in columns if pair not in query]
    else:
        path, query = row["path"] or "", columns
    for segment in path.split("/"):
        if segment:
            yield "path", decode_segment(segment), ()
    for name, value in query:
        yield f"query:{name}", value, (name,)
    for side in ("request", "response"):
        for pair in row[f"{side}_headers"] or ():
            name, value = pair["name"], pair["value"]
            low = name.lower()
            where = f"{side}_header:{name}"
            if low in _FRAMING:
                if not _FRAMING[low].match(value):
                    yield where, value, ()
            elif low in ("cookie", "set-cookie"):
                yield from _cookies(value, low == "set-cookie", where)
            else:
                yield where, value, (name,)
    if row["error"]:
        yield "error", row["error"], ()


def _cookies(header: str, is_set: bool, where: str) -> Iterator[tuple[str, str, tuple[str, ...]]]:
    if markers.is_opaque_token(header):
        return
    if is_set:
        parsed = cookies.parse_set_cookie(header)
        items = [parsed.cookie]
        # Attributes hold no personal data, except a Domain or Path that someone made so.
        for _name, value in parsed.attribute_pairs():
            if value:
                yield where, value, ()
    else:
        items = cookies.parse_cookie_header(header)
    for item in items:
        value, _ = cookies.unquote(item.value)
        yield f"{where}:{item.name}", value, (item.name,) if item.name else ()


def _body_values(
    raw: bytes | None,
    headers: list[dict[str, str]] | None,
    side: str,
    redact_markers: tuple[str, ...],
) -> Iterator[tuple[str, str, tuple[str, ...]]] | None:
    """Values of a body, or None when it cannot be decoded (and so was not scanned)."""
    if not raw or raw.decode("latin-1") in redact_markers:
        return iter(())
    heads = {p["name"].lower(): p["value"] for p in headers or ()}
    where = f"{side}_body"
    try:
        data = bodies.decode_content(raw, bodies.split_encodings(heads.get("content-encoding")))
        kind = bodies.classify(heads.get("content-type"), data)
        if kind.kind == bodies.BINARY:
            try:
                text = data.decode("ascii")
            except UnicodeDecodeError:
                return None
            if encoded.base64_view(text.strip()) is None:
                return None
            return iter(((where, text.strip(), ()),))
        text = bodies.decode_text(data, kind.charset)
        if kind.kind == bodies.JSON:
            doc = bodies.parse_json(text)
            return ((f"{where}:{w}", v, k) for w, v, k in _json_values(doc, ()))
        if kind.kind == bodies.FORM:
            return ((f"{where}:{n}", v, (n,)) for n, v in bodies.parse_form(text))
        return iter(((where, text, ()),))
    except bodies.Undecodable:
        return None


def _json_or_none(text: str) -> Any:
    """A decoded value that holds a JSON object or array; None for anything else, which is
    then scanned as text."""
    if text.lstrip()[:1] not in ("{", "["):
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def check_manifest(path: Path, report: VerifyReport) -> dict[str, Any]:
    """The manifest's own findings: missing, unreadable, or not describing the files
    (shadowtape.manifest_check, the check replay makes too). Returns the manifest ({} when
    there is none to read)."""
    base = manifest_path(path).parent
    present: dict[str, FileCounts] = {}
    for file in schema.dataset_files(base):
        try:
            meta = pq.ParquetFile(file).metadata
            present[file.relative_to(base).as_posix()] = (meta.num_rows, meta.num_row_groups)
        except (OSError, ValueError):
            present[file.relative_to(base).as_posix()] = None
    checked = check_dataset_manifest(path, present)
    for problem in checked.problems:
        where = f"{MANIFEST_NAME}:{problem.name}" if problem.name else MANIFEST_NAME
        report.add("-", where, problem.code)
    return checked.manifest


def verify_dataset(
    path: str | os.PathLike[str],
    policy: Policy | None = None,
    *,
    nlp_model: str | None = None,
    allow_unsanitized: bool = False,
    progress: Progress | None = None,
) -> VerifyReport:
    """Scan a dataset; `policy` is only compared with the one the data was sanitized under
    (a note, not a change of what is checked)."""
    check_nlp_model(nlp_model)
    meta = schema.dataset_metadata(path, schema.KIND_EXCHANGES)
    if not meta:
        raise InputError(f"{path}: no Parquet files to verify")
    sanitized = meta.get(schema.META_SANITIZED) == "true"
    if not sanitized and not allow_unsanitized:
        raise InputError(
            f"{path}: not a sanitized dataset (no shadowtape.sanitized flag on every file); "
            "run `shadowtape sanitize` first, or pass --allow-unsanitized to scan it anyway"
        )
    report = VerifyReport(sanitized=sanitized, dataset_policy=meta.get(schema.META_POLICY))
    if policy is not None:
        report.policy_mismatch = meta.get(schema.META_POLICY) not in (None, policy.fingerprint)
    manifest = check_manifest(Path(path), report)
    marker = manifest.get("redact_marker")
    markers_ok = (DEFAULT_REDACT_MARKER,) + (
        (marker,) if isinstance(marker, str) and marker else ()
    )
    scanner = StrictScanner(trust_markers=sanitized, nlp_model=nlp_model, redact_markers=markers_ok)
    total = sum(info.num_rows for info in schema.read_files(path, schema.KIND_EXCHANGES))
    for batch in schema.iter_batches(path, schema.KIND_EXCHANGES, columns=list(_COLUMNS)):
        cols = {name: read_column(batch, name) for name in _COLUMNS}
        for i in range(batch.num_rows):
            row = {name: cols[name][i] for name in _COLUMNS}
            _scan_row(scanner, row, report)
        report.rows += batch.num_rows
        if progress:
            progress(report.rows, total)
    return report


def _scan_row(scanner: StrictScanner, row: dict[str, Any], report: VerifyReport) -> None:
    sources: list[Iterator[tuple[str, str, tuple[str, ...]]]] = [_row_values(row)]
    for side in ("request", "response"):
        found = _body_values(
            row[f"{side}_body"], row[f"{side}_headers"], side, scanner.redact_markers
        )
        if found is None:
            report.unscanned_bodies += 1
        else:
            sources.append(found)
    for source in sources:
        for where, value, keys in source:
            report.values_scanned += 1
            for entity in scanner.check(value, keys):
                report.add(row["id"], where, entity)
