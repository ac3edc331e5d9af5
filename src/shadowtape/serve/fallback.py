"""Misses forwarded to the real service, and recorded so the double grows.

The client gets the real service's answer as it came (headers, reason and the still-encoded
body). The recording goes through the same shared pieces as capture: credentials tokenized by
the one `CredentialScrubber` under the user's key, bodies stored decoded with the headers that
go with decoding (`bodies.headers_for_decoded_body`), sessions assigned by the one
`SessionTracker`, so a recorded miss is a row like any captured one and can be sanitized and
served next time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from shadowtape.bodies import (
    DEFAULT_MAX_BODY,
    KeptBody,
    has_content_encoding,
    headers_for_decoded_body,
    keep_body,
)
from shadowtape.content_coding import ContentCodingError, decode, split_codings
from shadowtape.credentials import CredentialScrubber
from shadowtape.http.headers import decode as decode_header
from shadowtape.http.target import query_pairs, split_target
from shadowtape.schema import Exchange, Pairs, uuid7
from shadowtape.serve.wire import Rendered, render
from shadowtape.sessions import SessionTracker
from shadowtape.targets import HOP_BY_HOP

# Not forwarded: the connection's own headers, and Host, which names the double.
_NOT_FORWARDED = HOP_BY_HOP | {"host"}


@dataclass(frozen=True, slots=True)
class Forwarded:
    rendered: Rendered | None  # None when the service could not be reached
    status: int | None
    error: str | None
    exchange: Exchange | None  # what to record, credentials already tokenized


def _now_us() -> int:
    return time.time_ns() // 1000


class Fallback:
    """Forwards with one pooled httpx client; records when given a scrubber and sessions."""

    def __init__(
        self,
        base_url: str,
        *,
        scrubber: CredentialScrubber | None,
        sessions: SessionTracker | None,
        capture_id: str,
        timeout_s: float = 30.0,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        parts = urlsplit(base_url)
        self.base = base_url.rstrip("/")
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.scrubber = scrubber
        self.sessions = sessions
        self.capture_id = capture_id
        self.max_body = max_body
        # trust_env=False: a proxy from the environment must not sit between the double and
        # the service it stands in for.
        self.client = httpx.AsyncClient(timeout=timeout_s, trust_env=False, follow_redirects=False)

    async def close(self) -> None:
        await self.client.aclose()

    async def forward(
        self,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        client: str | None,
        received_us: int,
    ) -> Forwarded:
        url = httpx.URL(self.base).copy_with(raw_path=self.prefix.encode() + target)
        sent = [(n, v) for n, v in headers if n.lower().decode("latin-1") not in _NOT_FORWARDED]
        request = self.client.build_request(method, url, headers=sent, content=body)
        request_pairs = [(decode_header(n), decode_header(v)) for n, v in headers]
        try:
            response = await self.client.send(request, stream=True)
            try:
                started_us = _now_us()
                raw = b"".join([chunk async for chunk in response.aiter_raw()])
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            ex = self._exchange(method, target, request_pairs, body, client, received_us)
            if ex is not None:
                ex.error = error
            return Forwarded(None, None, error, ex)
        ended_us = _now_us()
        response_pairs = [(decode_header(n), decode_header(v)) for n, v in response.headers.raw]
        rendered = render(response.status_code, response.reason_phrase, response_pairs, raw)
        ex = self._exchange(method, target, request_pairs, body, client, received_us)
        if ex is not None:
            assert self.scrubber is not None
            kept_headers, kept, undecodable = _decoded(response_pairs, raw, self.max_body)
            ex.status = response.status_code
            ex.reason = response.reason_phrase
            ex.response_headers = self.scrubber.headers(kept_headers)
            ex.response_body = kept.body
            ex.response_body_truncated = kept.truncated
            ex.response_body_size = kept.size
            ex.response_body_undecodable = undecodable
            ex.response_started_at = started_us
            ex.response_ended_at = ended_us
        return Forwarded(rendered, response.status_code, None, ex)

    def _exchange(
        self,
        method: str,
        target: bytes,
        headers: Pairs,
        body: bytes,
        client: str | None,
        received_us: int,
    ) -> Exchange | None:
        if self.scrubber is None or self.sessions is None:
            return None
        raw_target = decode_header(target)
        path, raw_query = split_target(raw_target)
        session_id, seq = self.sessions.assign(headers, client, received_us)
        kept_headers, kept, undecodable = _decoded(headers, body, self.max_body)
        query = self.scrubber.query(query_pairs(raw_query))
        return Exchange(
            id=uuid7(received_us),
            session_id=session_id,
            seq=seq,
            started_at=received_us,
            request_sent_at=received_us,
            method=method,
            scheme=self.scheme,
            host=self.host,
            port=self.port,
            server_address=f"{self.host}:{self.port}",
            path=path or "/",
            query=query,
            request_target=self.scrubber.target(raw_target, query),
            http_version="HTTP/1.1",
            request_headers=self.scrubber.headers(kept_headers),
            request_body=kept.body,
            request_body_truncated=kept.truncated,
            request_body_size=kept.size,
            request_body_undecodable=undecodable,
            capture_id=self.capture_id,
        )


def _decoded(headers: Pairs, body: bytes, max_body: int) -> tuple[Pairs, KeptBody, bool]:
    """Body and headers as capture stores them: decoded, unless the coding is unknown or the
    bytes are broken, in which case both stay as they came (and the third value says so)."""
    content = body
    undecodable = False
    if body and has_content_encoding(headers):
        coding = next((v for n, v in headers if n.lower() == "content-encoding"), "")
        try:
            content = decode(body, split_codings(coding))
            headers = headers_for_decoded_body(headers, len(content))
        except ContentCodingError:
            content = body
            undecodable = True
    return headers, keep_body(content, max_body), undecodable
