"""The scrubbing of one exchange, part by part: the policy decides, detectors find, keyed
pseudonyms replace.

Pure logic over Python values (no files, no Arrow): `ExchangeScrubber` takes the columns of one
row and returns them scrubbed, adding to a counter what it found and did. Counter keys are
`|`-separated paths (`detected|EMAIL_ADDRESS|response_body`) so they stay a flat, picklable
dict of ints; the manifest nests them. Counts name entity types, actions, locations and policy
rules, never values.

Speed: Presidio costs about half a millisecond a call, so values a rule decides never reach
it, values that cannot match skip it (`could_contain_sensitive`), and every distinct value is
analysed once (bounded caches; a cache changes speed, never output).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from shadowtape.http import cookies as cookie_codec
from shadowtape.http import headers as header_codec
from shadowtape.http.target import decode_segment, respell_segment, target_path, update_target
from shadowtape.keyed import Keyed, is_token
from shadowtape.sanitize import bodies
from shadowtape.sanitize.detectors import Detector
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
# Authorization schemes: the scheme is structure, only the credential after it is secret.
_AUTH_SCHEME_RE = re.compile(
    r"^(Bearer|Basic|Token|Digest|Negotiate|Bot|JWT|ApiKey|OAuth)(\s+)(\S.*)$", re.IGNORECASE
)
# Characters that end a token for every recognizer (see _clean_edge).
_SEPARATORS = ",;()[]{}<>\"'`|"


class ExchangeScrubber:
    def __init__(self, rules: PolicyRules, keyed: Keyed, detector: Detector) -> None:
        self.rules = rules
        self.policy = rules.policy
        self.keyed = keyed
        self.detector = detector
        self.pseudo = Pseudonymizer(keyed, is_clean=self._is_clean)
        self.marker = self.policy.redact_marker
        self._detected: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._pseudonyms: dict[str, str] = {}
        self._clean: dict[str, bool] = {}

    # --- values ------------------------------------------------------------------------------

    def _is_clean(self, text: str) -> bool:
        clean = self._clean.get(text)
        if clean is None:
            clean = not self.detector.find(text)
            _bounded_put(self._clean, text, clean)
        return clean

    def pseudonymize(self, value: str) -> str:
        out = self._pseudonyms.get(value)
        if out is None:
            out = self._format_pseudonym(self.pseudo.auto, value)
            _bounded_put(self._pseudonyms, value, out)
        return out

    def _format_pseudonym(self, make: Callable[[str], str], value: str) -> str:
        try:
            return make(value)
        except PseudonymExhausted:
            return self.marker

    def secret(self, value: str) -> str:
        if not value or is_token(value):
            return value
        # "Bearer <token>": the scheme is structure, only the credential is secret. Capture
        # keeps any scheme word of Authorization headers, so "<word> <our token>" stays too.
        m = _AUTH_SCHEME_RE.match(value)
        if m:
            return m.group(1) + m.group(2) + self.keyed.secret(m.group(3))
        scheme, sep, rest = value.partition(" ")
        if sep and scheme.isalpha() and is_token(rest.strip()):
            return value
        return self.keyed.secret(value)

    def detect(self, value: str, location: str, counts: Counter[str]) -> str:
        if len(value) <= _CACHEABLE_LEN:
            hit = self._detected.get(value)
            if hit is None:
                hit = self._detect_uncached(value)
                _bounded_put(self._detected, value, hit)
        else:
            hit = self._detect_uncached(value)
        out, entities = hit
        for entity in entities:
            counts[f"detected|{entity}|{location}"] += 1
        return out

    def _detect_uncached(self, value: str) -> tuple[str, tuple[str, ...]]:
        findings = self.detector.find(value)
        if not findings:
            return value, ()
        parts = []
        pos = 0
        for f in findings:
            parts.append(value[pos : f.start])
            span = value[f.start : f.end]
            parts.append(
                self._format_pseudonym(lambda v, e=f.entity: self.pseudo.for_entity(e, v), span)
            )
            pos = f.end
        parts.append(value[pos:])
        out = "".join(parts)
        entities = tuple(f.entity for f in findings)
        # A replacement glued to other text can form a new match (digits joining digits):
        # then look again, and redact whatever the detectors still see (fail-closed).
        glued = any(not _clean_edge(value, f.start, f.end) for f in findings)
        residual = self.detector.find(out) if glued else []
        if residual:
            parts, pos = [], 0
            for f in residual:
                parts += [out[pos : f.start], self.marker]
                pos = f.end
            parts.append(out[pos:])
            out = "".join(parts)
            entities += tuple(f"RESIDUAL_{f.entity}" for f in residual)
        return out, entities

    def apply(self, rule: Rule, value: str, location: str, counts: Counter[str]) -> Any:
        """A rule's action on one string value; DROP when the value is to be removed."""
        action = rule.action
        if action == "keep":
            return value
        if action == "detect":
            return self.detect(value, location, counts)
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
        return out

    # --- parts of an exchange -----------------------------------------------------------------

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
        out = self.apply(rule, decoded, "path", counts)
        return respell_segment(segment, out)

    def pairs(
        self, section: str, pairs: list[dict[str, str]] | None, location: str, counts: Counter[str]
    ) -> list[dict[str, str]] | None:
        """Query parameters or form fields, by name; order and repeats are kept."""
        if not pairs:
            return pairs
        out = []
        for pair in pairs:
            value = pair["value"]
            rule = self.rules.name_rule(section, pair["name"])
            new = self.apply(rule, value, location, counts) if value else value
            if new is not DROP:
                out.append(pair if new == value else {"name": pair["name"], "value": new})
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
            rule = self.rules.name_rule("headers", name)
            low = name.lower()
            if low in ("cookie", "set-cookie") and rule.action not in ("keep", "drop", "redact"):
                new: Any = self.cookies(value, low == "set-cookie", counts)
            else:
                new = self.apply(rule, value, location, counts) if value else value
            if new is not DROP:
                out.append(pair if new == value else {"name": name, "value": new})
        return out

    def cookies(self, header: str, is_set_cookie: bool, counts: Counter[str]) -> str:
        # Capture may already have replaced the whole header with one token.
        if is_token(header):
            return header
        # In Set-Cookie only the first item is a cookie; the attributes (Path, ...) stay as
        # they are. A bare word is a nameless cookie's value (http.cookies; capture agrees).
        if is_set_cookie:
            parsed = cookie_codec.parse_set_cookie(header)
            rule = self.rules.name_rule("cookies", parsed.name)
            new = self._cookie_value(rule, parsed.value, counts)
            if new is DROP:
                return parsed.attributes.removeprefix(";")
            return parsed.with_value(new).format()
        out = []
        for item in cookie_codec.parse_cookie_header(header):
            rule = self.rules.name_rule("cookies", item.name)
            new = self._cookie_value(rule, item.value, counts)
            if new is not DROP:
                out.append(item.with_value(new))
        return cookie_codec.format_cookie_header(out)

    def _cookie_value(self, rule: Rule, value: str, counts: Counter[str]) -> Any:
        if not value:
            return value
        # A quoted value keeps its quotes (capture does the same), so the token inside is
        # still recognised as ours on a second pass.
        inner, quoted = cookie_codec.unquote(value)
        new = self.apply(rule, inner, "cookie", counts)
        if new is DROP or new == inner:
            return new if new is DROP else value
        return cookie_codec.requote(new, quoted)

    def text(self, value: str | None, location: str, counts: Counter[str]) -> str | None:
        """A free-text column (the error message): what no rule names."""
        if not value:
            return value
        new = self.apply(self.policy.default, value, location, counts)
        return None if new is DROP else new

    # --- bodies -------------------------------------------------------------------------------

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
            if kind.kind == bodies.BINARY:
                raise bodies.Undecodable("binary content")
            text = bodies.decode_text(data, kind.charset)
            if kind.kind == bodies.JSON:
                new = self._json_body(text, location, counts)
            elif kind.kind == bodies.FORM:
                pairs = [{"name": n, "value": v} for n, v in bodies.parse_form(text)]
                new_pairs = self.pairs("form", pairs, location, counts) or []
                new = (
                    text
                    if new_pairs == pairs
                    else bodies.dump_form(text, [(p["name"], p["value"]) for p in new_pairs])
                )
            else:
                new = self.text(text, location, counts)
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
            encoded = new.encode(kind.charset)
        except (UnicodeEncodeError, LookupError):
            encoded = new.encode("utf-8")
        return bodies.encode_content(encoded, encodings), "rewritten"

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

    def _json_body(self, text: str, location: str, counts: Counter[str]) -> str:
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
                scan_key = rule is None or rule.action == "detect"
                new_key = self.detect(key, location, counts) if scan_key else key
                out[new_key] = new
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
        return self._json_leaf(node, rule or self.policy.default, location, counts)

    def _json_leaf(self, node: Any, rule: Rule, location: str, counts: Counter[str]) -> Any:
        if isinstance(node, str):
            return self.apply(rule, node, location, counts)
        if node is None or isinstance(node, bool | float):
            # No format to preserve and nothing a detector finds in them: only removal applies.
            if rule.action in ("drop", "redact"):
                return self.apply(rule, str(node), location, counts)
            return node
        # An integer: ids, phone numbers and card numbers stored as JSON numbers.
        out = self.apply(rule, str(node), location, counts)
        if isinstance(out, str) and re.fullmatch(r"-?\d+", out):
            return int(out)
        return out

    # --- a whole exchange ------------------------------------------------------------------------

    def exchange(self, row: dict[str, Any], counts: Counter[str]) -> dict[str, Any]:
        """The scrubbed columns of one exchange (only those that change are returned)."""
        out: dict[str, Any] = {}
        # The raw target is what replay sends; its path is the exact one (the `path` column
        # shows bytes that are not UTF-8 as display text), and it is rewritten to agree with
        # the scrubbed path and query, re-encoding only what changed.
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


def _clean_edge(text: str, start: int, end: int) -> bool:
    """Whether a span is set apart from its neighbours, so a replacement cannot merge with
    them into a new match: whitespace or bracketing punctuation, or sentence punctuation
    followed by whitespace, on both sides."""
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    after2 = text[end + 1] if end + 1 < len(text) else " "
    ok_before = before.isspace() or before in _SEPARATORS
    ok_after = (
        after.isspace()
        or after in _SEPARATORS
        or (after in ".!?" and (after2.isspace() or after2 in _SEPARATORS))
    )
    return ok_before and ok_after


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


def _bounded_put(cache: dict[str, Any], key: str, value: Any) -> None:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value
