"""The scrubbing of one exchange, part by part: the policy decides, detectors find, keyed
pseudonyms replace.

Pure logic over Python values (no files, no Arrow): `ExchangeScrubber` takes the columns of one
row and returns them scrubbed, adding to a counter what it found and did. Counter keys are
`|`-separated paths (`detected|EMAIL_ADDRESS|response_body`) so they stay a flat, picklable
dict of ints; the manifest nests them. Counts name entity types, actions, locations and policy
rules, never values.

Two passes use the same walk over an exchange (path segments, query, headers, cookies,
bodies under their encodings, JSON at any depth) and differ only in what happens to a value:
the first (`ExchangeScrubber`) applies the policy and the detectors and learns what it
replaced (literals.py); the second (`LiteralApplier`) replaces the learned values wherever
they still occur. Locations the policy keeps are left alone by both.

Speed: a detector call costs up to a millisecond, so values a rule decides never reach it,
values that cannot match skip it, and every distinct value is analysed once (bounded caches;
a cache changes speed, never output).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from shadowtape.http import cookies as cookie_codec
from shadowtape.http import headers as header_codec
from shadowtape.http.target import decode_segment, respell_segment, target_path, update_target
from shadowtape.keyed import Keyed
from shadowtape.sanitize import bodies, encoded, markers
from shadowtape.sanitize.detectors import Detector
from shadowtape.sanitize.lexicon import lexicon
from shadowtape.sanitize.literals import LiteralCollector, LiteralMatcher
from shadowtape.sanitize.policy import PolicyRules, Rule
from shadowtape.sanitize.pseudonyms import PseudonymExhausted, Pseudonymizer

DROP = object()  # a value the policy removes
# The columns of an exchange that scrubbing rewrites; every other column passes through.
REWRITTEN_COLUMNS = (
    "path",
    "query",
    "request_target",
    "request_headers",
    "request_body",
    "response_headers",
    "response_body",
    "error",
)
# What it reads: the method too, since path rules may name one.
READ_COLUMNS = ("method", *REWRITTEN_COLUMNS)
_CACHE_LIMIT = 100_000
_CACHEABLE_LEN = 1024
_MAX_NESTING = 3  # base64 inside base64 inside ...: deeper is undecodable (fail-closed)
# Authorization schemes: the scheme is structure, only the credential after it is secret.
_AUTH_SCHEME_RE = re.compile(
    r"^(Bearer|Basic|Token|Digest|Negotiate|Bot|JWT|ApiKey|OAuth)(\s+)(\S.*)$", re.IGNORECASE
)
# A full name: two to four capitalised words (initials allowed).
_NAME_SHAPE_RE = re.compile(r"^[A-ZÀ-Þ][\w'’.-]*(?:\s+[A-ZÀ-Þ][\w'’.-]*){1,3}$")
_NO_KEY = ""
_Detected = tuple[str, tuple[tuple[str, str | None], ...]]


class _Walker:
    """The walk over an exchange; subclasses say what happens to each string value."""

    def __init__(self, rules: PolicyRules) -> None:
        self.rules = rules
        self.policy = rules.policy
        self.marker = self.policy.redact_marker

    # What subclasses implement ------------------------------------------------------------

    def apply(self, rule: Rule, value: str, location: str, counts: Counter[str], key: str) -> Any:
        raise NotImplementedError

    def scan_key(self, key: str, location: str, counts: Counter[str]) -> str:
        """A JSON member name that may itself be a value (`{"jane@x.com": {...}}`)."""
        raise NotImplementedError

    def text_body(self, text: str, location: str, counts: Counter[str]) -> str | None:
        return self.text(text, location, counts)

    def wants_body(self, text: str) -> bool:
        """Whether a decoded body needs the full walk (a cheap test for the second pass)."""
        return True

    # Parts of an exchange -----------------------------------------------------------------

    def path(self, method: str, path: str, counts: Counter[str]) -> str:
        named = self.rules.path_params(method, path)
        out = []
        pos = 0
        for start, end, rule in named:
            out.append(self._segments(path[pos:start], self.policy.default, counts))
            out.append(self._segment(path[start:end], rule, counts))
            pos = end
        out.append(self._segments(path[pos:], self.policy.default, counts))
        return "".join(out)

    def _segments(self, text: str, rule: Rule, counts: Counter[str]) -> str:
        return "/".join(self._segment(s, rule, counts) if s else s for s in text.split("/"))

    def _segment(self, segment: str, rule: Rule, counts: Counter[str]) -> str:
        decoded = decode_segment(segment)
        # A path segment cannot be removed without changing the route: drop means redact.
        if rule.action == "drop":
            rule = Rule("redact", rule.rule_id)
        out = self.apply(rule, decoded, "path", counts, _NO_KEY)
        return respell_segment(segment, out)

    def pairs(
        self, section: str, pairs: list[dict[str, str]] | None, location: str, counts: Counter[str]
    ) -> list[dict[str, str]] | None:
        """Query parameters or form fields, by name; order and repeats are kept."""
        if not pairs:
            return pairs
        out = []
        for pair in pairs:
            name, value = pair["name"], pair["value"]
            rule = self.rules.name_rule(section, name, value)
            new = self.apply(rule, value, location, counts, name) if value else value
            if new is not DROP:
                out.append(pair if new == value else {"name": name, "value": new})
        return out

    def headers(
        self, headers: list[dict[str, str]] | None, side: str, counts: Counter[str]
    ) -> list[dict[str, str]] | None:
        if not headers:
            return headers
        location = f"{side}_header"
        out = []
        for pair in headers:
            name, value = pair["name"], pair["value"]
            rule = self.rules.name_rule("headers", name, value)
            low = name.lower()
            if low in ("cookie", "set-cookie") and rule.action not in ("keep", "drop", "redact"):
                new: Any = self.cookies(value, low == "set-cookie", counts)
            else:
                new = self.apply(rule, value, location, counts, name) if value else value
            if new is not DROP:
                out.append(pair if new == value else {"name": name, "value": new})
        return out

    def cookies(self, header: str, is_set_cookie: bool, counts: Counter[str]) -> str:
        # Capture may already have replaced the whole header with one token.
        if markers.is_opaque_token(header):
            return header
        # In Set-Cookie only the first item is a cookie; the attributes (Path, ...) stay as
        # they are. A bare word is a nameless cookie's value (http.cookies; capture agrees).
        if is_set_cookie:
            parsed = cookie_codec.parse_set_cookie(header)
            rule = self.rules.name_rule("cookies", parsed.name, parsed.value)
            new = self._cookie_value(rule, parsed.value, parsed.name, counts)
            if new is DROP:
                return parsed.attributes.removeprefix(";")
            return parsed.with_value(new).format()
        out = []
        for item in cookie_codec.parse_cookie_header(header):
            rule = self.rules.name_rule("cookies", item.name, item.value)
            new = self._cookie_value(rule, item.value, item.name, counts)
            if new is not DROP:
                out.append(item.with_value(new))
        return cookie_codec.format_cookie_header(out)

    def _cookie_value(self, rule: Rule, value: str, name: str, counts: Counter[str]) -> Any:
        if not value:
            return value
        # A quoted value keeps its quotes (capture does the same), so the token inside is
        # still recognised as ours on a second pass.
        inner, quoted = cookie_codec.unquote(value)
        new = self.apply(rule, inner, "cookie", counts, name)
        if new is DROP or new == inner:
            return new if new is DROP else value
        return cookie_codec.requote(new, quoted)

    def text(self, value: str | None, location: str, counts: Counter[str]) -> str | None:
        """A free-text column (the error message): what no rule names."""
        if not value:
            return value
        new = self.apply(self.policy.default, value, location, counts, _NO_KEY)
        return None if new is DROP else new

    # Bodies -------------------------------------------------------------------------------

    def body(
        self,
        raw: bytes | None,
        headers: list[dict[str, str]] | None,
        side: str,
        counts: Counter[str],
    ) -> tuple[bytes | None, str]:
        """The scrubbed body and what became of it: unchanged | rewritten | dropped | redacted
        | kept_unscanned."""
        if not raw:
            return raw, "unchanged"
        location = f"{side}_body"
        encodings = bodies.split_encodings(_header(headers, "content-encoding"))
        try:
            data = bodies.decode_content(raw, encodings)
            kind = bodies.classify(_header(headers, "content-type"), data)
            b64 = _base64_body(data) if kind.kind in (bodies.TEXT, bodies.BINARY) else None
            if b64 is not None:
                # A body that is base64 text: its content is scrubbed, then encoded back.
                text = data.decode("ascii")
                inner = self._content(b64.text, _sniff(b64.text), location, counts)
                unchanged = inner is None or inner == b64.text
                new = inner if inner is None else (text if unchanged else b64.encode(inner))
            else:
                if kind.kind == bodies.BINARY:
                    raise bodies.Undecodable("binary content")
                text = bodies.decode_text(data, kind.charset)
                new = self._content(text, kind.kind, location, counts)
        except bodies.Undecodable:
            counts[f"bodies|undecodable|{location}"] += 1
            return self._undecodable(raw, location, counts)
        if new is None:
            counts[f"bodies|dropped|{location}"] += 1
            return None, "dropped"
        if new == text:
            return raw, "unchanged"
        counts[f"bodies|rewritten|{location}"] += 1
        try:
            out = new.encode(kind.charset)
        except (UnicodeEncodeError, LookupError):
            out = new.encode("utf-8")
        return bodies.encode_content(out, encodings), "rewritten"

    def _content(self, text: str, kind: str, location: str, counts: Counter[str]) -> str | None:
        if not self.wants_body(text):
            return text
        if kind == bodies.JSON:
            return self.json_text(text, location, counts)
        if kind == bodies.FORM:
            pairs = [{"name": n, "value": v} for n, v in bodies.parse_form(text)]
            new_pairs = self.pairs("form", pairs, location, counts) or []
            if new_pairs == pairs:
                return text
            return bodies.dump_form(text, [(p["name"], p["value"]) for p in new_pairs])
        return self.text_body(text, location, counts)

    def _undecodable(
        self, raw: bytes, location: str, counts: Counter[str]
    ) -> tuple[bytes | None, str]:
        action = self.policy.undecodable_bodies
        if action == "keep":
            counts[f"bodies|kept_unscanned|{location}"] += 1
            return raw, "kept_unscanned"
        if action == "redact":
            counts[f"bodies|redacted|{location}"] += 1
            return self.marker.encode(), "redacted"
        counts[f"bodies|dropped|{location}"] += 1
        return None, "dropped"

    def json_text(self, text: str, location: str, counts: Counter[str]) -> str:
        doc = bodies.parse_json(text)
        new = self._json(doc, (), None, location, counts)
        if new is DROP:
            return bodies.dump_json(None, text)
        return text if new == doc else bodies.dump_json(new, text)

    def _json(
        self,
        node: Any,
        path: tuple[str | int, ...],
        inherited: Rule | None,
        location: str,
        counts: Counter[str],
    ) -> Any:
        rule = (self.rules.json_rule(path) if path else None) or inherited
        if isinstance(node, dict):
            if rule is not None and rule.action in ("keep", "drop"):
                return node if rule.action == "keep" else DROP
            out = {}
            for key, value in node.items():
                new = self._json(value, (*path, key), rule, location, counts)
                if new is DROP:
                    continue
                # Maps keyed by personal values ({"jane@x.com": {...}}) are scanned too.
                scan = rule is None or rule.action == "detect"
                out[self.scan_key(key, location, counts) if scan else key] = new
            return out
        if isinstance(node, list):
            if rule is not None and rule.action in ("keep", "drop"):
                return node if rule.action == "keep" else DROP
            out_list = []
            for i, value in enumerate(node):
                new = self._json(value, (*path, i), rule, location, counts)
                if new is not DROP:
                    out_list.append(new)
            return out_list
        key = next((s for s in reversed(path) if isinstance(s, str)), _NO_KEY)
        if rule is None and isinstance(node, str | int) and not isinstance(node, bool):
            rule = self.rules.category_rule(path, str(node))
        return self._json_leaf(node, rule or self.policy.default, location, counts, key)

    def _json_leaf(
        self, node: Any, rule: Rule, location: str, counts: Counter[str], key: str
    ) -> Any:
        if isinstance(node, str):
            return self.apply(rule, node, location, counts, key)
        if node is None or isinstance(node, bool | float):
            # No format to preserve and nothing a detector finds in them: only removal applies.
            if rule.action in ("drop", "redact"):
                return self.apply(rule, str(node), location, counts, key)
            return node
        # An integer: ids, phone numbers and card numbers stored as JSON numbers.
        out = self.apply(rule, str(node), location, counts, key)
        if isinstance(out, str) and re.fullmatch(r"-?\d+", out):
            return int(out)
        return out

    # A whole exchange ---------------------------------------------------------------------

    def exchange(self, row: dict[str, Any], counts: Counter[str]) -> dict[str, Any]:
        """The scrubbed columns of one exchange."""
        out: dict[str, Any] = {}
        # The raw target is what replay sends; its path is the exact one (the `path` column
        # shows bytes that are not UTF-8 as display text), and it is rewritten to agree with
        # the scrubbed path and query, re-encoding only what changed (http.target).
        target = row.get("request_target")
        path = target_path(target) if target is not None else row["path"]
        if path:
            out["path"] = self.path(row["method"] or "", path, counts)
        out["query"] = self.pairs("query", row["query"], "query", counts)
        if target is not None:
            pairs = [(p["name"], p["value"]) for p in out["query"] or ()]
            out["request_target"] = update_target(target, out.get("path", path), pairs)
        for side in ("request", "response"):
            headers = row[f"{side}_headers"]
            body, fate = self.body(row[f"{side}_body"], headers, side, counts)
            new_headers = self.headers(headers, side, counts)
            out[f"{side}_body"] = body
            out[f"{side}_headers"] = _fix_framing(new_headers, body, fate)
        out["error"] = self.text(row["error"], "error", counts)
        return out


class ExchangeScrubber(_Walker):
    """The first pass: the policy's actions, the detectors, and the literals they learn."""

    def __init__(
        self,
        rules: PolicyRules,
        keyed: Keyed,
        detector: Detector,
        collector: LiteralCollector | None = None,
    ) -> None:
        super().__init__(rules)
        self.keyed = keyed
        self.detector = detector
        self.collector = collector
        lex = lexicon()
        self.pseudo = Pseudonymizer(
            keyed,
            is_clean=self._is_clean,
            is_clean_word=lambda w: not lex.is_name(w) and w not in lex.street_suffixes,
        )
        self._detected: dict[tuple[str, tuple[str, ...]], _Detected] = {}
        self._pseudonyms: dict[tuple[str, tuple[str, ...]], str] = {}
        self._clean: dict[tuple[str, tuple[str, ...]], bool] = {}
        # The context words of the key being worked on: a replacement must be clean where it
        # goes (a 9-digit pseudonym under "passport" is checked as a passport number would be).
        self.context: tuple[str, ...] = ()
        self._contexts: dict[str, tuple[str, ...]] = {}

    # Values -------------------------------------------------------------------------------

    def _is_clean(self, text: str) -> bool:
        """Whether one of our own replacements is invisible to the detectors."""
        key = (text, self.context)
        clean = self._clean.get(key)
        if clean is None:
            clean = not self.detector.find(text, self.context, trust=True)
            _bounded_put(self._clean, key, clean)
        return clean

    def pseudonymize(self, value: str) -> str:
        """The pseudonym of a whole value: by its format when it has one; otherwise what the
        detectors find in it gets its entity's pseudonym and the rest is text, word by word
        (so `jane@corp.internal or Jane Doe` keeps a well-formed email pseudonym)."""
        key = (value, self.context)
        out = self._pseudonyms.get(key)
        if out is None:
            out = self._pseudonymize_uncached(value)
            _bounded_put(self._pseudonyms, key, out)
        return out

    def _pseudonymize_uncached(self, value: str) -> str:
        if not value or markers.is_opaque_token(value):
            return value
        if self.detector.trust_markers and markers.is_whole_pseudonym(value):
            return value  # sanitized input under our key: already a pseudonym
        maker = self.pseudo.format_of(value)
        if maker is not None:
            return self._format_pseudonym(maker, value)
        findings = self.detector.find(value, trust=False)
        parts, pos = [], 0
        try:
            for f in findings:
                if f.start > pos:
                    parts.append(self.pseudo.text(value[pos : f.start]))
                parts.append(self.pseudo.for_entity(f.entity, value[f.start : f.end]))
                pos = f.end
            if pos < len(value):
                parts.append(self.pseudo.text(value[pos:]))
        except PseudonymExhausted:
            return self.marker
        out = "".join(parts)
        return out if self._is_clean(out) else self.marker

    def _format_pseudonym(self, make: Callable[[str], str], value: str) -> str:
        try:
            return make(value)
        except PseudonymExhausted:
            return self.marker

    def secret(self, value: str) -> str:
        if not value or markers.is_opaque_token(value):
            return value
        # "Bearer <token>": the scheme is structure, only the credential is secret. Capture
        # keeps any scheme word of Authorization headers, so "<word> <our token>" stays too.
        m = _AUTH_SCHEME_RE.match(value)
        if m:
            return m.group(1) + m.group(2) + self.pseudo.secret(m.group(3))
        scheme, sep, rest = value.partition(" ")
        if sep and scheme.isalpha() and markers.is_opaque_token(rest.strip()):
            return value
        return self.pseudo.secret(value)

    def replacement(self, found: str, kind: str) -> str:
        """What a learned literal's occurrence becomes: the replacement its kind gives."""
        if kind in ("redact", "drop"):
            return self.marker
        if kind == "hash":
            return self.keyed.hash_hex(found)
        if kind == "secret":
            return self.secret(found)
        if kind.startswith("entity:"):
            entity = kind.partition(":")[2]
            return self._format_pseudonym(lambda v: self.pseudo.for_entity(entity, v), found)
        return self.pseudonymize(found)

    def detect(self, value: str, location: str, counts: Counter[str], key: str = _NO_KEY) -> str:
        context = self.context = self.context_of(key)
        if len(value) <= _CACHEABLE_LEN:
            cache_key = (value, context)
            hit = self._detected.get(cache_key)
            if hit is None:
                hit = self._detect_uncached(value, context, 0)
                _bounded_put(self._detected, cache_key, hit)
        else:
            hit = self._detect_uncached(value, context, 0)
        out, found = hit
        for entity, span in found:
            counts[f"detected|{entity}|{location}"] += 1
            if self.collector is not None and span is not None:
                self.collector.learn(span, f"entity:{entity}", is_name=entity == "PERSON")
        return out

    def context_of(self, key: str) -> tuple[str, ...]:
        """The words of a key that some recognizer takes as context (usually none)."""
        if not key:
            return ()
        hit = self._contexts.get(key)
        if hit is None:
            words = self.rules.vocabulary.words(key)
            hit = tuple(sorted(set(words) & self.detector.context_words))
            _bounded_put(self._contexts, key, hit)
        return hit

    def _detect_uncached(self, value: str, context: tuple[str, ...], depth: int) -> _Detected:
        """The value with what the detectors find replaced, and (entity, text found) of each
        finding (text None for what is redacted as a residual)."""
        # A whole value in base64 is scrubbed inside and put back in base64.
        b64 = encoded.base64_view(value) if depth < _MAX_NESTING else None
        if b64 is not None:
            inner, found = self._inner(b64.text, context, depth + 1)
            if inner != b64.text:
                return b64.encode(inner), found
        view = encoded.percent_view(value)
        text = view.text if view is not None else value
        findings = self.detector.find(text, context)
        if not findings:
            return value, ()
        parts, pos = [], 0
        found: tuple[tuple[str, str | None], ...] = ()
        for f in findings:
            span = text[f.start : f.end]
            new = self._entity_pseudonym(f.entity, span)
            start, end = (f.start, f.end) if view is None else view.original_span(f.start, f.end)
            parts += [value[pos:start], new if view is None else view.encode(new)]
            pos = end
            found += ((f.entity, span),)
        parts.append(value[pos:])
        out = "".join(parts)
        # A replacement glued to other text can form a new match (digits joining digits), and
        # one drawn clean on its own can read as sensitive next to a word ("my passport is
        # 482913075"): look again, and redact whatever the detectors still see (fail-closed).
        residual = self.detector.find(out, context, trust=True) if view is None else []
        if residual:
            parts, pos = [], 0
            for f in residual:
                parts += [out[pos : f.start], self.marker]
                pos = f.end
            parts.append(out[pos:])
            out = "".join(parts)
            found += tuple((f"RESIDUAL_{f.entity}", None) for f in residual)
        return out, found

    def _inner(self, text: str, context: tuple[str, ...], depth: int) -> _Detected:
        """The scrubbed content of a base64 value: JSON walked by the policy, else text."""
        if _sniff(text) == bodies.JSON:
            try:
                counts: Counter[str] = Counter()
                new = self.json_text(text, "base64", counts)
            except bodies.Undecodable:
                pass
            else:
                # What the walk found was counted and learned inside it; the outer value only
                # needs to know whether anything changed.
                return new, (("BASE64_CONTENT", None),) if new != text else ()
        return self._detect_uncached(text, context, depth)

    def _entity_pseudonym(self, entity: str, span: str) -> str:
        return self._format_pseudonym(lambda v: self.pseudo.for_entity(entity, v), span)

    def apply(
        self, rule: Rule, value: str, location: str, counts: Counter[str], key: str = _NO_KEY
    ) -> Any:
        """A rule's action on one string value; DROP when the value is to be removed."""
        action = rule.action
        if action == "keep":
            return value
        if action == "detect":
            return self.detect(value, location, counts, key)
        self.context = self.context_of(key)
        if action == "drop":
            out: Any = DROP
        elif action == "redact":
            out = self.marker
        elif action == "pseudonymize":
            out = self.pseudonymize(value)
        elif action == "hash":
            out = self.keyed.hash_hex(value)
        else:  # secret
            out = self.secret(value)
        if out is not value and out != value:
            counts[f"actions|{action}|{location}"] += 1
            counts[f"rules|{rule.rule_id}"] += 1
            if self.collector is not None:
                self.collector.learn(value, action, is_name=bool(_NAME_SHAPE_RE.match(value)))
        return out

    def scan_key(self, key: str, location: str, counts: Counter[str]) -> str:
        return self.detect(key, location, counts)


