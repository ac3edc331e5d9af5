"""Pure comparison of two responses: status, a chosen set of headers, and bodies by type.

JSON bodies are compared path by path; text line by line; binary by digest and size. Every
difference is one `Difference`, spelt with both the raw path (`$.items[3].price`) and the
normalised one (`$.items[*].price`) that routes and noise decisions group by.

Speed matters here (a replay produces millions of pairs), so the common case is short-cut:
equal bytes, then one body being the compact spelling of the other (one parse, not two), then
equal canonical JSON, are decided without walking; the walk only runs where something differs,
and skips equal subtrees the same way.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import Any

import orjson

from shadowtape.diff import bodies
from shadowtape.http.headers import charset
from shadowtape.http.jsonpath import ROOT, WILDCARD, index_step, key_step, keyed_step

STATUS = "status"
HEADER = "header"
BODY = "body"

ADDED = "added"
REMOVED = "removed"
CHANGED = "changed"
TYPE_CHANGED = "type_changed"
LENGTH = "length"
REORDERED = "reordered"
MORE = "more"  # the differences past the per-response cap, counted in one row

# Headers whose change means the client sees something different. Date, Server and the like
# differ on every response and say nothing about the API; ETag is kept because a changed
# entity tag is worth a look, and the noise model recognises it as volatile.
DEFAULT_HEADERS = frozenset(
    {
        "content-type",
        "cache-control",
        "location",
        "vary",
        "etag",
        "content-language",
        "content-disposition",
        "allow",
        "access-control-allow-origin",
    }
)

_SORT = orjson.OPT_SORT_KEYS
# Texts longer than this are compared by digest: difflib is quadratic in the worst case.
MAX_TEXT_LINES = 20_000
DEFAULT_MAX_DIFFS = 200


@dataclass(frozen=True, slots=True)
class CompareOptions:
    headers: frozenset[str] = DEFAULT_HEADERS
    # Arrays whose elements are all objects carrying one of these fields are matched by it
    # (order ignored) instead of by position.
    key_fields: tuple[str, ...] = ()
    value_limit: int = 200
    max_diffs: int = DEFAULT_MAX_DIFFS


@dataclass(frozen=True, slots=True)
class Difference:
    part: str  # status | header | body
    location: str  # normalised
    raw_location: str
    kind: str
    recorded: str | None
    staging: str | None


@dataclass(slots=True)
class Response:
    """One side of a comparison. The body is already free of its Content-Encoding."""

    status: int | None
    headers: Sequence[tuple[str, str]] = ()
    body: bytes | None = None
    truncated: bool = False


@dataclass(slots=True)
class Comparison:
    diffs: list[Difference] = field(default_factory=list)
    # Why the bodies were not compared, when they were not (truncated, status differs).
    body_skipped: str | None = None


def show(value: Any, limit: int) -> str:
    """A value as JSON text, cut to `limit` characters so one huge value cannot bloat rows."""
    if isinstance(value, str):
        text = encode_basestring(value)  # what json.dumps(value, ensure_ascii=False) does
    else:
        try:
            text = orjson.dumps(value).decode()
        except TypeError:
            text = json.dumps(value)
    return cut(text, limit)


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def _canon(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=_SORT)
    except TypeError:  # integers past 64 bits, which orjson refuses
        return json.dumps(value, sort_keys=True).encode()


def _same_json(a: Any, b: Any) -> bool:
    """Exact JSON equality for values Python already calls equal (where True == 1): the
    unsorted encoding settles the usual case of same key order, sorted keys the rest."""
    with contextlib.suppress(TypeError):  # values orjson will not print: canonical form below
        if orjson.dumps(a) == orjson.dumps(b):
            return True
    return _canon(a) == _canon(b)


def _jtype(value: Any) -> str:
    if value is None:
        return "null"
    if value is True or value is False:
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def parse_json(body: bytes) -> Any:
    """Raises ValueError on a body that is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson refuses NaN and integers past 64 bits, which Python's json accepts.
        return json.loads(body)


