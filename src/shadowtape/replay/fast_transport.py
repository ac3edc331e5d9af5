"""HTTP/1.1 for replay on asyncio Protocols and httptools: the fast send path.

httptools is the C HTTP parser of the uvloop project (llhttp, Node's parser), the one uvicorn
uses; here it parses responses. Requests go out as the `OutgoingRequest` contract says: the
request line and each header exactly as its bytes (`h11transport.encode_head`, the one
spelling of a head), nothing added; TLS that picks HTTP/2 hands the origin over, as the h11
transport does (`HTTP2Negotiated`).
Each connection is an `asyncio.Protocol`, so a response costs a few C callbacks instead of the
stream reader, h11's state machine and its event objects. Profiling `replay --speed max`
showed h11 and the streams glue at about a third of the CPU of a request, and one
`asyncio.timeout` per attempt (a timer armed and cancelled) at another tenth: here timeouts
are deadlines that one sweeper task checks a few times a second, not a timer per request.

A body without a Content-Encoding is collected in the parser's callbacks up to the caller's
limit (the connection is dropped, not drained, past it); a body with one is handed over as a
stream, so httpx's decoders undo it exactly as on the h11 path. Failures surface as httpx's
exceptions, so retry decisions do not depend on the transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, cast

import httptools
import httpx

from shadowtape.replay.config import Timeouts
from shadowtape.replay.h11transport import HTTP2Negotiated, encode_head

if TYPE_CHECKING:
    from shadowtape.replay.sender import OutgoingRequest

Origin = tuple[str, str, int]
RawFields = list[tuple[bytes, bytes]]
# Bodies at most this big go out in the same write as the head (one syscall).
_INLINE_BODY = 64 * 1024


class _StopParsing(Exception):
    """Raised from a parser callback to stop llhttp where the rest is not a body (HEAD)."""


class Http1Answer:
    """A response head, and its body: collected (`body`) or still arriving (`stream`)."""

    __slots__ = ("status", "reason", "http_version", "headers", "head_at", "body", "truncated",
                 "_conn", "_pool")  # fmt: skip

    def __init__(self, conn: _Connection, pool: FastHttp1Transport | None) -> None:
        self.status = conn.status
        self.reason = conn.reason.decode("ascii", "ignore")  # as httpx reads it
        self.http_version = conn.http_version
        self.headers: RawFields = conn.headers
        self.head_at = conn.head_at
        self.body: bytes | None = None
        self.truncated = False
        self._conn = conn
        self._pool = pool  # set while the body still streams: the connection is ours

    @property
    def streaming(self) -> bool:
        return self._pool is not None

    def as_httpx(self) -> httpx.Response:
        """The streaming answer as an httpx.Response, for httpx's Content-Encoding decoders."""
        return httpx.Response(
            status_code=self.status,
            headers=self.headers,
            stream=_BodyStream(self),
            extensions={
                "http_version": self.http_version.encode("ascii"),
                "reason_phrase": self.reason.encode("ascii"),
            },
        )

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            while conn.chunks:
                yield conn.chunks.popleft()
            if conn.complete:
                return
            if conn.error is not None:
                raise conn.error
            conn.waiter = asyncio.get_running_loop().create_future()
            try:
                await conn.waiter
            finally:
                conn.waiter = None

    def release(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool._release(self._conn)


class _BodyStream(httpx.AsyncByteStream):
    def __init__(self, answer: Http1Answer) -> None:
        self._answer = answer

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._answer.chunks():
            yield chunk

    async def aclose(self) -> None:
        self._answer.release()


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one exchange at a time, driven by parser callbacks."""

    def __init__(self, origin: Origin, now: Callable[[], float]) -> None:
        self.origin = origin
        self.now = now
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.keep_alive = False
        self.waiter: asyncio.Future[Any] | None = None
        self.error: BaseException | None = None
        self.active = False
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._stale_parser = False
        self._reset(False, 0, 0.0, 0.0)

    def _reset(self, is_head: bool, limit: int, deadline: float, read_timeout: float) -> None:
        self.is_head = is_head
        self.limit = limit
        self.deadline = deadline
        self.read_timeout = read_timeout
        self.last_data = 0.0
        self.status = 0
        self.reason = b""
        self.http_version = "HTTP/1.1"
        self.headers: RawFields = []
        self.head_at = 0.0
        self.head_done = False
        self.informational = False
        self.until_close = False
        self.streaming = False
        self.complete = False
        self.chunks: deque[bytes] = deque()
        self.body: list[bytes] = []
        self.size = 0
        self.truncated = False
        self.answer: Http1Answer | None = None
        self.error = None

    # --- state the pool asks about -----------------------------------------------------------

    @property
    def usable(self) -> bool:
        t = self.transport
        return not self.closed and t is not None and not t.is_closing() and self.error is None

    def begin(self, is_head: bool, limit: int, deadline: float, read_timeout: float) -> None:
        self._reset(is_head, limit, deadline, read_timeout)
        if self._stale_parser:
            self.parser = httptools.HttpResponseParser(self)
            self._stale_parser = False
        self.keep_alive = False
        self.active = True
        self.last_data = self.now()

    def expire(self, now: float) -> None:
        if not self.active or self.complete:
            return
        if now >= self.deadline:
            self.fail(TimeoutError("no complete answer in time"))
        elif now - self.last_data >= self.read_timeout:
            self.fail(httpx.ReadTimeout("read timed out"))

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.keep_alive = False
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    async def drain(self) -> None:
        if self._write_paused:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but quack the same.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.active:
            # Bytes nobody asked for: the connection's framing is lost, do not reuse it.
            self.fail(httpx.RemoteProtocolError("data from the server between requests"))
            return
        self.last_data = self.now()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(httpx.RemoteProtocolError("the server switched protocols; not HTTP/1.1"))
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _StopParsing):
                return
            self.fail(httpx.RemoteProtocolError(f"malformed answer from the server ({exc})"))

    def eof_received(self) -> bool:
        if self.active and not self.complete:
            if self.head_done and self.until_close:
                # A body without a length ends where the connection does (HTTP/1.0 style).
                self.on_message_complete()
            elif self.head_done:
                self.fail(
                    httpx.RemoteProtocolError(
                        "peer closed connection without sending complete message body"
                    )
                )
            else:
                self.fail(
                    httpx.RemoteProtocolError("server disconnected without sending a response")
                )
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.keep_alive = False
        if self.active and not self.complete:
            if exc is not None:
                self.fail(httpx.ReadError(str(exc) or type(exc).__name__))
            else:
                self.eof_received()
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_exception(httpx.WriteError("connection lost while sending"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    # --- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.headers = []
        self.reason = b""

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done:  # trailers of a chunked body are not response headers
            # llhttp keeps trailing whitespace; it is not part of the value (RFC 9110, 5.5).
            self.headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.informational = True  # 100 Continue, 103 Early Hints: the answer follows
            return
        self.status = status
        self.http_version = "HTTP/" + parser.get_http_version()
        self.head_done = True
        self.head_at = self.now()
        framed = encoded = False
        for name, _ in self.headers:
            lower = name.lower()
            if lower == b"content-length" or lower == b"transfer-encoding":
                framed = True
            elif lower == b"content-encoding":
                encoded = True
        bodiless = self.is_head or status in (204, 304)
        self.until_close = not framed and not bodiless
        if self.is_head:
            # llhttp cannot be told that a HEAD answer has no body: stop it here and give
            # the next exchange a fresh parser.
            self.keep_alive = parser.should_keep_alive()
            self._stale_parser = True
            self._finish()
            raise _StopParsing
        if encoded and not bodiless:
            self.streaming = True
            self._resolve()

    def on_body(self, data: bytes) -> None:
        if self.streaming:
            self.chunks.append(data)
            self._wake()
            return
        if self.truncated:
            return
        room = self.limit - self.size
        if len(data) > room:
            # Past the limit the rest is not wanted: answer now, drop the connection after.
            self.body.append(data[:room])
            self.size = self.limit
            self.truncated = True
            self.keep_alive = False
            self._finish()
            return
        self.body.append(data)
        self.size += len(data)

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        if self.complete:
            return
        self.keep_alive = not self.until_close and self.parser.should_keep_alive()
        if self.streaming:
            self.complete = True
            self._wake()
        elif not self.truncated:
            self._finish()

    # --- handing the answer over -------------------------------------------------------------

    def _finish(self) -> None:
        self.complete = True
        self._resolve()

    def _resolve(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class FastHttp1Transport:
    """Keep-alive HTTP/1.1 connections per origin, at most `max_connections` in all."""

    def __init__(
        self,
        max_connections: int,
        timeouts: Timeouts,
        ssl_context: ssl.SSLContext | None = None,
        now: Callable[[], float] | None = None,
    ) -> None:
        self._max = max_connections
        self._timeouts = timeouts
        self._ssl = ssl_context
        self._now = now or time.monotonic
        self._idle: dict[Origin, list[_Connection]] = defaultdict(list)
        self._busy: set[_Connection] = set()
        self._total = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.h2_origins: set[Origin] = set()  # TLS chose HTTP/2 there: not ours to send
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False
        # Deadlines are checked this often: a timeout fires at most one tick late.
        shortest = min(timeouts.read, timeouts.total)
        self._tick = min(0.5, max(0.01, shortest / 20))

    async def exchange(self, request: OutgoingRequest, limit: int) -> Http1Answer:
        """Send one request; the answer with its body (at most `limit` bytes kept), or the
        head and a stream when the body has a Content-Encoding."""
        origin = (request.scheme, request.host, request.port)
        method = request.method.encode("ascii")
        head = encode_head(method, request.target, request.headers)
        body = request.body
        conn = await self._acquire(origin)
        now = self._now()
        t = self._timeouts
        # Methods are case-sensitive: only HEAD itself has a bodiless answer.
        conn.begin(method == b"HEAD", limit, now + t.total, t.read)
        self._busy.add(conn)
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep())
        try:
            transport = conn.transport
            assert transport is not None
            if body and len(body) > _INLINE_BODY:
                transport.write(head)
                transport.write(body)
            else:
                transport.write(head + body if body else head)
            await conn.drain()
            if not conn.complete and not conn.streaming and conn.error is None:
                conn.waiter = asyncio.get_running_loop().create_future()
                try:
                    await conn.waiter
                finally:
                    conn.waiter = None
            if conn.error is not None:
                raise conn.error
        except BaseException:
            conn.fail(httpx.ReadError("exchange abandoned"))
            self._release(conn)
            raise
        answer = Http1Answer(conn, None)
        if conn.streaming:
            answer._pool = self
        else:
            answer.body = b"".join(conn.body)
            answer.truncated = conn.truncated
            self._release(conn)
        return answer

    # --- the pool ----------------------------------------------------------------------------

    async def _acquire(self, origin: Origin) -> _Connection:
        while True:
            idle = self._idle.get(origin)
            while idle:
                conn = idle.pop()
                if conn.usable:
                    return conn
                self._drop(conn)
            if self._total < self._max:
                return await self._connect(origin)
            if self._close_one_idle():
                continue
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(self._timeouts.total):
                    await waiter
            except TimeoutError:
                raise httpx.PoolTimeout("no free connection in time") from None
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def _close_one_idle(self) -> bool:
        """Make room for another origin: the connection bound is for all origins together."""
        for conns in self._idle.values():
            if conns:
                self._drop(conns.pop(0))
                return True
        return False

    async def _connect(self, origin: Origin) -> _Connection:
        scheme, host, port = origin
        tls = None
        if scheme == "https":
            tls = self._ssl or ssl.create_default_context()
        self._total += 1
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeouts.connect):
                _, conn = await loop.create_connection(
                    lambda: _Connection(origin, self._now),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls else None,
                )
        except TimeoutError:
            self._total -= 1
            self._wake_waiter()
            raise httpx.ConnectTimeout(f"connect to {host}:{port} timed out") from None
        except (OSError, ssl.SSLError) as exc:
            self._total -= 1
            self._wake_waiter()
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from None
        except BaseException:
            self._total -= 1
            self._wake_waiter()
            raise
        if tls is not None:
            tls_object = conn.transport.get_extra_info("ssl_object") if conn.transport else None
            if tls_object is not None and tls_object.selected_alpn_protocol() == "h2":
                self.h2_origins.add(origin)
                self._drop(conn)
                raise HTTP2Negotiated(origin)
        return conn

    def _release(self, conn: _Connection) -> None:
        conn.active = False
        self._busy.discard(conn)
        if conn.keep_alive and conn.complete and conn.usable and not self._closed:
            self._idle[conn.origin].append(conn)
            self._wake_waiter()
        else:
            self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        self._total -= 1
        self._wake_waiter()

    def _wake_waiter(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            if self._busy:
                now = self._now()
                for conn in list(self._busy):
                    conn.expire(now)

    async def aclose(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
