"""A lean HTTP/1.1 transport for httpx: asyncio streams and the small codec in http1.py, one
pool of keep-alive connections per origin.

httpcore's general-purpose pool (anyio wrappers, a readability probe of every connection on
every request event, O(connections^2) bookkeeping) and h11's state machine cost more CPU per
request than the socket work does; a replayer sends tens of thousands of small requests over
a fixed set of connections, so it uses this transport for HTTP/1.1 and keeps httpcore for
HTTP/2. `send` also skips building an httpx.Request per request (URL parsing and header
normalisation) and httpx's client layers (auth flow, redirect loop, cookie jar adapter), all
of which replay switches off. Failures surface as httpx's own exceptions, so retry decisions
do not depend on the transport.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import httpx

from shadowtape.replay.http1 import (
    Framing,
    Origin,
    ProtocolViolation,
    RawHeaders,
    ResponseHead,
    body_framing,
    chunk_size,
    encode_request,
    parse_head,
    request_head,
)

READ_CHUNK = 64 * 1024
MAX_HEAD = 64 * 1024  # a response head larger than this is refused (h11 allows 16 KiB)
EAGER_BODY = 64 * 1024  # bodies up to this size, with a Content-Length, are read at once
T = TypeVar("T")


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @property
    def usable(self) -> bool:
        return (
            not self.writer.is_closing()
            and not self.reader.at_eof()
            and self.reader.exception() is None
        )

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()


def _timeouts(request: httpx.Request) -> dict[str, float | None]:
    return request.extensions.get("timeout", {})


class Http1Transport(httpx.AsyncBaseTransport):
    def __init__(self, max_connections: int, ssl_context: ssl.SSLContext | None = None) -> None:
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[Origin, list[_Connection]] = defaultdict(list)
        self._ssl = ssl_context
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        origin: Origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        body = await request.aread()
        return await self._exchange(
            origin,
            request.method.encode("ascii"),
            url.raw_path,
            request.headers.raw,
            body,
            _timeouts(request),
            request,
        )

    async def send(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
        timeouts: dict[str, float | None],
    ) -> httpx.Response:
        """One request without an httpx.Request: see the module docstring."""
        origin, target, raw = request_head(method, url, headers, body)
        return await self._exchange(
            origin, method.encode("ascii"), target, raw, body or b"", timeouts, None
        )

    async def _exchange(
        self,
        origin: Origin,
        method: bytes,
        target: bytes,
        headers: RawHeaders,
        body: bytes,
        timeouts: dict[str, float | None],
        request: httpx.Request | None,
    ) -> httpx.Response:
        try:
            data = encode_request(method, target, headers, body)
        except ProtocolViolation as exc:
            raise httpx.LocalProtocolError(str(exc), request=request) from None
        if self._slots.locked():  # a timer only when there is a wait for a connection
            try:
                async with asyncio.timeout(timeouts.get("pool")):
                    await self._slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout("no free connection in time", request=request) from None
        else:
            await self._slots.acquire()
        read_timeout = timeouts.get("read")
        try:
            conn = await self._connection(origin, request, timeouts.get("connect"))
            try:
                await self._write(conn, request, data)
                head = await self._read_head(conn, request, read_timeout)
                framing = body_framing(head, method)
                small = framing.mode == "length" and framing.length <= EAGER_BODY
                if small:
                    body = await self.read(
                        conn.reader.readexactly(framing.length), request, read_timeout
                    )
            except ProtocolViolation as exc:
                conn.close()
                raise httpx.RemoteProtocolError(str(exc), request=request) from None
            except BaseException:
                conn.close()
                raise
        except BaseException:
            self._slots.release()
            raise
        if small:
            # A small body is read with the head: the connection goes back to the pool now,
            # and the caller iterates over bytes in memory, not over the socket.
            self._release(origin, conn, reuse=framing.keep_alive)
            stream: httpx.AsyncByteStream = httpx.ByteStream(body)
        else:
            stream = _Body(self, origin, conn, request, read_timeout, framing)
        return httpx.Response(
            status_code=head.status,
            headers=head.headers,
            stream=stream,
            extensions={
                "http_version": b"HTTP/" + head.http_version,
                "reason_phrase": head.reason,
            },
        )

    async def _connection(
        self, origin: Origin, request: httpx.Request | None, timeout: float | None
    ) -> _Connection:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.usable:
                return conn
            conn.close()
        scheme, host, port = origin
        tls = None
        if scheme == "https":
            tls = self._ssl or ssl.create_default_context()
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=tls, server_hostname=host if tls else None, limit=MAX_HEAD
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"connect to {host}:{port} timed out", request=request
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from None
        return _Connection(reader, writer)

    async def _write(self, conn: _Connection, request: httpx.Request | None, data: bytes) -> None:
        try:
            conn.writer.write(data)
            # Only a full socket buffer (or a broken connection) makes drain() wait.
            transport = conn.writer.transport
            if transport.get_write_buffer_size() or transport.is_closing():
                await conn.writer.drain()
        except OSError as exc:
            raise httpx.WriteError(str(exc) or type(exc).__name__, request=request) from None

    async def read(
        self, step: Awaitable[T], request: httpx.Request | None, timeout: float | None
    ) -> T:
        """One read from the socket, with the read timeout and httpx's exceptions."""
        try:
            async with asyncio.timeout(timeout):
                return await step
        except TimeoutError:
            raise httpx.ReadTimeout("read timed out", request=request) from None
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise httpx.RemoteProtocolError(
                    "server disconnected without sending a response", request=request
                ) from None
            raise httpx.RemoteProtocolError(
                "server closed the connection in the middle of a response", request=request
            ) from None
        except asyncio.LimitOverrunError:
            raise httpx.RemoteProtocolError(
                f"response head larger than {MAX_HEAD // 1024} KiB", request=request
            ) from None
        except OSError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from None

    async def _read_head(
        self, conn: _Connection, request: httpx.Request | None, timeout: float | None
    ) -> ResponseHead:
        while True:
            raw = await self.read(conn.reader.readuntil(b"\r\n\r\n"), request, timeout)
            head = parse_head(raw)
            if not 100 <= head.status < 200 or head.status == 101:
                return head
            # An informational answer (100 Continue, 103 Early Hints): the final one follows.

    def _release(self, origin: Origin, conn: _Connection, reuse: bool) -> None:
        if reuse and not self._closed and conn.usable:
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
        transport: Http1Transport,
        origin: Origin,
        conn: _Connection,
        request: httpx.Request | None,
        timeout: float | None,
        framing: Framing,
    ) -> None:
        self._transport = transport
        self._origin = origin
        self._conn = conn
        self._request = request
        self._timeout = timeout
        self._framing = framing
        self._complete = framing.mode == "length" and framing.length == 0
        self._released = False

    def _read(self, step: Awaitable[T]) -> Awaitable[T]:
        return self._transport.read(step, self._request, self._timeout)

    async def _exactly(self, n: int) -> AsyncIterator[bytes]:
        reader = self._conn.reader
        while n > 0:
            data = await self._read(reader.read(min(n, READ_CHUNK)))
            if not data:
                raise httpx.RemoteProtocolError(
                    "server closed the connection before the end of the body",
                    request=self._request,
                )
            n -= len(data)
            yield data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._complete:
            return
        reader = self._conn.reader
        mode = self._framing.mode
        try:
            if mode == "length":
                async for data in self._exactly(self._framing.length):
                    yield data
            elif mode == "chunked":
                while True:
                    size = chunk_size(await self._read(reader.readuntil(b"\r\n")))
                    if size == 0:
                        # Trailers, if any, up to the blank line; they are not kept.
                        line = b""
                        while line != b"\r\n":
                            line = await self._read(reader.readuntil(b"\r\n"))
                        break
                    async for data in self._exactly(size):
                        yield data
                    if await self._read(reader.readexactly(2)) != b"\r\n":
                        raise ProtocolViolation("chunk not followed by CRLF")
            else:
                while data := await self._read(reader.read(READ_CHUNK)):
                    yield data
        except ProtocolViolation as exc:
            raise httpx.RemoteProtocolError(str(exc), request=self._request) from None
        self._complete = True

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            reuse = self._complete and self._framing.keep_alive
            self._transport._release(self._origin, self._conn, reuse=reuse)
