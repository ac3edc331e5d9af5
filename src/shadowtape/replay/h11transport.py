"""A lean HTTP/1.1 transport for httpx: asyncio streams + h11, one pool of keep-alive
connections per origin.

httpcore's general-purpose pool (anyio wrappers, a readability probe of every connection on
every request event, O(connections^2) bookkeeping) costs more CPU per request than parsing
HTTP does; a replayer sends tens of thousands of small requests over a fixed set of
connections, so it uses this transport for HTTP/1.1 and keeps httpcore for HTTP/2. Failures
surface as httpx's own exceptions, so retry decisions do not depend on the transport.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import h11
import httpx

READ_CHUNK = 64 * 1024
Origin = tuple[str, str, int]


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


def _timeouts(request: httpx.Request) -> dict[str, float | None]:
    return request.extensions.get("timeout", {})


class H11Transport(httpx.AsyncBaseTransport):
    def __init__(self, max_connections: int, ssl_context: ssl.SSLContext | None = None) -> None:
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[Origin, list[_Connection]] = defaultdict(list)
        self._ssl = ssl_context
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = _timeouts(request)
        try:
            async with asyncio.timeout(timeouts.get("pool")):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("no free connection in time", request=request) from None
        url = request.url
        origin: Origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        try:
            conn = await self._connection(origin, request, timeouts.get("connect"))
            body = await request.aread()
            try:
                await self._send(conn, request, body)
                response = await self._read_head(conn, request, timeouts.get("read"))
            except BaseException:
                conn.close()
                raise
        except BaseException:
            self._slots.release()
            raise
        headers = [(k, v) for k, v in response.headers.raw_items()]
        return httpx.Response(
            status_code=response.status_code,
            headers=headers,
            stream=_Body(self, origin, conn, request, timeouts.get("read")),
            extensions={
                "http_version": b"HTTP/" + response.http_version,
                "reason_phrase": response.reason,
            },
        )

    async def _connection(
        self, origin: Origin, request: httpx.Request, timeout: float | None
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
        return _Connection(reader, writer)

    async def _send(self, conn: _Connection, request: httpx.Request, body: bytes) -> None:
        target = request.url.raw_path
        try:
            data = conn.h11.send(
                h11.Request(method=request.method, target=target, headers=request.headers.raw)
            )
            if body:
                data += conn.h11.send(h11.Data(data=body))
            data += conn.h11.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc), request=request) from None
        try:
            conn.writer.write(data)
            await conn.writer.drain()
        except OSError as exc:
            raise httpx.WriteError(str(exc) or type(exc).__name__, request=request) from None

    async def _next_event(
        self, conn: _Connection, request: httpx.Request, timeout: float | None
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
        self, conn: _Connection, request: httpx.Request, timeout: float | None
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
        request: httpx.Request,
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