class _JsonWalk:
    """The recursive path-by-path comparison of two parsed JSON documents."""

    __slots__ = ("out", "key_fields", "limit", "exact", "_steps")

    def __init__(self, options: CompareOptions, exact: bool = False) -> None:
        self.out: list[Difference] = []
        self.key_fields = options.key_fields
        self.limit = options.value_limit
        # Both documents came from orjson: no NaN, so equal orjson output means equal JSON.
        self.exact = exact
        self._steps: dict[str, str] = {}

    def _step(self, key: str) -> str:
        step = self._steps.get(key)
        if step is None:
            step = self._steps[key] = key_step(key)
        return step

    def _add(self, norm: str, raw: str, kind: str, a: Any, b: Any, missing: str = "") -> None:
        self.out.append(
            Difference(
                BODY,
                norm,
                raw,
                kind,
                None if missing == "a" else show(a, self.limit),
                None if missing == "b" else show(b, self.limit),
            )
        )

    def walk(self, a: Any, b: Any, norm: str, raw: str) -> None:
        ta, tb = type(a), type(b)
        if ta is dict and tb is dict:
            if a == b and _same_json(a, b):
                return
            for k, va in a.items():
                step = self._step(k)
                if k in b:
                    self.walk(va, b[k], norm + step, raw + step)
                else:
                    self._add(norm + step, raw + step, REMOVED, va, None, missing="b")
            for k, vb in b.items():
                if k not in a:
                    step = self._step(k)
                    self._add(norm + step, raw + step, ADDED, None, vb, missing="a")
        elif ta is list and tb is list:
            if a == b and _same_json(a, b):
                return
            key = self._array_key(a, b)
            if key is not None:
                self._by_key(a, b, key, norm, raw)
            else:
                self._by_position(a, b, norm, raw)
        else:
            ja, jb = _jtype(a), _jtype(b)
            if ja != jb:
                self._add(norm, raw, TYPE_CHANGED, a, b)
            elif a != b:
                self._add(norm, raw, CHANGED, a, b)

    def _array_key(self, a: list[Any], b: list[Any]) -> str | None:
        for key in self.key_fields:
            ok = True
            for items in (a, b):
                seen = set()
                for item in items:
                    if type(item) is not dict or key not in item:
                        ok = False
                        break
                    ident = _canon(item[key])
                    if ident in seen:  # duplicate keys cannot be matched one to one
                        ok = False
                        break
                    seen.add(ident)
                if not ok:
                    break
            if ok and (a or b):
                return key
        return None

    def _by_key(self, a: list[Any], b: list[Any], key: str, norm: str, raw: str) -> None:
        norm_el = norm + WILDCARD
        index_b = {_canon(item[key]): item for item in b}
        seen = set()
        for item in a:
            ident = _canon(item[key])
            seen.add(ident)
            step = keyed_step(key, item[key])
            other = index_b.get(ident)
            if other is None:
                self._add(norm_el, raw + step, REMOVED, item, None, missing="b")
            else:
                self.walk(item, other, norm_el, raw + step)
        for item in b:
            if _canon(item[key]) not in seen:
                self._add(norm_el, raw + keyed_step(key, item[key]), ADDED, None, item, "a")

    def _by_position(self, a: list[Any], b: list[Any], norm: str, raw: str) -> None:
        if len(a) == len(b) and len(a) > 1:
            if self.exact and self._one_element_differs(a, b, norm, raw):
                return
            ca = [_canon(x) for x in a]
            cb = [_canon(x) for x in b]
            if Counter(ca) == Counter(cb):
                # Same elements, other order: one row says it better than a row per element.
                self.out.append(
                    Difference(
                        BODY,
                        norm,
                        raw,
                        REORDERED,
                        cut(_preview(a), self.limit),
                        cut(_preview(b), self.limit),
                    )
                )
                return
        norm_el = norm + WILDCARD
        common = min(len(a), len(b))
        for i in range(common):
            self.walk(a[i], b[i], norm_el, raw + index_step(i))
        if len(a) != len(b):
            self.out.append(Difference(BODY, norm, raw, LENGTH, str(len(a)), str(len(b))))
            for i in range(common, len(a)):
                self._add(norm_el, raw + index_step(i), REMOVED, a[i], None, missing="b")
            for i in range(common, len(b)):
                self._add(norm_el, raw + index_step(i), ADDED, None, b[i], missing="a")

    def _one_element_differs(self, a: list[Any], b: list[Any], norm: str, raw: str) -> bool:
        """The usual drift inside an array, one element changed, walked without printing
        every element twice (for the reorder check) and once more per element: True when
        it applied and that element was walked.

        One element unequal even by Python's ==, which is looser than JSON's (True == 1,
        1 == 1.0), cannot be a reorder: moving elements leaves at least two positions unequal.
        The others then hold nothing to report when they print the same.
        """
        only = -1
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                if only != -1:
                    return False
                only = i
        if only == -1:
            return False
        try:
            if orjson.dumps(a[:only] + a[only + 1 :]) != orjson.dumps(b[:only] + b[only + 1 :]):
                return False
        except TypeError:  # nesting past orjson's limit
            return False
        self.walk(a[only], b[only], norm + WILDCARD, raw + index_step(only))
        return True


def _preview(items: list[Any]) -> str:
    return orjson.dumps(items).decode() if len(items) < 50 else f"[{len(items)} elements]"


def compare_json(a: Any, b: Any, options: CompareOptions, exact: bool = False) -> list[Difference]:
    """`exact`: both documents were parsed by orjson (see `_JsonWalk.exact`)."""
    walker = _JsonWalk(options, exact)
    walker.walk(a, b, ROOT, ROOT)
    return walker.out


