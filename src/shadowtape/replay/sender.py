"""How a recorded request is sent: rebuilt faithfully, sent with httpx, retried when safe.

`build_request` is pure (recorded parts in, the exact request out); `Sender` owns the one
shared `httpx.AsyncClient`, the in-flight bound and the tenacity retry policy.

Fidelity is bytes. The request target is the recorded raw target, verbatim, when the dataset
has one: a parameter that correlation changed is re-encoded alone (`http.target.update_target`),
every other keeps its recorded spelling. Datasets without one (schema v1) get the target spelled
from path and query as before (`http.target.build_target`). Header names and values go out as
the bytes that were recorded, whatever their encoding. `build_request` makes every rewrite
replay makes (the list is `REWRITES`, and the README's); a transport adds nothing.

A request whose bytes HTTP cannot frame (a space or line break in the target, a line break in
a header, a method that is not a token) raises `UnsendableRequest`: the runner records it as
one failed row with the reason, and the run goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
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

from shadowtape.http.headers import display, encode, fields_from_pairs, pairs_from_fields
from shadowtape.http.headers import set_headers as override_headers
from shadowtape.http.target import (
    base_prefix,
    build_target,
    host_header,
    join_target,
    split_target,
    update_target,
)
from shadowtape.replay.config import ReplayConfig, RewriteRule
from shadowtape.replay.engine import choose_engine
from shadowtape.replay.fast_transport import FastHttp1Transport, Http1Answer
from shadowtape.replay.guardrails import CircuitBreaker
from shadowtape.replay.h11transport import H11Transport, HTTP2Negotiated
from shadowtape.replay.plan import stable_hash
from shadowtape.replay.transport import ShardedPoolTransport, httpx_request, tls_context
from shadowtape.targets import HOP_BY_HOP

Pairs = list[tuple[str, str]]
RawHeaders = list[tuple[bytes, bytes]]

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({502, 503, 504})
# Failures where the request never reached the server, so a retry cannot repeat a side effect.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_DEFAULT_PORTS = {"http": 80, "https": 443}

# Every change replay makes to a recorded request, and why; nothing else differs on the wire.
# The README's list is generated from this one (scripts/gen_cli_reference.py).
REWRITES: tuple[tuple[str, str], ...] = (
    (
        "Host",
        "set to the target's host and port (kept as recorded with --keep-host) where the "
        "recording had it; added first when it had none (HTTP/2 and HTTP/3 carry it as "
        ":authority, which the record keeps as `host`)",
    ),
    (
        "traceparent, X-Shadowtape-Replay-Id",
        "set on every request, so staging's traces and logs join the results: a recorded one "
        "is replaced where it stood, else they are appended",
    ),
    ("--header NAME:VALUE", "set the same way, as given"),
    (
        "Content-Length",
        "the length of the body sent (sanitize and correlation change bodies); added after the "
        "recorded headers when a recorded body had none",
    ),
    (
        "Transfer-Encoding",
        "a chunked upload is sent whole, with Content-Length in Transfer-Encoding's place: the "
        "chunk framing belonged to the recorded hop",
    ),
    (
        "hop-by-hop headers",
        "Connection, Keep-Alive, Proxy-Connection, TE, Trailer, Upgrade and HTTP2-Settings are "
        "dropped: they describe the recorded connection, and replay runs its own",
    ),
    (
        "header lines",
        "written `name: value`, one space after the colon: whitespace around a value is not "
        "part of it (RFC 9110 5.5), and capture keeps the value only",
    ),
    (
        "request body with a Content-Encoding",
        "stored decoded (so sanitize can read it) and sent decoded, without that header; a body "
        "that did not decode was kept with its header and is sent as recorded",
    ),
    (
        "request target",
        "verbatim, unless correlation or --rewrite PATH changed part of it: then only that "
        "query parameter or path segment is re-encoded; a target URL's base path is prefixed; "
        "a dataset without raw targets (schema 1) is spelled from its path and query pairs",
    ),
    (
        "HTTP version",
        "the request line says HTTP/1.1, or the request goes as HTTP/2 (--http 2, or where TLS "
        "negotiates it), whatever version was recorded; recorded pseudo-headers (`:path`...) "
        "are request-line data, not headers",
    ),
    (
        "over HTTP/2",
        "header names lower-cased and Host sent as :authority, among the pseudo-headers that "
        "come first (HTTP/2 requires both); the h2 library strips whitespace around a value",
    ),
)


class UnsendableRequest(ValueError):
    """A recorded request whose bytes HTTP cannot carry: recorded as a failed row."""

    def __init__(self, reason: str, url: str | None = None) -> None:
        super().__init__(reason)
        self.url = url


@dataclass(slots=True)
class RequestParts:
    """The parts of a recorded request that replay may change (correlation, rewrites).

    `path` and `query` are the parsed view that correlation edits; `target` is the recorded
    raw request target (None when the dataset has none), which is what is sent unless the
    view was changed. `host`, `port`, `scheme`: what the recording was addressed to."""

    method: str
    host: str | None
    path: str
    query: Pairs
    headers: Pairs
    body: bytes | None
    target: str | None = None
    scheme: str | None = None
    port: int | None = None

    def request_target(self) -> str:
        """The target to send: the recorded one, re-encoded only where path or query changed."""
        if self.target is None:
            return build_target(self.path, self.query)
        return update_target(self.target, self.path, self.query)

    def recorded_authority(self) -> str:
        """Host[:port] as the recording was addressed (for --keep-host when no Host header
        was recorded: HTTP/2's :authority is kept as the `host` column)."""
        host = self.host or ""
        if ":" in host:
            host = f"[{host}]"
        if self.port is None or self.port == _DEFAULT_PORTS.get(self.scheme or "http"):
            return host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class OutgoingRequest:
    """Exactly what a transport puts on the wire: the contract every transport honours.

    A transport connects to (`scheme`, `host`, `port`) and sends `method`, `target` and
    `headers` as these bytes, in this order, repeats kept, adding and changing nothing:
    `build_request` has made every documented rewrite (`REWRITES`) already. Framing is by
    Content-Length, which `headers` carry whenever `body` is not empty (and as recorded
    otherwise). An HTTP/1.1 transport writes `METHOD SP target SP HTTP/1.1` and each header as
    `name: value`; an HTTP/2 transport sends `target` as `:path` and must change only what
    HTTP/2 requires (see `REWRITES`, "over HTTP/2"). `url` is for people: the target base
    and the target as display text (results' `target_url`), never parsed.

    Every OutgoingRequest can be framed: one that cannot (`framing_problem`) is never made,
    so no transport can put a line break or a smuggled header on the wire.
    """

    method: str  # an HTTP token
    scheme: str
    host: str
    port: int
    target: bytes
    headers: RawHeaders
    body: bytes
    url: str

    def __post_init__(self) -> None:
        problem = framing_problem(self.method, self.target, self.headers)
        if problem is not None:
            raise UnsendableRequest(problem, self.url)


@dataclass(frozen=True, slots=True)
class Site:
    """A base URL taken apart once: where to connect, what to prefix, the Host value."""

    scheme: str
    host: str
    port: int
    base_path: str  # put before every target ("" or "/api")
    netloc: str  # the Host value: host, and the port unless it is the scheme's default
    prefix: str  # "scheme://authority", before the target in `OutgoingRequest.url`


class TargetMap:
    """Recorded host and path -> the base URL to send to, by --target and --rewrite rules."""

    def __init__(self, target: str, rewrites: tuple[RewriteRule, ...] = ()) -> None:
        self.default = target.rstrip("/")
        self.hosts = {r.match: r.replace for r in rewrites if r.kind == "host"}
        # Longest prefix first, so /api/v1/ wins over /api/.
        self.paths = sorted((r for r in rewrites if r.kind == "path"), key=lambda r: -len(r.match))
        self._sites: dict[str, Site] = {}

    def bases(self) -> list[str]:
        return [self.default, *self.hosts.values()]

    def resolve(self, host: str | None, path: str) -> tuple[str, str]:
        base = self.hosts.get((host or "").lower(), self.default)
        for rule in self.paths:
            if path.startswith(rule.match):
                path = rule.replace + path[len(rule.match) :]
                break
        return base, path

    def site(self, base: str) -> Site:
        site = self._sites.get(base)
        if site is None:
            parts = urlsplit(base)
            scheme = parts.scheme.lower()
            prefix = base_prefix(base)
            site = self._sites[base] = Site(
                scheme=scheme,
                host=parts.hostname or "",
                port=parts.port or _DEFAULT_PORTS.get(scheme, 80),
                base_path=parts.path.rstrip("/"),
                netloc=host_header(base),
                prefix=prefix[: len(prefix) - len(parts.path.rstrip("/"))],
            )
        return site


# What HTTP/1.1 framing cannot carry (RFC 9112): a method is a token; the target has no
# whitespace or NUL (the request line is split on spaces); a header name has no whitespace,
# colon or NUL; a value has no CR, LF or NUL. Everything else (obs-text, latin-1, broken
# UTF-8, raw non-ASCII in the target) goes out as recorded.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_TARGET = re.compile(rb"[\x00\t\n\x0b\x0c\r ]")
_BAD_NAME = re.compile(rb"[\x00\t\n\x0b\x0c\r :]")
_BAD_VALUE = re.compile(rb"[\x00\n\r]")


def framing_problem(method: str, target: bytes, headers: RawHeaders) -> str | None:
    """Why these bytes cannot be sent as an HTTP request, or None."""
    if not method.isascii() or not _TOKEN.match(method.encode("ascii")):
        return f"method {method!r} is not an HTTP token"
    if not target or _BAD_TARGET.search(target):
        return f"request target {target!r} holds whitespace or NUL (or is empty)"
    for name, value in headers:
        if not name or _BAD_NAME.search(name):
            return f"header name {name!r} holds whitespace, a colon or NUL (or is empty)"
        if _BAD_VALUE.search(value):
            return f"header {name!r} has a line break or NUL in its value"
    return None


def build_request(
    parts: RequestParts,
    targets: TargetMap,
    *,
    keep_host: bool = False,
    extra_headers: tuple[tuple[str, str], ...] = (),
) -> OutgoingRequest:
    """The request as staging will see it: recorded target and header bytes, order and
    repeats kept, the documented rewrites (`REWRITES`) made. Raises UnsendableRequest."""
    path, query = split_target(parts.request_target())
    if not path.startswith("/"):
        path = "/" + path
    base, path = targets.resolve(parts.host, path)
    site = targets.site(base)
    target = site.base_path + join_target(path, query)
    body = parts.body or b""
    headers: Pairs = []
    has_host = has_length = False
    recorded_length = any(name.lower() == "content-length" for name, _ in parts.headers)
    for name, value in parts.headers:
        lower = name.lower()
        if lower == "transfer-encoding":
            if not (recorded_length or has_length):
                # A chunked upload goes whole: its length where its framing was.
                headers.append(("Content-Length", str(len(body))))
                has_length = True
            continue
        if lower in HOP_BY_HOP or name.startswith(":"):
            continue
        if lower == "host":
            has_host = True
            if not keep_host:
                value = site.netloc
        elif lower == "content-length":
            # Bodies change (sanitize, correlation): the length must describe what is sent.
            value = str(len(body))
            has_length = True
        headers.append((name, value))
    if not has_host:
        headers.insert(0, ("Host", parts.recorded_authority() if keep_host else site.netloc))
    if body and not has_length:
        headers.append(("Content-Length", str(len(body))))
    override_headers(headers, extra_headers)
    method = parts.method  # methods are case-sensitive (RFC 9110 9.1): sent as recorded
    raw_target = encode(target)
    raw_headers = fields_from_pairs(headers)
    url = site.prefix + display(target)
    return OutgoingRequest(
        method, site.scheme, site.host, site.port, raw_target, raw_headers, body, url
    )


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

    def __init__(self, exc: BaseException, not_sent: bool, final: bool = False) -> None:
        super().__init__(str(exc))
        self.exc = exc
        self.not_sent = not_sent
        self.final = final


def describe_error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


class Sender:
    """Sends requests over one shared client, at most `concurrency` in flight."""

    def __init__(
        self,
        config: ReplayConfig,
        breaker: CircuitBreaker,
        now: Callable[[], float] = time.monotonic,
        targets: TargetMap | None = None,
    ) -> None:
        self.config = config
        self.breaker = breaker
        self.now = now
        self.slots = asyncio.Semaphore(config.concurrency)
        self.in_flight = 0
        t = config.timeouts
        # Loading the CA bundle costs a good part of a second: only when a target needs TLS.
        bases = (targets or TargetMap(config.target, config.rewrites)).bases()
        needs_tls = any(urlsplit(b).scheme == "https" for b in bases)
        tls = tls_context(config.tls_verify and needs_tls)
        auto = config.http == "auto"
        self.engine = choose_engine(config.http1_engine)
        lean = H11Transport(config.concurrency, ssl_context=tls, offers_h2=auto and needs_tls)
        if config.http == "2":
            # Prior knowledge on cleartext, ALPN on TLS: httpcore speaks HTTP/2.
            h2 = ShardedPoolTransport(config.concurrency, http1=False, http2=True, verify=tls)
            mounts = {"http://": h2, "https://": h2}
        elif auto:
            # Cleartext is HTTP/1.1 without an upgrade; TLS may negotiate HTTP/2. The lean
            # transport asks first (h2 offered) and hands an origin that picks h2 to httpcore,
            # so HTTP/1.1 over TLS keeps its bytes too.
            h2 = ShardedPoolTransport(config.concurrency, http1=True, http2=True, verify=tls)
            mounts = {"http://": lean, "https://": h2}
        else:
            mounts = {"http://": lean, "https://": lean}
        # Schemes sent straight through the lean transport (see h11transport): the client's
        # auth, redirect and cookie layers are all off for replay and cost more than HTTP.
        self.direct = {
            scheme: lean for scheme in ("http", "https") if auto or mounts[f"{scheme}://"] is lean
        }
        # With the httptools engine the direct schemes go through the fast transport instead
        # (same contract, same ALPN hand-over to HTTP/2); the h11 one stays for httpx's mounts.
        self.fast: FastHttp1Transport | None = None
        self.fast_schemes: frozenset[str] = frozenset()
        if self.engine.name == "httptools" and self.direct:
            self.fast = FastHttp1Transport(config.concurrency, t, ssl_context=tls, now=now)
            self.fast_schemes = frozenset(self.direct)
            self.direct = {}
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
        if self.fast is not None:
            await self.fast.aclose()
        await self.client.aclose()

    async def send(self, request: OutgoingRequest, retry_key: str) -> SendOutcome:
        outcome = SendOutcome()
        idempotent = request.method.upper() in IDEMPOTENT
        policy = self.config.retry
        attempts = max(1, policy.attempts)

        def should_retry_exc(exc: BaseException) -> bool:
            if self.breaker.open or not isinstance(exc, _AttemptFailed) or exc.final:
                return False
            if isinstance(exc.exc, httpx.LocalProtocolError):
                return False  # the request itself cannot be sent; trying again will not help
            if exc.not_sent:
                return True
            # A timeout after sending is not retried: a hung staging answers a retry no
            # better, and each try would cost another whole --read-timeout.
            if isinstance(exc.exc, httpx.TimeoutException | TimeoutError):
                return False
            return idempotent and isinstance(exc.exc, httpx.TransportError)

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
            outcome.error = describe_error(failed.exc)
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
                answer = None
                fast = self.fast
                origin = (request.scheme, request.host, request.port)
                if fast is not None and request.scheme in self.fast_schemes:
                    # The fast transport keeps the attempt's deadline itself: no timer here.
                    with contextlib.suppress(HTTP2Negotiated):
                        if origin not in fast.h2_origins:
                            answer = await fast.exchange(request, cfg.max_body)
                if answer is not None:
                    await self._take(answer, outcome)
                else:
                    async with asyncio.timeout(cfg.timeouts.total):
                        await self._exchange(request, outcome)
            except (httpx.HTTPError, TimeoutError, OSError) as exc:
                not_sent = isinstance(exc, _NOT_SENT)
                self.breaker.record(error=True, connect_failure=not_sent)
                if isinstance(exc, TimeoutError):
                    exc = TimeoutError(f"no complete answer within {cfg.timeouts.total:g} s")
                raise _AttemptFailed(exc, not_sent) from None
            except Exception as exc:
                # Anything else (the HTTP/2 library refusing a header, say) is about this
                # request, not the target: one failed row, no retry, the run goes on.
                raise _AttemptFailed(exc, not_sent=False, final=True) from None
            finally:
                self.in_flight -= 1
        outcome.done_at = self.now()
        outcome.error = None
        self.breaker.record(error=(outcome.status or 0) >= 500)
        return outcome

    async def _exchange(self, request: OutgoingRequest, outcome: SendOutcome) -> None:
        """One attempt over the h11 transport or the httpx client (HTTP/2)."""
        lean = self.direct.get(request.scheme)
        response = None
        origin = (request.scheme, request.host, request.port)
        if lean is not None and origin not in lean.h2_origins:
            with contextlib.suppress(HTTP2Negotiated):
                response = await lean.send(request, self.timeouts)
        if response is None:
            # A bare request, not client.build_request: the client's default
            # headers (User-Agent, Accept...) would be merged in and change what
            # was recorded.
            response = await self.client.send(httpx_request(request, self.timeouts), stream=True)
        try:
            outcome.first_byte_at = self.now()
            await self._read(response, outcome)
        finally:
            await response.aclose()

    async def _take(self, answer: Http1Answer, outcome: SendOutcome) -> None:
        """An answer of the fast transport into the outcome; a body with a Content-Encoding
        goes through httpx's decoders as on the other paths."""
        outcome.first_byte_at = answer.head_at
        if answer.streaming:
            response = answer.as_httpx()
            try:
                await self._read(response, outcome)
            finally:
                await response.aclose()
            return
        outcome.status = answer.status
        outcome.reason = answer.reason
        outcome.http_version = answer.http_version
        outcome.headers = pairs_from_fields(answer.headers)
        outcome.body = answer.body
        outcome.body_truncated = answer.truncated
        outcome.undecodable = False

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
