"""Requests paired with their responses, across the files a capture was cut into: pure logic.

HTTP/1.1 answers requests in the order they were sent on a connection (RFC 9112, 9.3.2), so
each TCP stream keeps a queue: a final response takes the oldest open request, interim 1xx
responses take nothing. This pairs pipelined requests that tshark's own `http.request_in`
loses (two requests in one frame: tshark 4.0 links only the first). HTTP/2 pairs by stream.

A capture cut into files (a dumpcap ring, `tcpdump -C`) cuts connections. Each file is
dissected alone, in parallel; what a file leaves open on a connection is *carried* to the
next file where the connection goes on:

- a cut between messages (the usual case: a request at the end of file k, its response in
  file k+1): the open requests join the connection's queue in the next file, whose responses
  start cleanly there. Nothing is dissected twice.
- a cut inside a message (a response or request split across files): the next file cannot
  read that connection alone (tshark would take the message's rest for a new one), so it
  leaves the connection out, and the packets from the first open request on, from both files,
  are dissected again together (a *seam*), which pairs them and carries on from there.

HTTP/2 is not carried: its header compression state spans the whole connection, so what a cut
leaves open is recorded without a response, and counted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from shadowtape.capture.packet_counters import PacketCounters
from shadowtape.capture.packet_records import (
    H2_DATA,
    H2_HEADERS,
    H2_RST_STREAM,
    Continuation,
    Gap,
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
# A connection silent for this many files gives up its open requests.
MAX_CARRY_FILES = 4
CAPTURE_GAP = "packets lost in the capture (kernel or interface drops)"


@dataclass(slots=True)
class OpenRequest:
    """A request read but not yet answered; `plan` is what the recorder decided for it."""

    request: WireRequest
    plan: object
    unit: int
    first_frame: int
    # Requests that began in the same frame before this one (pipelining): a seam starting at
    # this frame reads them again and skips them.
    ordinal: int = 0


@dataclass(slots=True)
class StreamFrames:
    """Payload frame numbers of one connection in one input, per side."""

    client: list[int] = field(default_factory=list)
    server: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Carry:
    """What an input left open on one connection, for the inputs after it.

    `frames` (input index -> frames) are the packets to dissect again when the cut fell inside
    a message (`sticky`): from the first open request on, client side; from the start of the
    unfinished response on, server side.
    """

    key: TupleKey
    pending: list[OpenRequest]
    frames: dict[int, StreamFrames]
    sticky: bool
    # The server frames start with the last answered response (its last segment may also
    # hold the start of the next one): the seam skips it.
    skip_responses: int = 0
    waited: int = 0


Plan = Callable[[WireRequest], object]
Emit = Callable[[OpenRequest, WireResponse | None, str | None], None]


@dataclass(slots=True)
class _H2Stream:
    request: WireRequest
    open: OpenRequest
    client_direction: int
    request_body: list[bytes] = field(default_factory=list)
    response: WireResponse | None = None
    response_body: list[bytes] = field(default_factory=list)
    done: bool = False


@dataclass(slots=True)
class _Stream:
    info: StreamInfo
    key: TupleKey | None = None
    client_direction: int | None = None
    queue: deque[OpenRequest] = field(default_factory=deque)
    messages: int = 0
    continuations: int = 0
    h2: dict[int, _H2Stream] = field(default_factory=dict)
    # A sticky carry owns this connection here: its records are the seam's to read.
    ignored: Carry | None = None
    # Frames of earlier inputs still holding this connection's open requests.
    carried_frames: dict[int, StreamFrames] = field(default_factory=dict)
    carried_skip: int = 0
    # Requests and responses whose packets the input shows again (a seam) before new ones.
    replayed: int = 0
    skipped_responses: int = 0
    last_request_frame: int = 0
    last_request_first: int = 0
    ordinal: int = 0
    last_response_frame: int = 0
    last_response_first: int = 0
    # after a capture gap: responses before the next request answer nothing we know
    resync: bool = False


class UnitPairing:
    """Pairs the records of one input file in order.

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
        self.carries = dict(carries or {})
        self.server_ports = frozenset(server_ports)
        self.streams: dict[int, _Stream] = {}

    # --- numbering (a seam maps its frames back to the inputs they came from) --------------

    def locate(self, frame: int) -> tuple[int, int]:
        return self.unit, frame

    def origin_name(self, unit: int) -> str:
        return self.name

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
                stream = self.streams.get(record.stream)
                if stream is not None and stream.ignored is None:
                    stream.continuations += 1
            elif isinstance(record, Gap):
                self._gap(record)

    def _gap(self, gap: Gap) -> None:
        """Packets were lost: which request or response went with them is unknowable, so the
        open requests end unanswered and responses wait for the next request (an answer
        paired with the wrong request would be worse than none)."""
        stream = self.streams.get(gap.stream)
        if stream is None or stream.ignored is not None:
            return
        while stream.queue:
            self.counters.requests_without_response += 1
            self.emit(stream.queue.popleft(), None, CAPTURE_GAP)
        stream.resync = True

    def _stream_seen(self, info: StreamInfo) -> None:
        stream = _Stream(info)
        self.streams[info.stream] = stream
        forward = (info.src, info.sport, info.dst, info.dport)
        backward = (info.dst, info.dport, info.src, info.sport)
        for direction, key in ((0, forward), (1, backward)):
            carry = self._carried(key)
            if carry is not None:
                stream.key, stream.client_direction = key, direction
                self._take_carry(stream, carry)
                return
        if info.dport in self.server_ports and info.sport not in self.server_ports:
            stream.key, stream.client_direction = forward, 0
        elif info.sport in self.server_ports and info.dport not in self.server_ports:
            stream.key, stream.client_direction = backward, 1

    def _carried(self, key: TupleKey) -> Carry | None:
        return self.carries.get(key)

    def _take_carry(self, stream: _Stream, carry: Carry) -> None:
        if carry.sticky:
            stream.ignored = carry
            return
        # A clean cut: the open requests are first in line for this input's responses.
        del self.carries[carry.key]
        stream.queue.extend(carry.pending)
        stream.carried_frames = carry.frames
        stream.carried_skip = carry.skip_responses

    def _sides(self, stream: _Stream, sender_direction: int, is_request: bool) -> None:
        if stream.key is not None:
            return
        client_direction = sender_direction if is_request else 1 - sender_direction
        client, server = stream.info.ends(client_direction)
        stream.key = (client[0], client[1], server[0], server[1])
        stream.client_direction = client_direction

    def _addresses(self, stream: _Stream) -> tuple[Address, Address]:
        assert stream.key is not None
        return (stream.key[0], stream.key[1]), (stream.key[2], stream.key[3])

    def _open(self, stream: _Stream, req: WireRequest, first_frame: int, ordinal: int) -> None:
        unit, frame = self.locate(first_frame)
        self.counters.requests += 1
        stream.queue.append(OpenRequest(req, self.plan(req), unit, frame, ordinal))

    # --- HTTP/1 ----------------------------------------------------------------------------

    def _http1(self, msg: Http1Message) -> None:
        stream = self.streams.get(msg.stream)
        if stream is None or stream.ignored is not None:
            return
        stream.messages += 1
        if msg.is_response:
            self._sides(stream, msg.direction, False)
            self._response(stream, msg)
            return
        self._sides(stream, msg.direction, True)
        stream.last_request_frame = msg.frame
        stream.resync = False
        same_frame = msg.first_frame == stream.last_request_first
        stream.ordinal = stream.ordinal + 1 if same_frame else 0
        stream.last_request_first = msg.first_frame
        if stream.replayed:
            # a carried request read again: it is already in the queue
            stream.replayed -= 1
            return
        client, server = self._addresses(stream)
        unit, first = self.locate(msg.first_frame)
        req = http1_request(msg, client, server, (self.origin_name(unit), first, msg.frame))
        if req is None:
            stream.continuations += 1
            return
        self._open(stream, req, msg.first_frame, stream.ordinal)

    def _response(self, stream: _Stream, msg: Http1Message) -> None:
        method = stream.queue[0].request.method if stream.queue else None
        resp = http1_response(msg, method)
        if resp is None:
            stream.continuations += 1
            return
        if resp.interim:
            return
        stream.last_response_frame = msg.frame
        stream.last_response_first = msg.first_frame
        if stream.skipped_responses:
            stream.skipped_responses -= 1
            return
        self.counters.responses += 1
        if not stream.queue or stream.resync:
            self.counters.responses_without_request += 1
            return
        opened = stream.queue.popleft()
        if opened.unit != self.locate(msg.frame)[0]:
            self.counters.exchanges_rejoined += 1
        self.emit(opened, resp, None)

    # --- HTTP/2 ----------------------------------------------------------------------------

    def _h2(self, frame: H2Frame) -> None:
        stream = self.streams.get(frame.stream)
        if stream is None or stream.ignored is not None or frame.sid == 0:
            return
        stream.messages += 1
        state = stream.h2.get(frame.sid)
        if frame.type == H2_HEADERS:
            if not frame.headers_decoded:
                self.counters.h2_headers_undecodable += 1
                return
            block = h2_headers(frame)
            p = block.pseudo
            if ":method" in p:
                self._sides(stream, frame.direction, True)
                client, server = self._addresses(stream)
                unit, first = self.locate(frame.frame)
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
                    origin=(self.origin_name(unit), first, frame.sid),
                    scheme=p.get(":scheme"),
                    authority=p.get(":authority"),
                )
                self.counters.requests += 1
                opened = OpenRequest(req, self.plan(req), unit, first)
                state = _H2Stream(req, opened, frame.direction)
                stream.h2[frame.sid] = state
            elif ":status" in p:
                if state is None:
                    self.counters.responses_without_request += 1
                    return
                status = int(p[":status"]) if p[":status"].isdigit() else 0
                if 100 <= status < 200 or state.response is not None:
                    return  # interim responses; trailers
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
        elif frame.type == H2_DATA and state is not None:
            if frame.direction == state.client_direction:
                state.request_body.append(frame.data)
            else:
                state.response_body.append(frame.data)
        elif frame.type == H2_RST_STREAM and state is not None and not state.done:
            self._h2_finish(state, f"HTTP/2 stream reset (error code {frame.error or 0})")
            return
        if state is None or state.done or not frame.end_stream:
            return
        if frame.direction == state.client_direction:
            state.request.ended_us = frame.at_us
        elif state.response is not None:
            state.response.ended_us = frame.at_us
            self._h2_finish(state, None)

    def _h2_finish(self, state: _H2Stream, error: str | None) -> None:
        state.done = True
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
        """Close this input: returns the carries to dissect again now (in a seam) and those
        left open for the next input."""
        ready: list[Carry] = []
        still_open: dict[TupleKey, Carry] = {}
        here = {s.ignored.key for s in self.streams.values() if s.ignored is not None}
        for stream in self.streams.values():
            if stream.ignored is not None:
                self._extend(stream.ignored, stream, payload)
            self._close_h2(stream)
            if (
                stream.ignored is None
                and stream.messages == 0
                and not stream.carried_frames
                and self._has_payload(stream, payload)
            ):
                self.counters.streams_unreassembled += 1
        for key, carry in self.carries.items():
            if key in here:
                ready.append(carry)
                continue
            carry.waited += 1
            if last or carry.waited >= MAX_CARRY_FILES:
                self._settle(carry, ready)
            else:
                still_open[key] = carry
        for stream in self.streams.values():
            if stream.ignored is not None:
                continue
            carry = self._leftover(stream, payload)
            if carry is None:
                continue
            if last or payload is None or carry.key in still_open:
                give_up(carry, self.counters, self.emit)
            else:
                still_open[carry.key] = carry
        return ready, still_open

    def _settle(self, carry: Carry, ready: list[Carry]) -> None:
        """A carry whose connection did not come back: dissect what it has, or give up."""
        if carry.sticky and carry.frames:
            ready.append(carry)
        else:
            give_up(carry, self.counters, self.emit)

    def _frames(self, stream: _Stream, payload: PayloadFrames | None) -> StreamFrames:
        if payload is None or stream.client_direction is None:
            return StreamFrames()
        n = stream.info.stream
        client = payload.of(n, stream.client_direction)
        server = payload.of(n, 1 - stream.client_direction)
        return StreamFrames(list(client), list(server))

    def _has_payload(self, stream: _Stream, payload: PayloadFrames | None) -> bool:
        if payload is None:
            return stream.continuations > 0
        n = stream.info.stream
        return bool(len(payload.of(n, 0)) or len(payload.of(n, 1)))

    def _extend(self, carry: Carry, stream: _Stream, payload: PayloadFrames | None) -> None:
        frames = self._frames(stream, payload)
        if frames.client or frames.server:
            part = carry.frames.setdefault(self.unit, StreamFrames())
            part.client.extend(frames.client)
            part.server.extend(frames.server)

    def _leftover(self, stream: _Stream, payload: PayloadFrames | None) -> Carry | None:
        """What this input leaves open on a connection: unanswered requests, and a request
        or response cut inside (payload after the last message tshark read)."""
        if stream.key is None or stream.h2:
            return None
        pending = list(stream.queue)
        stream.queue.clear()
        frames = self._frames(stream, payload)
        cut_request = any(f > stream.last_request_frame for f in frames.client)
        cut_response = any(f > stream.last_response_frame for f in frames.server)
        if not pending and not cut_request:
            if cut_response:
                self.counters.messages_cut += 1
            return None
        sticky = cut_request or cut_response or any(p.request.method == "HEAD" for p in pending)
        skip = 1 if stream.last_response_frame else stream.carried_skip
        carry_frames = self._carry_frames(stream, pending, frames)
        return Carry(stream.key, pending, carry_frames, sticky, skip_responses=skip)

    def _carry_frames(
        self, stream: _Stream, pending: Sequence[OpenRequest], here: StreamFrames
    ) -> dict[int, StreamFrames]:
        """Client frames from the first open request on; server frames from the last
        complete response on (in earlier inputs too, if none completed here)."""
        out: dict[int, StreamFrames] = {}
        start = (pending[0].unit, pending[0].first_frame) if pending else None
        for unit, old in sorted(stream.carried_frames.items()):
            part = StreamFrames()
            if start is not None and unit >= start[0]:
                part.client = [f for f in old.client if unit > start[0] or f >= start[1]]
            if stream.last_response_frame == 0:
                part.server = list(old.server)
            if part.client or part.server:
                out[unit] = part
        if start is None:
            client = [f for f in here.client if f > stream.last_request_frame]
        elif start[0] == self.unit:
            client = [f for f in here.client if f >= start[1]]
        else:
            client = here.client
        server = [f for f in here.server if f >= stream.last_response_first]
        if client or server:
            into = out.setdefault(self.unit, StreamFrames())
            into.client.extend(client)
            into.server.extend(server)
        return out

    def _close_h2(self, stream: _Stream) -> None:
        for state in stream.h2.values():
            if state.done:
                continue
            if state.response is not None:
                # headers came, the body did not finish: keep what is known, say so
                self.counters.requests_without_response += 1
                self._h2_finish(state, "response incomplete in the packet capture")
            else:
                self.counters.requests_without_response += 1
                self._h2_finish(state, None)


