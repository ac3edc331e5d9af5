"""The HTTP concepts serve takes from the shared layer, in one place.

Route templates (`GET /users/{id}`), JSON paths (`$.items[0].price`), header bytes held in
surrogate-escaped strings, and query strings: serve must spell each exactly as capture, diff
and replay do, so it never parses them itself. Until the shared HTTP core lands, diff's
implementations are used behind these names; swapping the core in changes this file only.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from urllib.parse import parse_qsl

from shadowtape.diff.paths import index_step, key_step, matches, split
from shadowtape.diff.routes import RouteTable, compile_template, infer_template, load_routes

__all__ = [
    "RouteTable",
    "compile_template",
    "decode_header",
    "encode_header",
    "index_step",
    "infer_template",
    "key_step",
    "load_route_file",
    "path_covers",
    "query_pairs",
    "route_table",
    "split_path",
    "template_key",
]


def decode_header(raw: bytes) -> str:
    """Wire bytes to the schema's str: UTF-8 with surrogate escapes, so no byte is lost."""
    return raw.decode("utf-8", "surrogateescape")


def encode_header(text: str) -> bytes:
    """The inverse of decode_header: the recorded bytes, non-ASCII included, exactly."""
    return text.encode("utf-8", "surrogateescape")


def query_pairs(raw_query: str) -> list[tuple[str, str]]:
    """A query string as ordered, decoded name/value pairs, duplicates and blanks kept, the way
    capture records them."""
    if not raw_query:
        return []
    return parse_qsl(raw_query, keep_blank_values=True, errors="surrogateescape")


def route_table(labels: Iterable[str], extra: RouteTable | None = None) -> RouteTable:
    """A table that maps a request onto the recording's own route templates (most specific
    first), after any templates the user gave, so live and recorded requests share labels."""
    templates = list(extra.templates) if extra is not None else []
    seen = {(t.method, t.path) for t in templates}
    for label in labels:
        t = compile_template(label)
        if (t.method, t.path) not in seen:
            seen.add((t.method, t.path))
            templates.append(t)
    return RouteTable(templates)


def load_route_file(path: str | Path) -> RouteTable:
    return load_routes(path)


def template_key(label: str) -> str:
    """A route label with placeholder names dropped (`GET /a/{uuid}` -> `GET /a/{}`), so a
    matcher file may write `{id}` where inference wrote `{uuid}`."""
    method, _, path = label.strip().partition(" ")
    if not path:
        method, path = "", method
    out = []
    for seg in path.split("/"):
        out.append("{}" if seg.startswith("{") and seg.endswith("}") else seg)
    return f"{method.upper()} {'/'.join(out)}".strip()


def split_path(path: str) -> list[str]:
    """The steps of a JSON path; ValueError on one that is not in the shared grammar."""
    return split(path)


def path_covers(pattern: str, location: str) -> bool:
    """Whether a rule's JSON path covers a location (itself and everything below it)."""
    return matches(pattern, location)
