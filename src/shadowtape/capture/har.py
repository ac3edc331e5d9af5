"""HAR 1.2 entries as exchange records, streamed one entry at a time.

Accepts what browsers and mitmproxy's `savehar` write: base64 bodies, missing bodies, status 0
for requests that got no answer, HTTP/2 pseudo-headers, `_`-prefixed extensions (ignored except
the error text). Each entry becomes one row; a redirect chain is several entries and so several
rows, as it was several requests.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO
from urllib.parse import urlsplit

from mitmproxy.net.http.headers import infer_content_encoding, parse_content_type

from shadowtape.capture.bodies import (
    has_content_encoding,
    headers_for_decoded_body,
    keep_body,
)
from shadowtape.capture.jsonstream import JsonScanner
from shadowtape.errors import InputError
from shadowtape.http.target import (
    build_query,
    build_target,
    query_pairs,
    split_target,
    target_of_url,
)
from shadowtape.schema import Exchange, Pairs

SUPPORTED_VERSIONS = ("1.2", "1.1")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class EntryError(ValueError):
    """One entry that cannot be read as an HTTP exchange; the run decides skip or fail."""


class HarFormatError(InputError):
    """The file as a whole is not a HAR this reader accepts."""


@dataclass(frozen=True, slots=True)
class HarEntry:
    index: int
    entry: Any
    # The writing tool's name (log.creator.name): text bodies are re-encoded by its rules.
    creator: str = ""


def iter_har_entries(fh: TextIO, name: str) -> Iterator[HarEntry]:
    """Yield the entries of `log.entries` in file order, checking `log.version` on the way."""
    scanner = JsonScanner(fh, name)
    state: dict[str, Any] = {"log": False, "entries": False, "version": None, "creator": ""}

    def check_version(version: Any) -> None:
        if version not in SUPPORTED_VERSIONS:
            raise HarFormatError(
                f"{name}: HAR version {version!r} is not supported; shadowtape reads HAR 1.2 "
                "(and 1.1) as browsers and mitmproxy write it"
            )

    def on_log_key(key: str) -> Iterator[HarEntry]:
        if key == "entries":
            state["entries"] = True
            if scanner.peek() != "[":
                raise HarFormatError(f"{name}: log.entries is not a list; not a HAR file")
            for index, entry in enumerate(scanner.array_items()):
                yield HarEntry(index, entry, state["creator"])
        elif key == "creator":
            creator = scanner.value()
            if isinstance(creator, dict) and isinstance(creator.get("name"), str):
                state["creator"] = creator["name"]
        elif key == "version":
            state["version"] = scanner.value()
            check_version(state["version"])
        else:
            scanner.value()

    def on_top_key(key: str) -> Iterator[HarEntry]:
        if key == "log":
            state["log"] = True
            if scanner.peek() != "{":
                raise HarFormatError(f"{name}: `log` is not an object; not a HAR file")
            yield from scanner.object_items(on_log_key)
        else:
            scanner.value()

    if scanner.peek() != "{":
        raise scanner.malformed("a HAR file is a JSON object starting with '{'")
    yield from scanner.object_items(on_top_key)
    scanner.at_end()
    if not state["log"] or not state["entries"]:
        raise HarFormatError(f"{name}: no log.entries; not a HAR file")
    # Writers put the version first; one that comes after the entries is checked here, and
    # the run discards what it wrote from this file.
    check_version(state["version"])


# --- one entry -----------------------------------------------------------------------------


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise EntryError(f"{where} is missing or not an object")
    return value


def _pairs(value: Any, where: str, drop_pseudo: bool = False) -> Pairs:
    if value is None:
        return []
    if not isinstance(value, list):
        raise EntryError(f"{where} is not a list")
    out: Pairs = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise EntryError(f"{where} has an item without a name")
        name = item["name"]
        # HTTP/2 pseudo-headers (:method, :path...) are request-line data, recorded apart.
        if drop_pseudo and name.startswith(":"):
            continue
        val = item.get("value", "")
        out.append((name, val if isinstance(val, str) else str(val)))
    return out


def parse_time(value: Any) -> int:
    if not isinstance(value, str):
        raise EntryError("startedDateTime is missing")
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise EntryError(f"startedDateTime {value!r} is not an ISO 8601 time") from None
    if dt.tzinfo is None:
        raise EntryError(f"startedDateTime {value!r} has no time zone")
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


def text_charset(mime_type: Any, creator: str) -> str:
    """The character set a HAR writer decoded a body with, to turn its text back into bytes.

    HAR stores text bodies as characters, decoded by the declared charset; without one,
    mitmproxy falls back to its own guess (latin-1 for anything not JSON), browsers to UTF-8.
    """
    mime = mime_type if isinstance(mime_type, str) else ""
    parsed = parse_content_type(mime)
    charset = parsed[2].get("charset") if parsed else None
    if charset:
        return charset
    if creator == "mitmproxy":
        return infer_content_encoding(mime)
    return "utf-8"


def _text_body(text: Any, encoding: Any, charset: str, where: str) -> bytes | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise EntryError(f"{where}.text is not a string")
    if encoding == "base64":
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise EntryError(f"{where}.text is marked base64 but does not decode") from None
    try:
        return text.encode(charset)
    except (LookupError, UnicodeEncodeError):
        # An unknown charset, or characters it cannot hold: UTF-8 keeps every character.
        return text.encode("utf-8", "surrogateescape")


def request_body(request: dict[str, Any], creator: str = "") -> bytes | None:
    post = request.get("postData")
    if post is None:
        # HAR writers add postData whenever a request had a body: none means empty, which
        # is also how live capture records a GET.
        return b""
    post = _obj(post, "request.postData")
    if "text" in post:
        charset = text_charset(post.get("mimeType"), creator)
        return _text_body(post.get("text"), post.get("encoding"), charset, "request.postData")
    params = _pairs(post.get("params"), "request.postData.params")
    return build_query(params).encode() if params else None


def _ms(value: Any) -> float:
    """A HAR timing in ms; -1 (or anything not a number) means it does not apply."""
    return float(value) if isinstance(value, int | float) and value > 0 else 0.0


def har_entry_to_exchange(
    entry: Any, capture_id: str, max_body: int, creator: str = ""
) -> Exchange:
    """Pure conversion of one HAR entry. The caller sets id, session and seq (they depend on
    the file and the entries before) and scrubs credentials."""
    entry = _obj(entry, "entry")
    request = _obj(entry.get("request"), "request")
    response = entry.get("response")
    method = request.get("method")
    url = request.get("url")
    if not isinstance(method, str) or not method:
        raise EntryError("request.method is missing")
    if not isinstance(url, str) or not url:
        raise EntryError("request.url is missing")
    parts = urlsplit(url)
    if not parts.scheme or not parts.hostname:
        raise EntryError(f"request.url {url!r} is not an absolute URL")
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        raise EntryError(f"request.url {url!r} has a bad port") from None
    # The URL is what went on the wire: its target is kept unparsed. Writers that leave the
    # query out of the URL and list it only in queryString get a target spelled from it.
    target = target_of_url(url)
    path, raw_query = split_target(target)
    if raw_query:
        query = query_pairs(raw_query)
    else:
        query = _pairs(request.get("queryString"), "request.queryString")
        if query:
            target = build_target(path, query)
    started = parse_time(entry.get("startedDateTime"))
    req_body = keep_body(request_body(request, creator), max_body)
    req_headers = _pairs(request.get("headers"), "request.headers", drop_pseudo=True)
    timings = entry.get("timings") if isinstance(entry.get("timings"), dict) else {}
    sent = started + round(
        1000 * sum(_ms(timings.get(k)) for k in ("blocked", "dns", "connect", "send"))
    )
    ex = Exchange(
        id="",
        session_id="",
        seq=0,
        started_at=started,
        request_sent_at=sent,
        method=method,
        scheme=parts.scheme,
        host=parts.hostname,
        port=port,
        path=path or "/",
        query=query,
        request_target=target,
        http_version=request.get("httpVersion") or None,
        request_headers=req_headers,
        request_body=req_body.body,
        request_body_truncated=req_body.truncated,
        request_body_size=req_body.size,
        capture_id=capture_id,
    )
    if response is not None:
        _fill_response(ex, _obj(response, "response"), timings, sent, max_body, creator)
    if ex.status is None and ex.error is None:
        ex.error = "no response recorded"
    return ex


def _fill_response(
    ex: Exchange,
    response: dict[str, Any],
    timings: dict[str, Any],
    sent: int,
    max_body: int,
    creator: str,
) -> None:
    status = response.get("status")
    error = response.get("_error") or response.get("_failureText")
    if isinstance(error, str) and error:
        ex.error = error
    # Status 0 is how HAR writers say "no response" (aborted, refused, blocked).
    if not isinstance(status, int) or status <= 0:
        return
    ex.status = status
    ex.reason = response.get("statusText") or None
    headers = _pairs(response.get("headers"), "response.headers", drop_pseudo=True)
    content = response.get("content")
    body = None
    if isinstance(content, dict):
        charset = text_charset(content.get("mimeType"), creator)
        body = _text_body(content.get("text"), content.get("encoding"), charset, "response.content")
        # No text and size 0 is an empty body; no text and a size is a body not saved (null).
        if body is None and not content.get("size"):
            body = b""
    # HAR writers store the decoded body next to the original Content-Encoding header.
    if body is not None and has_content_encoding(headers):
        headers = headers_for_decoded_body(headers, len(body))
    kept = keep_body(body, max_body)
    ex.response_headers = headers
    ex.response_body = kept.body
    ex.response_body_truncated = kept.truncated
    ex.response_body_size = kept.size
    ex.response_started_at = sent + round(1000 * _ms(timings.get("wait")))
    ex.response_ended_at = ex.response_started_at + round(1000 * _ms(timings.get("receive")))
