"""The httpx (httpcore) side of replay, used for HTTP/2: an `OutgoingRequest` as an
httpx.Request that keeps its bytes, and a transport made of several small connection pools.

httpcore's pool does O(connections^2) bookkeeping on every request event (it rescans every
connection for each idle one), so one pool of 64 connections spends more CPU on bookkeeping
than on HTTP. Several pools of a few connections each, behind the one shared `AsyncClient`,
keep the same connection bound with a fraction of that cost.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING

import certifi
import httpx

if TYPE_CHECKING:
    from shadowtape.replay.sender import OutgoingRequest


def httpx_request(request: OutgoingRequest, timeouts: dict[str, float | None]) -> httpx.Request:
    """The request for httpcore with the contract kept (`sender.OutgoingRequest`).

    The target rides in httpcore's `target` extension, which becomes `:path` (and the
    HTTP/1.1 request line) as given: `httpx.URL` would re-quote `|`, `"`, raw non-ASCII and a
    bad `%`. Headers go as raw bytes; the body as a stream, because `content=` makes httpx add
    headers of its own (Content-Length: 0 on a bodiless POST). The URL carries only where to
    connect. What httpcore still changes for HTTP/2 is documented in `sender.REWRITES`:
    names lower-cased, Host as `:authority`.
    """
    return httpx.Request(
        request.method,
        httpx.URL(scheme=request.scheme, host=request.host, port=request.port),
        headers=request.headers,
        stream=httpx.ByteStream(request.body),
        extensions={"target": request.target, "timeout": timeouts},
    )


CONNECTIONS_PER_POOL = 4


class _PreferH2(ssl.SSLContext):
    """Browsers offer h2 first; httpcore offers http/1.1 first, so a server that honours
    the client's order (mitmproxy does) would never choose HTTP/2 for a replay."""

    def set_alpn_protocols(self, alpn_protocols: Iterable[str]) -> None:
        super().set_alpn_protocols(sorted(alpn_protocols, key=lambda p: p != "h2"))


def tls_context(verify: bool = True) -> ssl.SSLContext:
    ctx = _PreferH2(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if verify:
        ctx.load_verify_locations(cafile=certifi.where())
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _CountedStream(httpx.AsyncByteStream):
    """Tells the transport when a response is finished, so it knows each pool's load."""

    def __init__(self, stream: httpx.AsyncByteStream, done: Callable[[], None]) -> None:
        self._stream = stream
        self._done: Callable[[], None] | None = done

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._done is not None:
                self._done()
                self._done = None


class ShardedPoolTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        max_connections: int,
        *,
        http1: bool = True,
        http2: bool = False,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        pools = max(1, -(-max_connections // CONNECTIONS_PER_POOL))
        # One TLS context for all pools: loading the CA bundle costs ~0.1 s each time.
        tls = verify if isinstance(verify, ssl.SSLContext) else tls_context(verify)
        sizes = [max_connections // pools + (i < max_connections % pools) for i in range(pools)]
        self._pools = [
            httpx.AsyncHTTPTransport(
                http1=http1,
                http2=http2,
                verify=tls,
                limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
            )
            for n in sizes
        ]
        self._sizes = sizes
        self._busy = [0] * pools

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = min(range(len(self._pools)), key=lambda i: self._busy[i] / self._sizes[i])
        self._busy[index] += 1

        def done() -> None:
            self._busy[index] -= 1

        try:
            response = await self._pools[index].handle_async_request(request)
        except BaseException:
            done()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_CountedStream(response.stream, done),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()
