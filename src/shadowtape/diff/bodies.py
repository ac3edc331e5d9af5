"""Response bodies as the comparison needs them: decoded from their Content-Encoding and
sorted into JSON, text or binary by their Content-Type (and, failing that, by their bytes).

The recorded body is stored as it crossed the wire (gzip, br, ...); the staging body was
already decoded by httpx, so its Content-Encoding header is informational only.
"""

from __future__ import annotations

from shadowtape import content_coding
from shadowtape.http.headers import media_type

JSON = "json"
TEXT = "text"
BINARY = "binary"
EMPTY = "empty"

_TEXT_TYPES = (
    "application/xml",
    "application/javascript",
    "application/ecmascript",
    "application/x-www-form-urlencoded",
    "application/graphql",
    "application/yaml",
    "application/x-yaml",
    "application/csv",
    "image/svg+xml",
)


class BodyDecodeError(ValueError):
    """A body whose Content-Encoding does not decode; it is compared as bytes and counted."""


def decode_content(body: bytes, encoding: str | None) -> bytes:
    """Undo Content-Encoding (applied in order, so undone in reverse)."""
    if not body or not encoding:
        return body
    try:
        return content_coding.decode(body, content_coding.split_codings(encoding))
    except content_coding.ContentCodingError as exc:
        raise BodyDecodeError(str(exc)) from None


def declared_class(content_type: str | None) -> str | None:
    """The class a Content-Type declares, or None when it declares none (the bytes decide)."""
    mt = media_type(content_type)
    if mt == "application/json" or mt.endswith("+json") or mt.endswith("/json"):
        return JSON
    if mt.startswith("text/") or mt in _TEXT_TYPES or mt.endswith("+xml"):
        return TEXT
    if mt:
        return BINARY
    return None


# A run sees a handful of distinct Content-Type values over millions of bodies.
_DECLARED: dict[str | None, str | None] = {}


def body_class(content_type: str | None, body: bytes) -> str:
    """JSON, text or binary: by declared type first; undeclared bodies by their bytes."""
    if not body:
        return EMPTY
    try:
        declared = _DECLARED[content_type]
    except KeyError:
        declared = declared_class(content_type)
        if len(_DECLARED) < 1024:
            _DECLARED[content_type] = declared
    if declared is not None:
        return declared
    head = body.lstrip()[:1]
    if head in (b"{", b"["):
        return JSON
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return BINARY
    return TEXT
