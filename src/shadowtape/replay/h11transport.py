"""A lean HTTP/1.1 transport for httpx: asyncio streams + h11, one pool of keep-alive
connections per origin.

`send` takes the replayer's `OutgoingRequest` and writes its head itself: the request line
and each header exactly as the given bytes, in the given order (h11's writer would move Host
first, and h11 refuses a target or header with bytes outside ASCII VCHAR and obs-text that
the recording holds). h11 still runs the connection: it is told the method and the framing
(Content-Length) so it reads the answer right, frames the body and knows when a connection
can be reused. What may be sent at all is decided once, in `sender.build_request`.

httpcore's general-purpose pool (anyio wrappers, a readability probe of every connection on
every request event, O(connections^2) bookkeeping) costs more CPU per request than parsing
HTTP does; a replayer sends tens of thousands of small requests over a fixed set of
connections, so it uses this transport for HTTP/1.1 and keeps httpcore for HTTP/2. Skipping
the httpx.Request per request (URL parsing, header normalisation) saves about as much CPU as
the HTTP exchange itself costs. Failures surface as httpx's own exceptions, so retry decisions
do not depend on the transport.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import h11
import httpx

if TYPE_CHECKING:
    from shadowtape.replay.sender import OutgoingRequest

READ_CHUNK = 64 * 1024
Origin = tuple[str, str, int]
RawHeaders = list[tuple[bytes, bytes]]
_DEFAULT_PORTS = {"http": 80, "https": 443}


def encode_head(method: bytes, target: bytes, headers: RawHeaders) -> bytes:
    """The request line and header block, byte for byte as given."""
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)

    @property
    def reusable(self) -> bool:
        return (
            self.h11.our_state is h11.IDLE
            and not self.writer.is_closing()
            and not self.reader.at_eof()
        )

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()


_END = h11.EndOfMessage()


def _timeouts(request: httpx.Request) -> dict[str, float | None]:
    return request.extensions.get("timeout", {})


class HTTP2Negotiated(Exception):
    """TLS chose HTTP/2 for this origin: the request goes to the HTTP/2 transport instead
    (nothing was sent; the origin is remembered in `H11Transport.h2_origins`)."""


class H11Transport(httpx.AsyncBaseTransport):
    """`offers_h2`: TLS connections offer h2 first (replay's `--http auto`); an origin that
    picks it gets HTTP2Negotiated, so HTTP/1.1 over TLS still goes out byte for byte here
    rather than through httpcore's h11 writer, and HTTP/2 where the server prefers it."""

    def __init__(
        self,
        max_connections: int,
        ssl_context: ssl.SSLContext | None = None,
        *,
        offers_h2: bool = False,
    ) -> None:
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[Origin, list[_Connection]] = defaultdict(list)
        self._ssl = ssl_context
        self._offers_h2 = offers_h2 and ssl_context is not None
        if self._offers_h2:
            ssl_context.set_alpn_protocols(["h2", "http/1.1"])
        self.h2_origins: set[Origin] = set()
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        origin: Origin = (url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme, 80))
        body = await request.aread()
        target = request.extensions.get("target", url.raw_path)
        return await self._exchange(
            origin,
            request.method.encode("ascii"),
            encode_head(request.method.encode("ascii"), target, request.headers.raw),
            body,
            _timeouts(request),
            request,
        )

    async def send(
        self, request: OutgoingRequest, timeouts: dict[str, float | None]
    ) -> httpx.Response:
        """One request without an httpx.Request: see the module docstring."""
        method = request.method.encode("ascii")
        return await self._exchange(
            (request.scheme, request.host, request.port),
            method,
            encode_head(method, request.target, request.headers),
            request.body,
            timeouts,
            None,
        )

    async def _exchange(
        self,
        origin: Origin,
        method: bytes,
        head: bytes,
        body: bytes,
        timeouts: dict[str, float | None],
        request: httpx.Request | None,
    ) -> httpx.Response:
        if self._slots.locked():  # a timer per request only when there is a wait
            try:
                async with asyncio.timeout(timeouts.get("pool")):
                    await self._slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout("no free connection in time", request=request) from None
        else:
            await self._slots.acquire()
        try:
            conn = await self._connection(origin, request, timeouts.get("connect"))
            try:
                self._send(conn, request, method, head, body)
                await self._drain(conn, request)
                response = await self._read_head(conn, request, timeouts.get("read"))
            except BaseException:
                conn.close()
                raise
        except BaseException:
            self._slots.release()
            raise
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers.raw_items(),
            stream=_Body(self, origin, conn, request, timeouts.get("read")),
            extensions={
                "http_version": b"HTTP/" + response.http_version,
                "reason_phrase": response.reason,
            },
        )

    async def _connection(
        self, origin: Origin, request: httpx.Request | None, timeout: float | None
    ) -> _Connection:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.reusable:
                return conn
            conn.close()
        scheme, host, port = origin
        tls = None
        if scheme == "https":
            tls = self._ssl or ssl.create_default_context()
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=tls, server_hostname=host if tls else None, limit=READ_CHUNK
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"connect to {host}:{port} timed out", request=request
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from None
        if self._offers_h2:
            chosen = writer.get_extra_info("ssl_object")
            if chosen is not None and chosen.selected_alpn_protocol() == "h2":
                writer.close()
                self.h2_origins.add(origin)
                raise HTTP2Negotiated(origin)
        return _Connection(reader, writer)

    def _send(
        self,
        conn: _Connection,
        request: httpx.Request | None,
        method: bytes,
        head: bytes,
        body: bytes,
    ) -> None:
        h = conn.h11
        # h11 is told only what it needs to run the connection (the method, for how the answer
        # is framed; the body's length); the head on the wire is ours, byte for byte.
        framing = [(b"host", b"replay"), (b"content-length", b"%d" % len(body))]
        try:
            h.send(h11.Request(method=method, target=b"/", headers=framing))
            data = head + h.send(h11.Data(data=body)) if body else head
            h.send(_END)
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc), request=request) from None
        try:
            conn.writer.write(data)
        except OSError as exc:
            raise httpx.WriteError(str(exc) or type(exc).__name__, request=request) from None

    async def _drain(self, conn: _Connection, request: httpx.Request | None) -> None:
        # Only a full socket buffer makes drain() wait; skip the coroutine otherwise.
        transport = conn.writer.transport
        if (
            transport.get_write_buffer_size() == 0
            and not transport.is_closing()
            and conn.reader.exception() is None
        ):
            return
        try:
            await conn.writer.drain()
        except OSError as exc:
            raise httpx.WriteError(str(exc) or type(exc).__name__, request=request) from None

    async def _next_event(
        self, conn: _Connection, request: httpx.Request | None, timeout: float | None
    ) -> Any:
        while True:
            try:
                event = conn.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(str(exc), request=request) from None
            if event is not h11.NEED_DATA:
                return event
            try:
                async with asyncio.timeout(timeout):
                    data = await conn.reader.read(READ_CHUNK)
            except TimeoutError:
                raise httpx.ReadTimeout("read timed out", request=request) from None
            except OSError as exc:
                raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from None
            if not data and conn.h11.their_state is h11.SEND_RESPONSE:
                raise httpx.RemoteProtocolError(
                    "server disconnected without sending a response", request=request
                )
            conn.h11.receive_data(data)

    async def _read_head(
        self, conn: _Connection, request: httpx.Request | None, timeout: float | None
    ) -> h11.Response:
        while True:
            event = await self._next_event(conn, request, timeout)
            if isinstance(event, h11.Response):
                return event
            if isinstance(event, h11.ConnectionClosed):
                raise httpx.RemoteProtocolError("connection closed", request=request)
            # InformationalResponse (1xx): keep reading for the final answer.

    def _release(self, origin: Origin, conn: _Connection, reuse: bool) -> None:
        if reuse and not self._closed and conn.h11.their_state is h11.DONE:
            try:
                conn.h11.start_next_cycle()
            except h11.LocalProtocolError:
                reuse = False
        else:
            reuse = False
        if reuse and conn.reusable:
            self._idle[origin].append(conn)
        else:
            conn.close()
        self._slots.release()

    async def aclose(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()


class _Body(httpx.AsyncByteStream):
    def __init__(
        self,
        transport: H11Transport,
        origin: Origin,
        conn: _Connection,
        request: httpx.Request | None,
        timeout: float | None,
    ) -> None:
        self._transport = transport
        self._origin = origin
        self._conn = conn
        self._request = request
        self._timeout = timeout
        self._complete = False
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while not self._complete:
            event = await self._transport._next_event(self._conn, self._request, self._timeout)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                self._complete = True

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            self._transport._release(self._origin, self._conn, reuse=self._complete)
