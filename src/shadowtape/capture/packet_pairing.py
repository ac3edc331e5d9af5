"""Requests paired with their responses, across the files a capture was cut into: pure logic.

HTTP/1.1 answers requests in the order they were sent on a connection (RFC 9112, 9.3.2), so
each TCP stream keeps a queue: a final response takes the oldest open request, interim 1xx
responses take nothing. This pairs pipelined requests that tshark's own `http.request_in` link
loses (two requests in one frame: the second response gets no link in tshark 4.0). HTTP/2
pairs by stream id.

A capture cut into files (a dumpcap ring, `tcpdump -C`) cuts exchanges: a request at the end
of file k, its response at the start of file k+1. Each file is dissected alone (in parallel),
and what a cut left open is *carried*: the packets of the open requests (from the first open
request on, client side; after the last answered response, server side) and, from the next
files where the connection goes on, the packets up to the responses that answer them. Those
packets are dissected again together (a *seam*), and the responses they give are paired with
the requests already read. The next file skips those responses (the seam owns them), so no
exchange is counted twice. HTTP/2 is not carried: its header compression state lives in the
whole connection, so what a cut leaves open is recorded without a response and counted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from shadowtape.capture.packet_counters import PacketCounters
from shadowtape.capture.packet_records import (
    H2_DATA,
    H2_HEADERS,
    H2_RST_STREAM,
    Continuation,
    H2Frame,
    Http1Message,
    PayloadFrames,
    Record,
    StreamInfo,
)
from shadowtape.capture.packet_wire import (
    Address,
    WireRequest,
    WireResponse,
    h2_headers,
    http1_request,
    http1_response,
)

TupleKey = tuple[str, int, str, int]  # client address, client port, server address, port
# A carry that has waited this many files for its responses is dissected as it is.
MAX_CARRY_FILES = 4


@dataclass(slots=True)
class OpenRequest:
    """A request read but not yet answered; `plan` is what the recorder decided for it."""

    request: WireRequest
    plan: object


@dataclass(slots=True)
class Carry:
    """Packets of one connection to dissect again once its open requests can be answered.

    `pending` holds the open requests in the order they were sent; None stands for a request
    cut mid-message, which only the seam can read.
    """

    key: TupleKey
    pending: list[OpenRequest | None]
    parts: list[tuple[int, list[int]]]
    # The cut fell inside a response: the next file's first server bytes finish it.
    response_cut: bool = False
    answered: int = 0
    waited: int = 0

    @property
    def resolved(self) -> bool:
        return self.answered >= len(self.pending)


Plan = Callable[[WireRequest], object]
Emit = Callable[[OpenRequest, WireResponse | None, str | None], None]


@dataclass(slots=True)
class _H2Stream:
    request: WireRequest | None = None
    open: OpenRequest | None = None
    request_body: list[bytes] = field(default_factory=list)
    response: WireResponse | None = None
    response_body: list[bytes] = field(default_factory=list)
    client_direction: int = 0
    done: bool = False


@dataclass(slots=True)
class _Stream:
    info: StreamInfo
    key: TupleKey | None = None
    client_direction: int | None = None
    queue: deque[OpenRequest] = field(default_factory=deque)
    messages: int = 0
    continuations: int = 0
    h2: dict[int, _H2Stream] | None = None
    # carried in from an earlier file: responses that belong to its seam, not to this file
    carry: Carry | None = None
    owed: int = 0
    last_owed_frame: int = 0
    # the rest of a carried response comes first, as data tshark cannot read as a message
    owed_rest: bool = False
    in_rest: bool = False
    first_request_frame: int | None = None
    last_request_frame: int = 0
    last_response_frame: int = 0
    open_first_frame: int | None = None


class UnitPairing:
    """Pairs the records of one input file (or one seam) in order.

    `plan` is called once per request as it is read, in capture order (session and sampling
    decisions need that order); `emit` once per exchange, answered or not.
    """

    def __init__(
        self,
        unit: int,
        name: str,
        counters: PacketCounters,
        plan: Plan,
        emit: Emit,
        carries: dict[TupleKey, Carry] | None = None,
        server_ports: Iterable[int] = (),
    ) -> None:
        self.unit = unit
        self.name = name
        self.counters = counters
        self.plan = plan
        self.emit = emit
        self.carries = carries if carries is not None else {}
        self.server_ports = frozenset(server_ports)
        self.streams: dict[int, _Stream] = {}

    # --- records ---------------------------------------------------------------------------

    def feed(self, records: Iterable[Record]) -> None:
        for record in records:
            if isinstance(record, Http1Message):
                self._http1(record)
            elif isinstance(record, H2Frame):
                self._h2(record)
            elif isinstance(record, StreamInfo):
                self._stream_seen(record)
            elif isinstance(record, Continuation):
                self._continuation(record)

    def _continuation(self, record: Continuation) -> None:
        stream = self.streams.get(record.stream)
        if stream is None:
            return
        stream.continuations += 1
        if stream.client_direction is None or record.direction == stream.client_direction:
            return
        if stream.owed_rest:
            stream.owed_rest = False
            stream.in_rest = True
            self._owe_paid(stream, record.frame)
        elif stream.in_rest:
            stream.last_owed_frame = record.frame

    def _owe_paid(self, stream: _Stream, frame: int) -> None:
        stream.owed -= 1
        stream.last_owed_frame = frame
        assert stream.carry is not None
        stream.carry.answered += 1

    def _stream_seen(self, info: StreamInfo) -> None:
        stream = _Stream(info)
        self.streams[info.stream] = stream
        forward = (info.src, info.sport, info.dst, info.dport)
        backward = (info.dst, info.dport, info.src, info.sport)
        for direction, key in ((0, forward), (1, backward)):
            carry = self.carries.get(key)
            if carry is not None:
                self._attach(stream, key, direction, carry)
                return
        if info.dport in self.server_ports and info.sport not in self.server_ports:
            stream.key, stream.client_direction = forward, 0
        elif info.sport in self.server_ports and info.dport not in self.server_ports:
            stream.key, stream.client_direction = backward, 1

    def _attach(self, stream: _Stream, key: TupleKey, client_direction: int, carry: Carry) -> None:
        stream.key, stream.client_direction = key, client_direction
        stream.carry = carry
        stream.owed = len(carry.pending) - carry.answered
        stream.owed_rest = carry.response_cut and carry.answered == 0 and stream.owed > 0

    def _sides(self, stream: _Stream, sender_direction: int, is_request: bool) -> None:
        if stream.key is not None:
            return
        client_direction = sender_direction if is_request else 1 - sender_direction
        (client, server) = stream.info.ends(client_direction)
        stream.key = (client[0], client[1], server[0], server[1])
        stream.client_direction = client_direction

    def _addresses(self, stream: _Stream) -> tuple[Address, Address]:
        assert stream.key is not None
        return (stream.key[0], stream.key[1]), (stream.key[2], stream.key[3])

    # --- HTTP/1 ----------------------------------------------------------------------------

    def _http1(self, msg: Http1Message) -> None:
        stream = self.streams.get(msg.stream)
        if stream is None:
            return
        stream.messages += 1
        if msg.is_response:
            self._sides(stream, msg.direction, False)
            self._response(stream, msg)
            return
        self._sides(stream, msg.direction, True)
        client, server = self._addresses(stream)
        req = http1_request(msg, client, server, (self.name, msg.first_frame, msg.frame))
        if req is None:
            stream.continuations += 1
            return
        self.counters.requests += 1
        if stream.first_request_frame is None:
            stream.first_request_frame = msg.first_frame
        stream.last_request_frame = msg.frame
        if not stream.queue:
            stream.open_first_frame = msg.first_frame
        stream.queue.append(OpenRequest(req, self.plan(req)))

    def _response(self, stream: _Stream, msg: Http1Message) -> None:
        method = stream.queue[0].request.method if stream.queue and not stream.owed else None
        resp = http1_response(msg, method)
        if resp is None:
            stream.continuations += 1
            return
        if resp.interim:
            return
        stream.last_response_frame = msg.frame
        stream.in_rest = False
        stream.owed_rest = False
        if stream.owed:
            # This answers a request from an earlier file: its seam will pair them.
            self._owe_paid(stream, msg.frame)
            return
        self.counters.responses += 1
        if not stream.queue:
            self.counters.responses_without_request += 1
            return
        opened = stream.queue.popleft()
        stream.open_first_frame = stream.queue[0].request.origin[1] if stream.queue else None
        self.emit(opened, resp, None)

    # --- HTTP/2 ----------------------------------------------------------------------------

    def _h2(self, frame: H2Frame) -> None:
        stream = self.streams.get(frame.stream)
        if stream is None or frame.sid == 0:
            return
        stream.messages += 1
        if stream.h2 is None:
            stream.h2 = {}
        state = stream.h2.get(frame.sid)
        if frame.type == H2_HEADERS:
            if not frame.headers_decoded:
                self.counters.h2_headers_undecodable += 1
                return
            block = h2_headers(frame)
            if ":method" in block.pseudo:
                self._sides(stream, frame.direction, True)
                client, server = self._addresses(stream)
                p = block.pseudo
                req = WireRequest(
                    method=p[":method"].upper(),
                    target=p.get(":path", "/"),
                    http_version="HTTP/2.0",
                    headers=block.headers,
                    body=b"",
                    started_us=frame.at_us,
                    ended_us=frame.at_us,
                    client=client,
                    server=server,
                    tls=frame.tls,
                    origin=(self.name, frame.frame, frame.sid),
                    scheme=p.get(":scheme"),
                    authority=p.get(":authority"),
                )
                self.counters.requests += 1
                state = _H2Stream(req, OpenRequest(req, self.plan(req)))
                state.client_direction = frame.direction
                stream.h2[frame.sid] = state
            elif ":status" in block.pseudo and state is not None and state.response is None:
                try:
                    status = int(block.pseudo[":status"])
                except ValueError:
                    status = 0
                if 100 <= status < 200:
                    return
                state.response = WireResponse(
                    status=status,
                    reason="",
                    http_version="HTTP/2.0",
                    headers=block.headers,
                    body=None,
                    started_us=frame.at_us,
                    ended_us=frame.at_us,
                )
                self.counters.responses += 1
            elif state is None and ":status" in block.pseudo:
                self.counters.responses_without_request += 1
                return
        elif frame.type == H2_DATA and state is not None:
            if frame.direction == state.client_direction:
                state.request_body.append(frame.data)
            else:
                state.response_body.append(frame.data)
        elif frame.type == H2_RST_STREAM and state is not None and not state.done:
            self._h2_finish(state, f"HTTP/2 stream reset (error code {frame.error or 0})")
            return
        if state is None or not frame.end_stream:
            return
        if frame.direction == state.client_direction:
            assert state.request is not None
            state.request.ended_us = frame.at_us
        elif state.response is not None and not state.done:
            state.response.ended_us = frame.at_us
            self._h2_finish(state, None)

    def _h2_finish(self, state: _H2Stream, error: str | None) -> None:
        state.done = True
        assert state.open is not None and state.request is not None
        state.request.body = b"".join(state.request_body)
        resp = state.response
        if resp is not None:
            resp.body = b"".join(state.response_body)
            if error is not None:
                resp = None
        self.emit(state.open, resp, error)

    # --- the end of the input --------------------------------------------------------------

    def finish(
        self, payload: PayloadFrames | None, last: bool
    ) -> tuple[list[Carry], dict[TupleKey, Carry]]:
        """Close this input: returns the carries to dissect now (their responses are all
        here, or they waited too long, or the capture ends) and the ones still open."""
        ready: list[Carry] = []
        still_open: dict[TupleKey, Carry] = {}
        seen: set[TupleKey] = set()
        for stream in self.streams.values():
            if stream.key is not None:
                seen.add(stream.key)
            if stream.carry is not None and stream.key is not None:
                self._extend_carry(stream, payload)
            self._close_h2(stream)
            if stream.messages == 0 and stream.carry is None and self._has_payload(stream, payload):
                self.counters.streams_unreassembled += 1
        for key, carry in self.carries.items():
            if key not in seen:
                carry.waited += 1
            if carry.resolved or last or carry.waited >= MAX_CARRY_FILES:
                ready.append(carry)
            else:
                still_open[key] = carry
        for stream in self.streams.values():
            carry = self._open_carry(stream, payload)
            if carry is None:
                continue
            if last or payload is None or carry.key in still_open:
                self._give_up(carry)
            else:
                still_open[carry.key] = carry
        return ready, still_open

    def _has_payload(self, stream: _Stream, payload: PayloadFrames | None) -> bool:
        if payload is None:
            return stream.continuations > 0
        n = stream.info.stream
        return bool(len(payload.of(n, 0)) or len(payload.of(n, 1)))

    def _extend_carry(self, stream: _Stream, payload: PayloadFrames | None) -> None:
        carry = stream.carry
        assert carry is not None and stream.client_direction is not None
        if payload is None:
            return
        n = stream.info.stream
        server = payload.of(n, 1 - stream.client_direction)
        client = payload.of(n, stream.client_direction)
        if carry.resolved:
            frames = [f for f in server if f <= stream.last_owed_frame]
        else:
            frames = list(server)
        if any(p is None for p in carry.pending):
            # a request cut mid-message goes on before this file's first request
            until = stream.first_request_frame
            frames.extend(f for f in client if until is None or f < until)
        if frames:
            carry.parts.append((self.unit, sorted(frames)))
        carry.waited = 0 if frames else carry.waited + 1

    def _open_carry(self, stream: _Stream, payload: PayloadFrames | None) -> Carry | None:
        """What this input leaves open on a stream: unanswered requests, and a request or
        response cut mid-message (payload after the last message tshark could read)."""
        if stream.key is None or stream.client_direction is None or stream.h2:
            return None
        pending: list[OpenRequest | None] = list(stream.queue)
        stream.queue.clear()
        n = stream.info.stream
        client = payload.of(n, stream.client_direction) if payload is not None else []
        server = payload.of(n, 1 - stream.client_direction) if payload is not None else []
        cut_request = any(f > stream.last_request_frame for f in client) and (
            stream.first_request_frame is not None or stream.carry is None
        )
        if stream.carry is not None and stream.first_request_frame is None:
            # the client frames here belong to the carried request, not to a new one
            cut_request = False
        if cut_request:
            pending.append(None)
        if not pending:
            if any(f > stream.last_response_frame for f in server) and stream.carry is None:
                self.counters.messages_cut += 1
            return None
        first = stream.open_first_frame
        if first is None:
            first = min((f for f in client if f > stream.last_request_frame), default=0)
        frames = [f for f in client if f >= first]
        cut = [f for f in server if f > stream.last_response_frame]
        frames.extend(cut)
        return Carry(stream.key, pending, [(self.unit, sorted(frames))], response_cut=bool(cut))

    def _give_up(self, carry: Carry) -> None:
        give_up(carry, self.counters, self.emit)

    def _close_h2(self, stream: _Stream) -> None:
        for state in (stream.h2 or {}).values():
            if state.done:
                continue
            if state.response is not None:
                # headers came, the body did not finish: keep what is known, say so
                self._h2_finish(state, "response incomplete in the packet capture")
            else:
                self.counters.requests_without_response += 1
                self._h2_finish(state, None)


class SeamPairing(UnitPairing):
    """Pairs the packets of carried connections, dissected again together.

    Only requests that were open in an earlier file are answered here: the k-th request the
    seam reads on a connection is the k-th open request of its carry; the k-th final response
    answers it.
    """

    def __init__(
        self,
        unit: int,
        name: str,
        counters: PacketCounters,
        plan: Plan,
        emit: Emit,
        carries: Iterable[Carry],
        server_ports: Iterable[int] = (),
    ) -> None:
        self.jobs = {c.key: c for c in carries}
        super().__init__(unit, name, counters, plan, emit, {}, server_ports)
        self._read: dict[TupleKey, int] = {}
        self._answered: dict[TupleKey, int] = {}

    def _stream_seen(self, info: StreamInfo) -> None:
        stream = _Stream(info)
        self.streams[info.stream] = stream
        forward = (info.src, info.sport, info.dst, info.dport)
        backward = (info.dst, info.dport, info.src, info.sport)
        for direction, key in ((0, forward), (1, backward)):
            if key in self.jobs:
                stream.key, stream.client_direction = key, direction
                return

    def _http1(self, msg: Http1Message) -> None:
        stream = self.streams.get(msg.stream)
        if stream is None or stream.key is None:
            return
        carry = self.jobs[stream.key]
        if msg.is_response:
            resp = http1_response(msg, self._method(carry, stream.key))
            if resp is None or resp.interim:
                return
            index = self._answered.get(stream.key, 0)
            self._answered[stream.key] = index + 1
            opened = carry.pending[index] if index < len(carry.pending) else None
            if opened is None:
                return
            carry.pending[index] = _ANSWERED
            self.counters.responses += 1
            self.counters.exchanges_rejoined += 1
            self.emit(opened, resp, None)
            return
        index = self._read.get(stream.key, 0)
        self._read[stream.key] = index + 1
        if index < len(carry.pending) and carry.pending[index] is None:
            client, server = self._addresses(stream)
            req = http1_request(msg, client, server, (self.name, msg.first_frame, msg.frame))
            if req is not None:
                self.counters.requests += 1
                carry.pending[index] = OpenRequest(req, self.plan(req))

    def _method(self, carry: Carry, key: TupleKey) -> str | None:
        index = self._answered.get(key, 0)
        if index < len(carry.pending):
            opened = carry.pending[index]
            if isinstance(opened, OpenRequest) and opened is not _ANSWERED:
                return opened.request.method
        return None

    def _h2(self, frame: H2Frame) -> None:
        return

    def finish(
        self, payload: PayloadFrames | None, last: bool
    ) -> tuple[list[Carry], dict[TupleKey, Carry]]:
        for carry in self.jobs.values():
            for opened in carry.pending:
                if opened is _ANSWERED:
                    continue
                if opened is None:
                    self.counters.messages_cut += 1
                else:
                    self.counters.requests_without_response += 1
                    self.emit(opened, None, None)
        return [], {}


# A marker for a carried request the seam has answered.
_ANSWERED = OpenRequest(
    WireRequest("", "", "", [], b"", 0, 0, ("", 0), ("", 0), False, ("", 0, 0)), None
)


def give_up(carry: Carry, counters: PacketCounters, emit: Emit) -> None:
    """A carry with nothing more to come: its requests are recorded unanswered."""
    for opened in carry.pending[carry.answered :]:
        if opened is None:
            counters.messages_cut += 1
        else:
            counters.requests_without_response += 1
            emit(opened, None, None)


def seam_frames(carries: Iterable[Carry]) -> dict[int, list[int]]:
    """Frame numbers to cut from each input file, in order, for one seam."""
    per_unit: dict[int, set[int]] = {}
    for carry in carries:
        for unit, frames in carry.parts:
            per_unit.setdefault(unit, set()).update(frames)
    return {unit: sorted(frames) for unit, frames in sorted(per_unit.items())}
