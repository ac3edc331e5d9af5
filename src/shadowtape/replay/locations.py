"""Where a value sits in a request or a response, as a short editable string.

Responses (where servers mint values): `json:$.data.token`, `header:etag`, `set-cookie:sid`,
`location:path[2]`, `location:query.id`. Requests (where clients send them back): `path[2]`,
`query:id`, `header:authorization`, `cookie:sid`, `json:$.order.id`, `form:csrf`.
A request header yields each of its tokens (so `Bearer X` yields X), and a replacement swaps
the token inside the value, keeping the rest as recorded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from shadowtape.http import cookies
from shadowtape.http.headers import get_all, media_type
from shadowtape.http.jsonpath import index_step, key_step
from shadowtape.http.target import (
    join_target,
    query_pairs,
    rewrite_query,
    split_target,
    target_of_url,
    target_path,
)
from shadowtape.replay.sender import RequestParts

Pairs = list[tuple[str, str]]

MAX_PARSE_BYTES = 1024 * 1024  # bigger bodies are not searched for correlated values
FORM = "application/x-www-form-urlencoded"
_TOKEN_SPLIT = re.compile(r"[\s,;=\"]+")
# Response headers that are about the transport or the moment, never a minted value.
_SKIP_RESPONSE_HEADERS = frozenset(
    {
        "date",
        "content-length",
        "content-type",
        "content-encoding",
        "server",
        "connection",
        "keep-alive",
        "vary",
        "cache-control",
        "expires",
        "last-modified",
        "age",
        "transfer-encoding",
        "traceparent",
        "x-shadowtape-replay-id",
    }
)
_SKIP_REQUEST_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "accept",
        "accept-encoding",
        "user-agent",
        "connection",
        "traceparent",
        "x-shadowtape-replay-id",
    }
)


def _json_path(parent: str, key: str | int) -> str:
    return parent + (index_step(key) if isinstance(key, int) else key_step(key))


def _walk(doc: Any, path: str = "$") -> Iterator[tuple[str, Any]]:
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _walk(v, _json_path(path, str(k)))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _walk(v, _json_path(path, i))
    elif isinstance(doc, str) or (isinstance(doc, int) and not isinstance(doc, bool)):
        yield path, doc


def json_leaves(doc: Any) -> Iterator[tuple[str, str]]:
    """String and integer leaves with their paths; floats and booleans are never ids."""
    for path, value in _walk(doc):
        yield path, value if isinstance(value, str) else str(value)


def parse_json(body: bytes | None) -> Any:
    if not body or len(body) > MAX_PARSE_BYTES or body.lstrip()[:1] not in (b"{", b"["):
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def _unquote_etag(value: str) -> str:
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"')


def _set_cookies(headers: Pairs) -> Iterator[tuple[str, str]]:
    for sc in cookies.set_cookies(headers):
        if sc.cookie.has_eq:
            yield sc.name, cookies.unquote(sc.value)[0]


def _location_parts(value: str) -> tuple[str, Pairs]:
    """Path and query pairs of a Location header (absolute or relative reference)."""
    target = target_of_url(value) if "://" in value else value.partition("#")[0]
    path, query = split_target(target)
    return path, query_pairs(query)


def response_values(headers: Pairs, body: bytes | None) -> Iterator[tuple[str, str]]:
    """Every (location, value) a server may have minted in one response."""
    for name, value in headers:
        lower = name.lower()
        if lower in _SKIP_RESPONSE_HEADERS or lower == "set-cookie":
            continue
        if lower == "location":
            path, query = _location_parts(value)
            for i, seg in enumerate(path.split("/")):
                if seg:
                    yield f"location:path[{i}]", seg
            for qn, qv in query:
                yield f"location:query.{qn}", qv
            continue
        yield f"header:{lower}", _unquote_etag(value)
    for name, value in _set_cookies(headers):
        yield f"set-cookie:{name}", value
    doc = parse_json(body)
    if doc is not None:
        for path, value in json_leaves(doc):
            yield f"json:{path}", value


def response_value(
    location: str, headers: Pairs, body: bytes | None, doc: Any = None
) -> str | None:
    """The value at one response location, or None when the response has none there."""
    kind, _, name = location.partition(":")
    if kind == "json":
        if doc is None:
            doc = parse_json(body)
        if doc is None:
            return None
        for path, value in json_leaves(doc):
            if path == name:
                return value
        return None
    if kind == "set-cookie":
        return next((v for n, v in _set_cookies(headers) if n == name), None)
    if kind == "location":
        for n, v in response_values([(k, v) for k, v in headers if k.lower() == "location"], None):
            if n == location:
                return v
        return None
    if kind == "header":
        values = get_all(headers, name)
        return _unquote_etag(values[0]) if values else None
    return None


def _is_form(headers: Pairs) -> bool:
    return any(media_type(v) == FORM for v in get_all(headers, "content-type"))


def request_values(parts: RequestParts) -> Iterator[tuple[str, str]]:
    """Every (location, value) in a request where a client may send a minted value back."""
    for i, seg in enumerate(target_path(parts.path).split("/")):
        if seg:
            yield f"path[{i}]", seg
    for name, value in parts.query:
        yield f"query:{name}", value
    for name, value in parts.headers:
        lower = name.lower()
        if lower in _SKIP_REQUEST_HEADERS:
            continue
        if lower == "cookie":
            for c in cookies.parse_cookie_header(value):
                if c.has_eq:
                    yield f"cookie:{c.name}", c.value
            continue
        yield f"header:{lower}", value.strip()
        for token in _TOKEN_SPLIT.split(value):
            if token and token != value.strip():
                yield f"header:{lower}", token
    if parts.body:
        if _is_form(parts.headers):
            try:
                text = parts.body.decode("utf-8")
            except UnicodeDecodeError:
                return
            for name, value in query_pairs(text):
                yield f"form:{name}", value
            return
        doc = parse_json(parts.body)
        if doc is not None:
            for path, value in json_leaves(doc):
                yield f"json:{path}", value


def replace_in_request(parts: RequestParts, location: str, old: str, new: str) -> bool:
    """Swap `old` for `new` at one request location; False when `old` is not there."""
    kind, _, name = location.partition(":")
    if kind.startswith("path["):
        index = int(kind[5:-1])
        path, query = split_target(parts.path)
        segs = path.split("/")
        if index < len(segs) and segs[index] == old:
            # Raw for raw: staging minted the segment as it sent it (Location, JSON).
            segs[index] = new
            parts.path = join_target("/".join(segs), query)
            return True
        return False
    if kind == "query":
        hit = False
        for i, (n, v) in enumerate(parts.query):
            if n == name and v == old:
                parts.query[i] = (n, new)
                hit = True
        return hit
    if kind == "header":
        hit = False
        for i, (n, v) in enumerate(parts.headers):
            if n.lower() == name and old in v:
                parts.headers[i] = (n, v.replace(old, new))
                hit = True
        return hit
    if kind == "cookie":
        hit = False
        for i, (n, v) in enumerate(parts.headers):
            if n.lower() != "cookie":
                continue
            items = cookies.parse_cookie_header(v)
            swapped = [
                c.with_value(new) if c.has_eq and c.name == name and c.value == old else c
                for c in items
            ]
            if swapped != items:
                # Only the swapped item is rewritten; the rest keeps its recorded spelling.
                parts.headers[i] = (n, cookies.format_cookie_header(swapped))
                hit = True
        return hit
    if kind == "form" and parts.body:
        text = parts.body.decode("utf-8", "surrogateescape")
        pairs = query_pairs(text)
        changed = [(n, new if n == name and v == old else v) for n, v in pairs]
        if changed == pairs:
            return False
        # Only the changed field is re-encoded; the others keep their recorded spelling.
        parts.body = rewrite_query(text, changed).encode("utf-8", "surrogateescape")
        return True
    if kind == "json" and parts.body:
        return _replace_json(parts, name, old, new)
    return False


def _replace_json(parts: RequestParts, path: str, old: str, new: str) -> bool:
    doc = parse_json(parts.body)
    leaf = dict(_walk(doc)).get(path) if doc is not None else None
    if leaf is None or str(leaf) != old:
        return False
    assert parts.body is not None
    # Swap the token in the text so the recorded formatting survives; a number stays a number
    # when staging's value is numeric too.
    if isinstance(leaf, str):
        pattern = re.escape(json.dumps(old)).encode()
        new_value: Any = new
    else:
        pattern = rb'(?<![\w."])' + re.escape(old).encode() + rb'(?![\w."])'
        new_value = int(new) if new.isdigit() else new
    replacement = json.dumps(new_value).encode().replace(b"\\", b"\\\\")
    body = re.sub(pattern, replacement, parts.body)
    if dict(_walk(parse_json(body))).get(path) != new_value:
        # The token also sat where it must not change: rewrite the document instead.
        _set_leaf(doc, path, new_value)
        body = json.dumps(doc).encode()
    parts.body = body
    return True


def _set_leaf(doc: Any, path: str, value: Any) -> None:
    for parent in _containers(doc):
        for key, child_path in parent[1]:
            if child_path == path:
                parent[0][key] = value
                return


def _containers(doc: Any, path: str = "$") -> Iterator[tuple[Any, list[tuple[Any, str]]]]:
    if isinstance(doc, dict):
        keys = [(k, _json_path(path, str(k))) for k in doc]
        yield doc, keys
        for k, p in keys:
            yield from _containers(doc[k], p)
    elif isinstance(doc, list):
        keys = [(i, _json_path(path, i)) for i in range(len(doc))]
        yield doc, keys
        for i, p in keys:
            yield from _containers(doc[i], p)
