"""HTTP/1.1 on the wire: httptools parses, the double writes recorded bytes.

One protocol object per connection. Requests are parsed by httptools (llhttp, the parser
uvicorn uses); each gets a slot in a queue so that pipelined requests are answered in order
even when their delays differ; a slot is written when its answer is due and everything ahead
of it is written. Besides answering, a slot can reset the connection (SO_LINGER 0, then abort:
the client sees ECONNRESET) or hold it unanswered until the client gives up or the hold cap
passes, which is how recorded and injected failures are reproduced.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httptools

from shadowtape.serve.deadlines import Deadline, Deadlines

logger = logging.getLogger(__name__)

SEND = "send"
RESET = "reset"
HOLD = "hold"
# Idle keep-alive connections are closed after this, so a test run's clients cannot pile up
# open sockets on a long-lived double.
IDLE_TIMEOUT_S = 75.0
# Pipelined requests waiting behind an unanswered one: reading pauses beyond this.
MAX_QUEUED = 128
MAX_BODY_BYTES = 64 * 1024 * 1024
_LINGER_ZERO = struct.pack("ii", 1, 0)
_BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n"
    b"Connection: close\r\n\r\nbad request\n"
)
_INTERNAL_ERROR = (
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 37\r\n"
    b"Connection: close\r\n\r\nshadowtape serve failed; see its log\n"
)
_TOO_LARGE = (
    b"HTTP/1.1 413 Content Too Large\r\nContent-Type: text/plain\r\nContent-Length: 15\r\n"
    b"Connection: close\r\n\r\nbody too large\n"
)


@dataclass(slots=True)
class Incoming:
    """A parsed request, as the protocol hands it to the double."""

    method: str
    url: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    started: float  # time.monotonic() at the first byte
    received_us: int  # wall clock of the first byte, µs
    keep_alive: bool
    client: str | None


@dataclass(slots=True)
class Slot:
    """One request's place in its connection's answer queue."""

    request: Incoming
    action: str = SEND
    data: bytes = b""
    close: bool = False
    ready: bool = False
    done: bool = False
    timer: asyncio.TimerHandle | Deadline | None = None
    # Called once with (status written or None, error or None) when the slot is settled.
    on_settled: Callable[[Slot, str | None], None] | None = None
    status: int | None = None
    context: Any = field(default=None)


class DoubleProtocol(asyncio.Protocol):
    """Parses requests and writes answers in order; the double decides what they are."""

    def __init__(
        self,
        handle: Callable[[Incoming, Slot, DoubleProtocol], None],
        hold_s: float,
        connections: set[DoubleProtocol],
        on_bad_request: Callable[[], None],
        deadlines: Deadlines,
    ) -> None:
        self._handle = handle
        self._deadlines = deadlines
        self._hold_s = hold_s
        self._connections = connections
        self._on_bad_request = on_bad_request
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Slot] = deque()
        self.client: str | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._started = 0.0
        self._received_us = 0
        self._paused = False
        self._closed = False
        self._upgrade = False
        self._idle: asyncio.TimerHandle | None = None

    # --- connection -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if peer else None
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        while self.queue:
            slot = self.queue.popleft()
            if slot.timer is not None:
                slot.timer.cancel()
            if slot.action == HOLD:
                self._settle(slot, "held until the client gave up")
            else:
                self._settle(slot, "client closed the connection before its answer")

    def data_received(self, data: bytes) -> None:
        if self._upgrade:
            return  # bytes of a protocol we did not agree to; the connection closes after
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # An Upgrade (h2c, websocket) is ignored, as RFC 9110 allows: the request is
            # answered over HTTP/1.1 and the connection closed after it.
            self._upgrade = True
            for slot in self.queue:
                slot.close = True
        except httptools.HttpParserCallbackError:
            # A bug in the double, not the client's fault: said so, with its traceback.
            logger.exception("shadowtape serve failed on a request")
            self._abort_with(_INTERNAL_ERROR)
        except httptools.HttpParserError:
            self._on_bad_request()
            self._abort_with(_BAD_REQUEST)

    def _abort_with(self, data: bytes) -> None:
        if self.transport is not None and not self._closed:
            self.transport.write(data)
            self.transport.close()
            self._closed = True

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = self.loop.call_later(IDLE_TIMEOUT_S, self._idle_expired)

    def _idle_expired(self) -> None:
        if not self.queue and self.transport is not None:
            self.transport.close()

    def shutdown(self, abort: bool = False) -> None:
        """Close now (after what is already written, unless `abort`); every slot still
        waiting is settled by connection_lost, so each request's row is written."""
        if self.transport is None:
            return
        if abort:
            self.transport.abort()
        elif not self.transport.is_closing():
            self.transport.close()

    # --- parser callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        # Not loop.time(): uvloop's clock ticks in milliseconds.
        self._started = time.monotonic()
        self._received_us = time.time_ns() // 1000
        self._url = b""
        self._headers = []
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        for name, value in self._headers:
            if name.lower() == b"expect" and value.lower() == b"100-continue":
                assert self.transport is not None
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > MAX_BODY_BYTES:
            self._abort_with(_TOO_LARGE)
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._closed:
            return
        version = self.parser.get_http_version()
        request = Incoming(
            method=self.parser.get_method().decode("ascii", "replace"),
            url=self._url,
            headers=self._headers,
            body=b"".join(self._body),
            started=self._started,
            received_us=self._received_us,
            # HTTP/1.0 keep-alive needs headers we do not add; such clients get a close.
            keep_alive=self.parser.should_keep_alive() and version == "1.1",
            client=self.client,
        )
        slot = Slot(request)
        self.queue.append(slot)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if len(self.queue) > MAX_QUEUED and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True
        self._handle(request, slot, self)

    # --- answering ------------------------------------------------------------------------

    def answer_at(self, slot: Slot, due: float) -> None:
        """Make the slot ready at monotonic time `due` (now if it has passed)."""
        if slot.action == HOLD:
            slot.timer = self.loop.call_later(self._hold_s, self._hold_expired, slot)
            return
        if due <= time.monotonic():
            self.ready(slot)
        else:
            slot.timer = self._deadlines.at(due, self.ready, slot)

    def ready(self, slot: Slot) -> None:
        slot.timer = None
        slot.ready = True
        self._flush()

    def _flush(self) -> None:
        transport = self.transport
        while self.queue and self.queue[0].ready:
            if self._closed or transport is None:
                return
            slot = self.queue.popleft()
            if slot.action == RESET:
                self._settle(slot, None)
                self._reset()
                return
            transport.write(slot.data)
            self._settle(slot, None)
            if slot.close or not slot.request.keep_alive:
                transport.close()
                self._closed = True
                return
        if self._paused and len(self.queue) <= MAX_QUEUED // 2 and transport is not None:
            transport.resume_reading()
            self._paused = False
        if not self.queue:
            self._arm_idle()

    def _reset(self) -> None:
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        self.transport.abort()
        self._closed = True

    def _hold_expired(self, slot: Slot) -> None:
        # The client waited out the whole hold; closing (not resetting) ends it the way an
        # idle-timeout on a load balancer would.
        slot.timer = None
        self._settle(slot, f"held for the whole {self._hold_s:g} s cap, then closed")
        if self.transport is not None and not self._closed:
            self.transport.close()

    def _settle(self, slot: Slot, error: str | None) -> None:
        if slot.done:
            return
        slot.done = True
        if slot.on_settled is not None:
            slot.on_settled(slot, error)