class LiteralApplier(_Walker):
    """The second pass: every learned literal still in the data gets its replacement."""

    def __init__(self, rules: PolicyRules, scrubber: ExchangeScrubber, matcher: LiteralMatcher):
        super().__init__(rules)
        self.scrubber = scrubber
        self.matcher = matcher
        self._cache: dict[tuple[str, tuple[str, ...]], tuple[str, int]] = {}

    def wants_body(self, text: str) -> bool:
        # JSON escapes (\u00e9) and base64 hide literals from a plain look; those are walked.
        return (
            self.matcher.could_match(text)
            or "\\" in text
            or encoded.base64_view(text.strip()) is not None
        )

    def replace(self, value: str, depth: int = 0) -> tuple[str, int]:
        key = (value, self.scrubber.context)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._replace_uncached(value, depth)
            if len(value) <= _CACHEABLE_LEN:
                _bounded_put(self._cache, key, hit)
        return hit

    def _replace_uncached(self, value: str, depth: int) -> tuple[str, int]:
        b64 = encoded.base64_view(value) if depth < _MAX_NESTING else None
        if b64 is not None:
            if _sniff(b64.text) == bodies.JSON:
                try:
                    counts: Counter[str] = Counter()
                    new = self.json_text(b64.text, "base64", counts)
                except bodies.Undecodable:
                    pass
                else:
                    n = sum(v for k, v in counts.items() if k.startswith("propagated|"))
                    return (b64.encode(new), n) if n else (value, 0)
            inner, n = self._replace_uncached(b64.text, depth + 1)
            return (b64.encode(inner), n) if n else (value, 0)
        view = encoded.percent_view(value)
        if view is None:
            return self.matcher.replace(value, self.scrubber.replacement)
        spans = self.matcher.find(view.text)
        if not spans:
            return value, 0
        out, pos = [], 0
        for start, end, kind in spans:
            o_start, o_end = view.original_span(start, end)
            new = self.scrubber.replacement(view.text[start:end], kind)
            out += [value[pos:o_start], view.encode(new)]
            pos = o_end
        out.append(value[pos:])
        return "".join(out), len(spans)

    def apply(
        self, rule: Rule, value: str, location: str, counts: Counter[str], key: str = _NO_KEY
    ) -> Any:
        if rule.action == "keep" or not value:
            return value
        self.scrubber.context = self.scrubber.context_of(key)
        out, n = self.replace(value)
        if n:
            counts[f"propagated|{location}"] += n
        return out

    def scan_key(self, key: str, location: str, counts: Counter[str]) -> str:
        return self.apply(self.policy.default, key, location, counts)


def _base64_body(data: bytes) -> encoded.Base64View | None:
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    return encoded.base64_view(text) if text == data.decode("ascii") else None


def _sniff(text: str) -> str:
    head = text.lstrip()[:1]
    return bodies.JSON if head in ("{", "[") else bodies.TEXT


def _header(headers: list[dict[str, str]] | None, name: str) -> str | None:
    return header_codec.get(((p["name"], p["value"]) for p in headers or ()), name)


def _fix_framing(
    headers: list[dict[str, str]] | None, body: bytes | None, fate: str
) -> list[dict[str, str]] | None:
    """Content-Length follows the new body; a body replaced by nothing or by the plain marker
    no longer has the Content-Encoding it had."""
    if not headers or fate in ("unchanged", "kept_unscanned"):
        return headers
    out = []
    for pair in headers:
        low = pair["name"].lower()
        if low == "content-length":
            pair = {"name": pair["name"], "value": str(len(body or b""))}
        elif low == "content-encoding" and fate in ("dropped", "redacted"):
            continue
        out.append(pair)
    return out


def _bounded_put(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value