class SeamPairing(UnitPairing):
    """Pairs connections whose cut fell inside a message, from their packets cut out of
    several inputs and dissected together.

    The seam's packets start at the first open request of each carry, so the first requests
    it reads are the carry's (already planned); the responses answer them in order; what the
    seam reads after them is new, and what it leaves open is carried on, its frames mapped
    back to the inputs they came from.
    """

    def __init__(
        self,
        unit: int,
        names: Sequence[str],
        counters: PacketCounters,
        plan: Plan,
        emit: Emit,
        carries: Iterable[Carry],
        frame_map: Sequence[tuple[int, int]],
        server_ports: Iterable[int] = (),
    ) -> None:
        self.jobs = {c.key: c for c in carries}
        self.names = names
        self.frame_map = frame_map
        super().__init__(unit, names[unit], counters, plan, emit, {}, server_ports)

    def locate(self, frame: int) -> tuple[int, int]:
        return self.frame_map[frame - 1] if 0 < frame <= len(self.frame_map) else (self.unit, 0)

    def origin_name(self, unit: int) -> str:
        return self.names[unit]

    def _carried(self, key: TupleKey) -> Carry | None:
        return self.jobs.pop(key, None)

    def _take_carry(self, stream: _Stream, carry: Carry) -> None:
        stream.queue.extend(carry.pending)
        skip = carry.pending[0].ordinal if carry.pending else 0
        stream.replayed = skip + len(carry.pending)
        stream.skipped_responses = carry.skip_responses

    def _carry_frames(
        self, stream: _Stream, pending: Sequence[OpenRequest], here: StreamFrames
    ) -> dict[int, StreamFrames]:
        start = pending[0] if pending else None
        out: dict[int, StreamFrames] = {}
        for frame in here.client:
            unit, original = self.locate(frame)
            if start is None:
                if frame <= stream.last_request_frame:
                    continue
            elif (unit, original) < (start.unit, start.first_frame):
                continue
            out.setdefault(unit, StreamFrames()).client.append(original)
        for frame in here.server:
            if frame >= stream.last_response_first:
                unit, original = self.locate(frame)
                out.setdefault(unit, StreamFrames()).server.append(original)
        return out

    def finish(
        self, payload: PayloadFrames | None, last: bool
    ) -> tuple[list[Carry], dict[TupleKey, Carry]]:
        # carries whose packets the seam did not even show a stream for
        for carry in self.jobs.values():
            give_up(carry, self.counters, self.emit)
        self.jobs = {}
        return super().finish(payload, last)


def give_up(carry: Carry, counters: PacketCounters, emit: Emit) -> None:
    """A carry with nothing more to come: its requests are recorded unanswered, and a
    message cut inside is counted."""
    if carry.sticky:
        counters.messages_cut += 1
    for opened in carry.pending:
        counters.requests_without_response += 1
        emit(opened, None, None)


def seam_cuts(carries: Iterable[Carry]) -> tuple[dict[int, list[int]], list[tuple[int, int]]]:
    """Frame numbers to cut from each input, in order, for one seam; and for each frame of
    the seam, where it came from (input, frame)."""
    per_unit: dict[int, set[int]] = {}
    for carry in carries:
        for unit, frames in carry.frames.items():
            per_unit.setdefault(unit, set()).update(frames.client, frames.server)
    cuts = {unit: sorted(frames) for unit, frames in sorted(per_unit.items()) if frames}
    frame_map = [(unit, f) for unit, frames in cuts.items() for f in frames]
    return cuts, frame_map
