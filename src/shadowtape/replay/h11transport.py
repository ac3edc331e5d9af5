"""A lean HTTP/1.1 transport for httpx: asyncio streams + h11, one pool of keep-alive
connections per origin.

`send` takes the replayer's own request (method, URL string, header pairs, body) and skips
building an httpx.Request per request (URL parsing, header normalisation: about as much CPU
as the HTTP exchange itself); URLs it cannot pass through unchanged fall back to httpx's
parsing, so what goes on the wire is what httpx would send. httpx's client layers (auth flow,
redirect loop, cookie jar adapter) are all switched off for replay and are skipped too.

httpcore's general-purpose pool (anyio wrappers, a readability probe of every connection on
every request event, O(connections^2) bookkeeping) costs more CPU per request than parsing
HTTP does; a replayer sends tens of thousands of small requests over a fixed set of
connections, so it uses this transport for HTTP/1.1 and keeps httpcore for HTTP/2. Failures
surface as httpx's own exceptions, so retry decisions do not depend on the transport.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import h11
import httpx

from shadowtape.replay.http1 import request_fields

READ_CHUNK = 64 * 1024
Origin = tuple[str, str, int]
RawHeaders = list[tuple[bytes, bytes]]
_DEFAULT_PORTS = {"http": 80, "https": 443}
# URLs httpx would send unchanged: ASCII host, and a target of unreserved, sub-delim, ":@/?"
# characters and valid %XX escapes with no dot segments (httpx would quote or normalise
# those). Anything else goes through httpx.URL.
_PLAIN_URL = re.compile(
    r"(https?)://([a-z0-9.-]+)(?::(\d{1,5}))?"
    r"(/(?:[A-Za-z0-9\-_~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2}|\.(?![./?]|\Z))*)?\Z"
)
_DOT_SEGMENT = re.compile(r"/\.\.?(?:/|\?|\Z)")


def request_head(
    method: str, url: str, headers: list[tuple[str, str]], body: bytes | None
) -> tuple[Origin, bytes, RawHeaders]:
    """Origin, request target and header bytes exactly as httpx.Request would make them,
    including the headers httpx adds (`http1.request_fields`)."""
    m = _PLAIN_URL.match(url)
    if m is None or _DOT_SEGMENT.search(m.group(4) or ""):
        parsed = httpx.URL(url)
        scheme, host, port = parsed.scheme, parsed.host, parsed.port
        target = parsed.raw_path
        netloc = parsed.netloc.decode("ascii")
    else:
        scheme, host, port_text, path = m.groups()
        port = int(port_text) if port_text else None
        if port == _DEFAULT_PORTS[scheme]:
            port = None
        target = (path or "/").encode("ascii")
        netloc = host if port is None else f"{host}:{port}"
    raw = request_fields(method, headers, body, netloc)
    origin = (scheme, host, port or _DEFAULT_PORTS.get(scheme, 80))
    return origin, target, raw


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


class H11Transport(httpx.AsyncBaseTransport):
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
                self._send(conn, request, method, target, headers, body)
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
        return _Connection(reader, writer)

    def _send(
        self,
        conn: _Connection,
        request: httpx.Request | None,
        method: bytes,
        target: bytes,
        headers: RawHeaders,
        body: bytes,
    ) -> None:
        h = conn.h11
        try:
            data = h.send(h11.Request(method=method, target=target, headers=headers))
            if body:
                data += h.send(h11.Data(data=body))
            data += h.send(_END)
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
