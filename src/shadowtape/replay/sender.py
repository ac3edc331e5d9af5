"""How a recorded request is sent: rebuilt faithfully, sent with httpx, retried when safe.

`build_request` is pure (recorded parts in, the exact request out); `Sender` owns the one
shared `httpx.AsyncClient`, the in-flight bound and the tenacity retry policy.

The request target is the recorded raw target, verbatim, when the dataset has one: a
parameter that correlation changed is re-encoded alone (`http.target.update_target`), every
other keeps its recorded spelling. Datasets without one (schema v1) get the target spelled
from path and query as before (`http.target.build_target`).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from urllib.parse import urlsplit

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    retry_if_result,
    stop_after_attempt,
)

from shadowtape.http.headers import pairs_from_fields, set_headers
from shadowtape.http.target import (
    base_prefix,
    build_target,
    host_header,
    join_target,
    join_url,
    split_target,
    update_target,
)
from shadowtape.replay.config import ReplayConfig, RewriteRule
from shadowtape.replay.guardrails import CircuitBreaker
from shadowtape.replay.h11transport import H11Transport
from shadowtape.replay.plan import stable_hash
from shadowtape.replay.transport import ShardedPoolTransport, tls_context

Pairs = list[tuple[str, str]]

# Connection-level headers describe the recorded hop, not the request; httpx sets its own.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "http2-settings",
    }
)
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({502, 503, 504})
# Failures where the request never reached the server, so a retry cannot repeat a side effect.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(slots=True)
class RequestParts:
    """The parts of a recorded request that replay may change (correlation, rewrites).

    `path` and `query` are the parsed view that correlation edits; `target` is the recorded
    raw request target (None when the dataset has none), which is what is sent unless the
    view was changed."""

    method: str
    host: str | None
    path: str
    query: Pairs
    headers: Pairs
    body: bytes | None
    target: str | None = None

    def request_target(self) -> str:
        """The target to send: the recorded one, re-encoded only where path or query changed."""
        if self.target is None:
            return build_target(self.path, self.query)
        return update_target(self.target, self.path, self.query)


@dataclass(frozen=True, slots=True)
class OutgoingRequest:
    method: str
    url: str
    headers: Pairs
    body: bytes | None


class TargetMap:
    """Recorded host and path -> the URL to send to, by --target and --rewrite rules."""

    def __init__(self, target: str, rewrites: tuple[RewriteRule, ...] = ()) -> None:
        self.default = target.rstrip("/")
        self.hosts = {r.match: r.replace for r in rewrites if r.kind == "host"}
        # Longest prefix first, so /api/v1/ wins over /api/.
        self.paths = sorted((r for r in rewrites if r.kind == "path"), key=lambda r: -len(r.match))
        # Per base URL: the prefix a request path is appended to, and the Host value.
        self._bases: dict[str, tuple[str, str]] = {}

    def bases(self) -> list[str]:
        return [self.default, *self.hosts.values()]

    def resolve(self, host: str | None, path: str) -> tuple[str, str]:
        base = self.hosts.get((host or "").lower(), self.default)
        for rule in self.paths:
            if path.startswith(rule.match):
                path = rule.replace + path[len(rule.match) :]
                break
        return base, path

    def base_parts(self, base: str) -> tuple[str, str]:
        """(URL prefix without a trailing slash, Host header value) of a base URL."""
        parts = self._bases.get(base)
        if parts is None:
            parts = self._bases[base] = (base_prefix(base), host_header(base))
        return parts


def build_request(
    parts: RequestParts,
    targets: TargetMap,
    *,
    keep_host: bool = False,
    extra_headers: tuple[tuple[str, str], ...] = (),
) -> OutgoingRequest:
    """The request as staging will see it: recorded target, header order and repeats kept."""
    path, query = split_target(parts.request_target())
    if not path.startswith("/"):
        path = "/" + path
    base, path = targets.resolve(parts.host, path)
    prefix, netloc = targets.base_parts(base)
    url = join_url(prefix, join_target(path, query))
    body = parts.body
    headers: Pairs = []
    for name, value in parts.headers:
        lower = name.lower()
        if lower in HOP_BY_HOP or name.startswith(":"):
            continue
        if lower == "host" and not keep_host:
            value = netloc
        elif lower == "content-length":
            # Bodies change (sanitize, correlation): the length must describe what is sent.
            value = str(len(body or b""))
        headers.append((name, value))
    set_headers(headers, extra_headers)
    return OutgoingRequest(parts.method.upper(), url, headers, body)


@dataclass(slots=True)
class SendOutcome:
    """What happened to one request, final attempt; times are monotonic seconds."""

    sent_at: float | None = None
    first_byte_at: float | None = None
    done_at: float | None = None
    status: int | None = None
    reason: str | None = None
    http_version: str | None = None
    headers: Pairs = field(default_factory=list)
    body: bytes | None = None
    body_truncated: bool = False
    undecodable: bool = False
    error: str | None = None
    attempts: int = 0

    @property
    def retries(self) -> int:
        return max(0, self.attempts - 1)


class _AttemptFailed(Exception):
    """Carries a transport failure out of one attempt so tenacity can decide on a retry."""

    def __init__(self, exc: BaseException, not_sent: bool) -> None:
        super().__init__(str(exc))
        self.exc = exc
        self.not_sent = not_sent


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


class Sender:
    """Sends requests over one shared client, at most `concurrency` in flight."""

    def __init__(
        self,
        config: ReplayConfig,
        breaker: CircuitBreaker,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.breaker = breaker
        self.now = now
        self.slots = asyncio.Semaphore(config.concurrency)
        self.in_flight = 0
        t = config.timeouts
        # Loading the CA bundle costs a good part of a second: only when a target needs TLS.
        bases = TargetMap(config.target, config.rewrites).bases()
        needs_tls = any(urlsplit(b).scheme == "https" for b in bases)
        tls = tls_context(config.tls_verify and needs_tls)
        lean = H11Transport(config.concurrency, ssl_context=tls)
        if config.http == "2":
            # Prior knowledge on cleartext, ALPN on TLS: httpcore speaks HTTP/2.
            h2 = ShardedPoolTransport(config.concurrency, http1=False, http2=True, verify=tls)
            mounts = {"http://": h2, "https://": h2}
        elif config.http == "auto":
            # Cleartext is HTTP/1.1 without an upgrade; TLS may negotiate HTTP/2.
            h2 = ShardedPoolTransport(config.concurrency, http1=True, http2=True, verify=tls)
            mounts = {"http://": lean, "https://": h2}
        else:
            mounts = {"http://": lean, "https://": lean}
        # Schemes sent straight through the lean transport (see h11transport): the client's
        # auth, redirect and cookie layers are all off for replay and cost more than HTTP.
        self.direct = {
            scheme: lean for scheme in ("http", "https") if mounts[f"{scheme}://"] is lean
        }
        self.timeouts = {"connect": t.connect, "read": t.read, "write": t.read, "pool": t.total}
        self.client = httpx.AsyncClient(
            mounts=mounts,
            transport=lean,  # else httpx builds a default transport (and loads the CA bundle)
            timeout=httpx.Timeout(t.read, connect=t.connect, pool=t.total),
            follow_redirects=False,
            # Staging's cookies belong to replayed sessions (correlation handles them); a
            # shared jar would leak them across sessions and grow without bound.
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def send(self, request: OutgoingRequest, retry_key: str) -> SendOutcome:
        outcome = SendOutcome()
        idempotent = request.method in IDEMPOTENT
        policy = self.config.retry
        attempts = max(1, policy.attempts)

        def should_retry_exc(exc: BaseException) -> bool:
            if self.breaker.open or not isinstance(exc, _AttemptFailed):
                return False
            if isinstance(exc.exc, httpx.LocalProtocolError):
                return False  # the request itself cannot be sent; trying again will not help
            return exc.not_sent or (idempotent and isinstance(exc.exc, httpx.TransportError))

        def should_retry_result(result: SendOutcome) -> bool:
            return idempotent and result.status in RETRY_STATUSES and not self.breaker.open

        def backoff(n: int) -> float:
            """The wait after attempt n. Seeded jitter: the same run config waits the same
            way; concurrency cannot change it."""
            rng = random.Random(stable_hash("backoff", self.config.seed, retry_key, n))
            step = min(policy.max_backoff, policy.backoff * 2 ** (n - 1))
            return step * (0.5 + 0.5 * rng.random())

        # The first attempt runs outside tenacity: nearly every request needs no retry, and
        # tenacity's per-attempt bookkeeping costs as much CPU as the HTTP exchange itself.
        failed: _AttemptFailed | None = None
        try:
            await self._attempt(request, outcome)
        except _AttemptFailed as exc:
            failed = exc
        retry = should_retry_exc(failed) if failed is not None else should_retry_result(outcome)
        if retry and attempts > 1:
            await asyncio.sleep(backoff(1))
            # Attempts 2..N: tenacity's attempt k is attempt k + 1 of the request.
            retrying = AsyncRetrying(
                stop=stop_after_attempt(attempts - 1),
                wait=lambda state: backoff(state.attempt_number + 1),
                retry=retry_if_exception(should_retry_exc) | retry_if_result(should_retry_result),
                retry_error_callback=lambda state: state.outcome.result(),
                reraise=True,
            )
            failed = None
            try:
                async for attempt in retrying:
                    with attempt:
                        result = await self._attempt(request, outcome)
                    if not attempt.retry_state.outcome.failed:
                        attempt.retry_state.set_result(result)
            except _AttemptFailed as exc:
                failed = exc
        if failed is not None:
            outcome.error = _describe(failed.exc)
            outcome.status = outcome.reason = outcome.http_version = outcome.body = None
            outcome.first_byte_at = None
            outcome.headers = []
            outcome.done_at = self.now()
        return outcome

    async def _attempt(self, request: OutgoingRequest, outcome: SendOutcome) -> SendOutcome:
        cfg = self.config
        async with self.slots:
            outcome.attempts += 1
            start = self.now()
            if outcome.sent_at is None:
                outcome.sent_at = start
            self.in_flight += 1
            try:
                async with asyncio.timeout(cfg.timeouts.total):
                    lean = self.direct.get(request.url.partition(":")[0].lower())
                    if lean is not None:
                        response = await lean.send(
                            request.method,
                            request.url,
                            request.headers,
                            request.body,
                            self.timeouts,
                        )
                    else:
                        # A bare Request, not client.build_request: the client's default
                        # headers (User-Agent, Accept...) would be merged in and change what
                        # was recorded.
                        response = await self.client.send(
                            httpx.Request(
                                request.method,
                                request.url,
                                headers=request.headers,
                                content=request.body,
                            ),
                            stream=True,
                        )
                    try:
                        outcome.first_byte_at = self.now()
                        await self._read(response, outcome)
                    finally:
                        await response.aclose()
            except (httpx.HTTPError, TimeoutError, OSError) as exc:
                not_sent = isinstance(exc, _NOT_SENT)
                self.breaker.record(error=True, connect_failure=not_sent)
                if isinstance(exc, TimeoutError):
                    exc = TimeoutError(f"no complete answer within {cfg.timeouts.total:g} s")
                raise _AttemptFailed(exc, not_sent) from None
            finally:
                self.in_flight -= 1
        outcome.done_at = self.now()
        outcome.error = None
        self.breaker.record(error=(outcome.status or 0) >= 500)
        return outcome

    async def _read(self, response: httpx.Response, outcome: SendOutcome) -> None:
        outcome.status = response.status_code
        outcome.reason = response.reason_phrase
        outcome.http_version = response.http_version
        outcome.headers = pairs_from_fields(response.headers.raw)
        limit = self.config.max_body
        chunks: list[bytes] = []
        size = 0
        outcome.body_truncated = False
        outcome.undecodable = False
        # Without a Content-Encoding the transport's stream is the body: skip httpx's decoder
        # and chunker chain (response.aclose() still closes the stream).
        encoded = any(k.lower() == "content-encoding" for k, _ in outcome.headers)
        source = response.aiter_bytes() if encoded else response.stream
        try:
            async for chunk in source:  # type: ignore[union-attr]
                if size + len(chunk) > limit:
                    chunks.append(chunk[: limit - size])
                    outcome.body_truncated = True
                    break
                chunks.append(chunk)
                size += len(chunk)
        except httpx.DecodingError:
            # A Content-Encoding this client cannot decode: keep nothing rather than garbage.
            outcome.undecodable = True
            chunks = []
        outcome.body = b"".join(chunks)
