"""Bodies as content: undo Content-Encoding, tell JSON / form / text / binary apart, and put a
changed body back together in the encoding it came in.

Re-encoding is deterministic (gzip with mtime 0, fixed levels) so that the same input always
gives byte-identical output.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass
from typing import Any

import brotli

from shadowtape import content_coding
from shadowtape.http.headers import is_utf8, parse_content_type
from shadowtape.http.target import query_pairs, rewrite_query

JSON = "json"
FORM = "form"
TEXT = "text"
BINARY = "binary"


class Undecodable(Exception):
    """A body we cannot read as content; the policy decides what happens to it."""


@dataclass(frozen=True, slots=True)
class ContentType:
    kind: str  # json | form | text | binary
    charset: str


def split_encodings(header: str | None) -> list[str]:
    return content_coding.split_codings(header)


# Only what encode_content can put back: a body decoded from any other coding could not be
# stored under its original Content-Encoding, so it is undecodable here (fail-closed).
REENCODABLE = frozenset({"gzip", "x-gzip", "deflate", "br"})


def decode_content(body: bytes, encodings: list[str]) -> bytes:
    """Undo the encodings, last applied first."""
    try:
        return content_coding.decode(body, encodings, supported=REENCODABLE)
    except content_coding.ContentCodingError as exc:
        raise Undecodable(str(exc)) from None


def encode_content(data: bytes, encodings: list[str]) -> bytes:
    for coding in encodings:
        if coding in ("gzip", "x-gzip"):
            data = gzip.compress(data, compresslevel=6, mtime=0)
        elif coding == "deflate":
            data = zlib.compress(data, 6)
        elif coding == "br":
            data = brotli.compress(data, quality=5)
    return data


def classify(content_type: str | None, data: bytes) -> ContentType:
    """What the body is, from its Content-Type, or sniffed when there is none."""
    parsed = parse_content_type(content_type)
    mime = parsed.type
    charset = (parsed.param("charset") or "utf-8").lower()
    if mime == "application/json" or mime.endswith("+json") or mime.endswith("/json"):
        return ContentType(JSON, charset)
    if mime == "application/x-www-form-urlencoded":
        return ContentType(FORM, charset)
    if (
        mime.startswith("text/")
        or mime.endswith("+xml")
        or mime
        in ("application/xml", "application/javascript", "application/graphql", "application/csv")
    ):
        return ContentType(TEXT, charset)
    if not mime:
        head = data.lstrip()[:1]
        if head in (b"{", b"["):
            return ContentType(JSON, charset)
        return ContentType(TEXT, charset)
    return ContentType(BINARY, charset)


def decode_text(data: bytes, charset: str) -> str:
    try:
        return data.decode(charset)
    except (UnicodeDecodeError, LookupError):
        raise Undecodable(f"not {charset} text") from None


def parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise Undecodable(f"broken JSON ({exc})") from None


def dump_json(value: Any, like: str) -> str:
    """Serialise in the style of the original: compact stays compact."""
    compact = ", " not in like and ": " not in like
    separators = (",", ":") if compact else (", ", ": ")
    return json.dumps(value, ensure_ascii=False, separators=separators)


def parse_form(text: str) -> list[tuple[str, str]]:
    """A form body's fields, decoded as a query string is (http.target); escapes that are
    not UTF-8 make it undecodable (fail-closed: we cannot say what such a field holds)."""
    pairs = query_pairs(text)
    if not all(is_utf8(n) and is_utf8(v) for n, v in pairs):
        raise Undecodable("bad form body (a %-escape that is not UTF-8)")
    return pairs


def dump_form(text: str, pairs: list[tuple[str, str]]) -> str:
    """The form body changed to hold `pairs`: only changed fields re-encoded."""
    return rewrite_query(text, pairs)
