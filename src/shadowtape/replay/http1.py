"""HTTP/1.1 on the wire for the replayer's lean transport: pure bytes in, bytes or facts out.

A replayer sends tens of thousands of small requests; a general-purpose state machine (h11)
spends hundreds of function calls on each. Here a request head is one join checked by one
regular expression, and a response head is parsed with bytes methods. The rules follow RFC
9112 and h11's strictness: header names are tokens, values carry no CR/LF/NUL and no outer
whitespace, the status line is `HTTP/x.y NNN reason`, and the body length is decided by
`body_framing` (RFC 9112 section 6.3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx

Origin = tuple[str, str, int]
RawHeaders = list[tuple[bytes, bytes]]
DEFAULT_PORTS = {"http": 80, "https": 443}

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_VALUE = rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?"
_METHOD = re.compile(_TOKEN)
_TARGET = re.compile(rb"[\x21-\x7e]+")
_HEADER_LINE = re.compile(_TOKEN + rb": " + _VALUE + rb"\r\n")
_HEADER_BLOCK = re.compile(rb"(?:" + _TOKEN + rb": " + _VALUE + rb"\r\n)*")
_STATUS_LINE = re.compile(rb"HTTP/(\d\.\d) (\d{3})(?: ([^\r\n]*))?")
_RESPONSE_HEADER = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(.*?)[ \t]*", re.DOTALL)
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r\n")

# URLs httpx would send unchanged: ASCII host, and a target of unreserved, sub-delim, ":@/?"
# characters and valid %XX escapes with no dot segments (httpx would quote or normalise
# those). Anything else goes through httpx.URL, so the wire stays what httpx would send.
_PLAIN_URL = re.compile(
    r"(https?)://([a-z0-9.-]+)(?::(\d{1,5}))?"
    r"(/(?:[A-Za-z0-9\-_~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2}|\.)*)?\Z"
)
_DOT_SEGMENT = re.compile(r"/\.\.?(?:/|\?|\Z)")


class ProtocolViolation(ValueError):
    """Bytes that are not HTTP/1.1 as this client speaks it."""


def request_head(
    method: str, url: str, headers: list[tuple[str, str]], body: bytes | None
) -> tuple[Origin, bytes, RawHeaders]:
    """Origin, request target and header bytes exactly as httpx.Request would make them,
    including the headers httpx adds (Host when missing; Content-Length for a body, or 0 for
    a bodiless POST/PUT/PATCH)."""
    m = _PLAIN_URL.match(url)
    if m is None or _DOT_SEGMENT.search(m.group(4) or ""):
        parsed = httpx.URL(url)
        scheme, host, port = parsed.scheme, parsed.host, parsed.port
        target = parsed.raw_path
        netloc = parsed.netloc
    else:
        scheme, host, port_text, path = m.groups()
        port = int(port_text) if port_text else None
        if port == DEFAULT_PORTS[scheme]:
            port = None
        target = (path or "/").encode("ascii")
        netloc = (host if port is None else f"{host}:{port}").encode("ascii")
    raw: RawHeaders = []
    has_host = has_length = False
    for name, value in headers:
        lower = name.lower()
        if lower == "host":
            has_host = True
        elif lower == "content-length" or lower == "transfer-encoding":
            has_length = True
        raw.append((name.encode("ascii"), value.encode("ascii")))
    if body and not has_length:
        raw.append((b"Content-Length", str(len(body)).encode("ascii")))
        has_length = True
    auto: RawHeaders = []
    if not has_host and host:
        auto.append((b"Host", netloc))
    if not has_length and method in ("POST", "PUT", "PATCH"):
        auto.append((b"Content-Length", b"0"))
    origin = (scheme, host, port or DEFAULT_PORTS.get(scheme, 80))
    return origin, target, auto + raw if auto else raw


def encode_request(method: bytes, target: bytes, headers: RawHeaders, body: bytes) -> bytes:
    """The request's bytes; ProtocolViolation for anything that would not be valid HTTP (a
    header value with a line break must never reach the wire)."""
    if not _METHOD.fullmatch(method):
        raise ProtocolViolation(f"Illegal method {method!r}")
    if not _TARGET.fullmatch(target):
        raise ProtocolViolation(f"Illegal target characters {target!r}")
    block = b"".join([n + b": " + v + b"\r\n" for n, v in headers])
    # Values hold no CR or LF, so a valid block has exactly one line break per header: a
    # value smuggling in a line of its own fails the count even though each line is valid.
    if block.count(b"\n") != len(headers) or not _HEADER_BLOCK.fullmatch(block):
        for n, v in headers:
            if not _HEADER_LINE.fullmatch(n + b": " + v + b"\r\n"):
                raise ProtocolViolation(f"Illegal header {n!r}: {v!r}")
    if not any(n.lower() == b"host" for n, _ in headers):
        raise ProtocolViolation("Missing mandatory Host: header")
    return b"".join((method, b" ", target, b" HTTP/1.1\r\n", block, b"\r\n", body))


@dataclass(frozen=True, slots=True)
class ResponseHead:
    http_version: bytes  # b"1.1"
    status: int
    reason: bytes
    headers: RawHeaders  # names as received, values without outer whitespace

    def values(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name]

    def tokens(self, name: bytes) -> set[bytes]:
        return {t.strip().lower() for v in self.values(name) for t in v.split(b",")}


def parse_head(data: bytes) -> ResponseHead:
    """A response head, status line to the blank line (which `data` ends with)."""
    lines = data.split(b"\r\n")
    while lines and not lines[-1]:
        lines.pop()
    m = _STATUS_LINE.fullmatch(lines[0]) if lines else None
    if m is None:
        first = lines[0][:80] if lines else b""
        raise ProtocolViolation(f"illegal status line: {first!r}")
    headers: RawHeaders = []
    for line in lines[1:]:
        h = _RESPONSE_HEADER.fullmatch(line)
        if h is None or b"\r" in line or b"\n" in line or b"\x00" in line:
            raise ProtocolViolation(f"illegal header line: {line[:80]!r}")
        headers.append((h.group(1), h.group(2)))
    return ResponseHead(m.group(1), int(m.group(2)), m.group(3) or b"", headers)


@dataclass(frozen=True, slots=True)
class Framing:
    """How the body ends: after `length` bytes, at the last chunk, or at connection close;
    `keep_alive` says whether the connection may carry the next request."""

    mode: str  # length | chunked | close
    length: int
    keep_alive: bool


def body_framing(head: ResponseHead, request_method: bytes) -> Framing:
    keep_alive = head.http_version == b"1.1" and b"close" not in head.tokens(b"connection")
    status = head.status
    if request_method == b"HEAD" or status < 200 or status in (204, 304):
        return Framing("length", 0, keep_alive)
    codings = [t.strip().lower() for v in head.values(b"transfer-encoding") for t in v.split(b",")]
    if codings:
        if codings[-1] != b"chunked":
            raise ProtocolViolation(f"unsupported Transfer-Encoding: {b', '.join(codings)!r}")
        return Framing("chunked", 0, keep_alive)
    lengths = {v.strip() for v in head.values(b"content-length")}
    if lengths:
        (length,) = lengths if len(lengths) == 1 else (b"",)
        if not length.isdigit():
            raise ProtocolViolation(f"bad Content-Length: {b', '.join(sorted(lengths))!r}")
        return Framing("length", int(length), keep_alive)
    return Framing("close", 0, False)


def chunk_size(line: bytes) -> int:
    """The size on a chunk-size line (extensions ignored); the line ends with CRLF."""
    m = _CHUNK_SIZE.fullmatch(line)
    if m is None:
        raise ProtocolViolation(f"illegal chunk header: {line[:40]!r}")
    return int(m.group(1), 16)