def compare_text(a: str, b: str, options: CompareOptions) -> list[Difference]:
    """Line by line; each differing run of lines is one row named by its first recorded line."""
    if a == b:
        return []
    la, lb = a.splitlines(), b.splitlines()
    if len(la) > MAX_TEXT_LINES or len(lb) > MAX_TEXT_LINES:
        return [_digest_row("text", a.encode(), b.encode())]
    out = []
    matcher = difflib.SequenceMatcher(None, la, lb, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            continue
        kind = {"replace": CHANGED, "delete": REMOVED, "insert": ADDED}[op]
        where = f"line {i1 + 1}"
        rec = cut("\n".join(la[i1:i2]), options.value_limit) if i2 > i1 else None
        stg = cut("\n".join(lb[j1:j2]), options.value_limit) if j2 > j1 else None
        out.append(Difference(BODY, where, where, kind, rec, stg))
    if not out:  # only line endings differ
        out.append(Difference(BODY, "line endings", "line endings", CHANGED, None, None))
    return out


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()[:16]} ({len(data)} bytes)"


def _digest_row(location: str, a: bytes, b: bytes) -> Difference:
    return Difference(BODY, location, location, CHANGED, _digest(a), _digest(b))


def _body_desc(cls: str, data: bytes) -> str:
    return f"{cls} ({len(data)} bytes)"


def compare_bodies(
    rec: bytes, rec_type: str | None, stg: bytes, stg_type: str | None, options: CompareOptions
) -> list[Difference]:
    if rec == stg:
        return []
    ca, cb = bodies.body_class(rec_type, rec), bodies.body_class(stg_type, stg)
    if ca == bodies.EMPTY or cb == bodies.EMPTY:
        kind = ADDED if ca == bodies.EMPTY else REMOVED
        return [
            Difference(
                BODY,
                "body",
                "body",
                kind,
                None if ca == bodies.EMPTY else _body_desc(ca, rec),
                None if cb == bodies.EMPTY else _body_desc(cb, stg),
            )
        ]
    if ca == bodies.JSON or cb == bodies.JSON:
        docs = _parse_pair(rec, stg)
        if docs is None:
            return []
        ja, jb, exact = docs
        if ja is not _INVALID and jb is not _INVALID:
            if ja == jb and ((_no_booleans(rec) and _no_booleans(stg)) or _same_json(ja, jb)):
                return []
            return compare_json(ja, jb, options, exact)
        if ja is not _INVALID or jb is not _INVALID:
            return [
                Difference(
                    BODY,
                    "body",
                    "body",
                    TYPE_CHANGED,
                    "json" if ja is not _INVALID else _body_desc(ca, rec),
                    "json" if jb is not _INVALID else _body_desc(cb, stg),
                )
            ]
        ca = cb = bodies.TEXT if ca != bodies.BINARY and cb != bodies.BINARY else bodies.BINARY
    if ca == bodies.TEXT and cb == bodies.TEXT:
        ta = rec.decode(charset(rec_type), "replace")
        tb = stg.decode(charset(stg_type), "replace")
        return compare_text(ta, tb, options)
    if ca != cb:
        return [
            Difference(BODY, "body", "body", TYPE_CHANGED, _body_desc(ca, rec), _body_desc(cb, stg))
        ]
    return [_digest_row("bytes", rec, stg)]


_INVALID = object()


def _load(body: bytes) -> tuple[Any, bool]:
    """`parse_json`, _INVALID for a body that is not JSON, and whether orjson parsed it."""
    try:
        return orjson.loads(body), True
    except orjson.JSONDecodeError:
        try:
            return json.loads(body), False
        except ValueError:
            return _INVALID, False


def _parse_pair(rec: bytes, stg: bytes) -> tuple[Any, Any, bool] | None:
    """Both bodies parsed (_INVALID for one that is not JSON) and whether orjson parsed
    both, or None when they are one document told apart only by spelling.

    The common equal pair is one server's JSON against another's: same document, other
    spacing or escaping. Parsing the longer body and printing it compactly settles that with
    one parse instead of two whenever the shorter body already is that compact form (what
    most servers emit). Only an orjson parse may take the shortcut: Python's parser accepts
    NaN, which orjson would print as null, so its documents always take the long way.
    """
    swap = len(stg) > len(rec)
    longer, shorter = (stg, rec) if swap else (rec, stg)
    doc, exact = _load(longer)
    # orjson never writes a raw newline, and ": " only inside a string after an escaped
    # quote: a shorter body with either is not compact, so printing the document is skipped.
    if exact and b"\n" not in shorter and b'": ' not in shorter:
        with contextlib.suppress(TypeError):  # nesting past orjson's limit, text it won't print
            if orjson.dumps(doc) == shorter:
                return None
    other, other_exact = _load(shorter)
    if swap:
        return other, doc, exact and other_exact
    return doc, other, exact and other_exact


_CONTENT_TYPE = frozenset({"content-type"})
# The header set plus content-type, built once per set rather than once per response pair.
_WANTED: dict[frozenset[str], frozenset[str]] = {}


def _no_booleans(body: bytes) -> bool:
    """Python's == takes True for 1; without a boolean literal anywhere in either body (a
    string containing one only costs the exact check) == is JSON's equality."""
    return b"true" not in body and b"false" not in body


def header_map(headers: Sequence[tuple[str, str]], wanted: frozenset[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers:
        low = name.lower()
        if low in wanted:
            out[low] = out[low] + ", " + value if low in out else value
    return out


def _header_norm(name: str, value: str) -> str:
    if name == "content-type":
        return ";".join(p.strip() for p in value.lower().split(";"))
    if name == "location":
        # Recorded answers point at production's host, staging's at staging's: compare the
        # target inside the site, not the site.
        scheme_end = value.find("://")
        if scheme_end != -1:
            slash = value.find("/", scheme_end + 3)
            return value[slash:] if slash != -1 else "/"
    return value.strip()


def compare_headers(
    rec: Sequence[tuple[str, str]], stg: Sequence[tuple[str, str]], options: CompareOptions
) -> list[Difference]:
    return _compare_header_maps(
        header_map(rec, options.headers), header_map(stg, options.headers), options
    )


def _compare_header_maps(
    ha: dict[str, str], hb: dict[str, str], options: CompareOptions
) -> list[Difference]:
    out = []
    limit = options.value_limit
    for name in sorted(ha.keys() | hb.keys()):
        if name not in options.headers:  # content-type may be here for the body's sake only
            continue
        va, vb = ha.get(name), hb.get(name)
        if va is None:
            out.append(Difference(HEADER, name, name, ADDED, None, cut(vb or "", limit)))
        elif vb is None:
            out.append(Difference(HEADER, name, name, REMOVED, cut(va, limit), None))
        elif va != vb and _header_norm(name, va) != _header_norm(name, vb):
            out.append(Difference(HEADER, name, name, CHANGED, cut(va, limit), cut(vb, limit)))
    return out


def wanted_headers(options: CompareOptions) -> frozenset[str]:
    """The header names a comparison reads: the compared set plus content-type, which the
    body comparison needs whether or not it is compared itself."""
    wanted = _WANTED.get(options.headers)
    if wanted is None:
        wanted = _WANTED[options.headers] = options.headers | _CONTENT_TYPE
    return wanted


@dataclass(slots=True)
class Side:
    """One side of a comparison with its headers already reduced to a map of lower-case
    name -> joined value (at least `wanted_headers`; other names are ignored). A batch of
    responses can build these maps column-wise, far cheaper than one response at a time."""

    status: int | None
    headers: dict[str, str]
    body: bytes | None = None
    truncated: bool = False


def _status_differs(rec: int | None, stg: int | None) -> Comparison:
    """Status first: when it differs, headers and bodies describe different outcomes (an
    error page against a resource) and comparing them would bury the one fact that matters."""
    result = Comparison()
    result.diffs.append(Difference(STATUS, STATUS, STATUS, CHANGED, str(rec), str(stg)))
    result.body_skipped = "status differs"
    return result


def compare_responses(rec: Response, stg: Response, options: CompareOptions) -> Comparison:
    if rec.status != stg.status:
        return _status_differs(rec.status, stg.status)
    wanted = wanted_headers(options)
    return compare_sides(
        Side(rec.status, header_map(rec.headers, wanted), rec.body, rec.truncated),
        Side(stg.status, header_map(stg.headers, wanted), stg.body, stg.truncated),
        options,
    )


def compare_sides(rec: Side, stg: Side, options: CompareOptions) -> Comparison:
    """`compare_responses` for sides whose header maps are already built."""
    if rec.status != stg.status:
        return _status_differs(rec.status, stg.status)
    result = Comparison()
    ha, hb = rec.headers, stg.headers
    if ha != hb:  # equal maps can hold no difference
        result.diffs.extend(_compare_header_maps(ha, hb, options))
    if rec.truncated or stg.truncated:
        result.body_skipped = "body truncated"
        return result
    body_diffs = compare_bodies(
        rec.body or b"", ha.get("content-type"), stg.body or b"", hb.get("content-type"), options
    )
    if len(body_diffs) > options.max_diffs:
        extra = len(body_diffs) - options.max_diffs
        body_diffs = body_diffs[: options.max_diffs]
        body_diffs.append(
            Difference(BODY, "body", "body", MORE, f"{extra} more differences not listed", None)
        )
    result.diffs.extend(body_diffs)
    return result
