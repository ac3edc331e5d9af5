"""The output of `http_messages.lua` (tshark's tap) read back as HTTP messages: pure parsing.

One pass over the stream, one object per HTTP/1 message or HTTP/2 frame, in the order tshark
dissected them; nothing is kept but the per-stream payload frame numbers a caller asks for
(to cut the packets of an exchange that a file boundary split, see `packet_pairing`).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from shadowtape.errors import InputError

# Item codes whose value is a blob of that many bytes following the line (see the .lua file).
_BLOB_CODES = frozenset(b"XYBKZnw")

H2_DATA = 0
H2_HEADERS = 1
H2_RST_STREAM = 3
H2_PUSH_PROMISE = 5
H2_CONTINUATION = 9
H2_FLAG_END_STREAM = 0x1
H2_FLAG_PADDED = 0x8


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """A TCP stream as tshark numbered it in one input; `src` is the sender of its first frame."""

    stream: int
    src: str
    sport: int
    dst: str
    dport: int

    def ends(self, direction: int) -> tuple[tuple[str, int], tuple[str, int]]:
        """(sender, receiver) of a frame going in `direction` (0: as the first frame)."""
        a, b = (self.src, self.sport), (self.dst, self.dport)
        return (a, b) if direction == 0 else (b, a)


@dataclass(slots=True)
class Http1Message:
    """One HTTP/1.x request or response: its header block as on the wire, and its body as
    tshark framed it (`body`: de-chunked; `chunks`: the chunks of a content-coded chunked
    body; `rest`: the bytes after the header block when tshark gave neither)."""

    frame: int
    first_frame: int
    stream: int
    direction: int
    tls: bool
    first_us: int
    last_us: int
    head: bytes
    body: bytes | None = None
    chunks: list[bytes] | None = None
    rest: bytes | None = None

    @property
    def is_response(self) -> bool:
        return self.head.startswith(b"HTTP/")


@dataclass(slots=True)
class H2Frame:
    frame: int
    stream: int
    direction: int
    tls: bool
    at_us: int
    type: int = -1
    sid: int = 0
    flags: int = 0
    length: int = 0
    header_count: int | None = None
    names: list[bytes] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    data: bytes = b""
    error: int | None = None

    @property
    def end_stream(self) -> bool:
        return bool(self.flags & H2_FLAG_END_STREAM) and self.type in (H2_DATA, H2_HEADERS)

    @property
    def headers_decoded(self) -> bool:
        """A header block tshark could decompress: a count, and that many names and values."""
        return self.header_count is not None and len(self.names) == self.header_count == len(
            self.values
        )


@dataclass(slots=True)
class Continuation:
    """Payload tshark saw as HTTP but could not read as a message start (the rest of a
    message whose beginning is not in this input)."""

    frame: int
    stream: int
    direction: int


@dataclass(frozen=True, slots=True)
class Gap:
    """Packets of this stream, in this direction, before this frame were not captured."""

    frame: int
    stream: int
    direction: int


@dataclass(frozen=True, slots=True)
class End:
    """tshark reached the end of its input, having read this many TCP frames."""

    frames: int


Record = StreamInfo | Http1Message | H2Frame | Continuation | Gap | End


@dataclass(slots=True)
class PayloadFrames:
    """Frame numbers carrying TCP payload, per stream and direction, when a caller needs to
    cut packets out of the input again."""

    by_stream: dict[tuple[int, int], array] = field(default_factory=dict)

    def add(self, stream: int, direction: int, frame: int) -> None:
        frames = self.by_stream.get((stream, direction))
        if frames is None:
            frames = self.by_stream[(stream, direction)] = array("I")
        if not frames or frames[-1] != frame:
            frames.append(frame)

    def of(self, stream: int, direction: int) -> array:
        return self.by_stream.get((stream, direction), array("I"))


def _h2_header(h2: H2Frame, raw: bytes) -> None:
    """Type, flags, stream and payload from the frame's own bytes (RFC 9113, 4.1); a DATA
    frame's data without its padding, as sent (content coding not undone)."""
    if len(raw) < 9:  # the connection preface, not a frame
        return
    length = int.from_bytes(raw[:3], "big")
    h2.type, h2.flags = raw[3], raw[4]
    h2.sid = int.from_bytes(raw[5:9], "big") & 0x7FFFFFFF
    h2.length = length
    if h2.type == H2_DATA:
        payload = raw[9 : 9 + length]
        if h2.flags & H2_FLAG_PADDED and payload:
            payload = payload[1 : len(payload) - payload[0]]
        h2.data = payload
    elif h2.type == H2_RST_STREAM and length >= 4:
        h2.error = int.from_bytes(raw[9:13], "big")


class RecordFormatError(InputError):
    """tshark's tap wrote something this reader does not understand: a version mismatch."""


def iter_records(
    stream: BinaryIO, name: str, payload: PayloadFrames | None = None
) -> Iterator[Record]:
    readline = stream.readline
    read = stream.read
    while True:
        line = readline()
        if not line:
            return
        kind = line[:1]
        if kind == b"P":
            if payload is not None:
                _, frame, tcp, direction = line.split()
                payload.add(int(tcp), int(direction), int(frame))
            continue
        if kind == b"F":
            yield from _frame(line, read, name, payload)
        elif kind == b"E":
            yield End(int(line.split()[1]))
        elif kind == b"S":
            _, tcp, src, sport, dst, dport = line.split()
            yield StreamInfo(int(tcp), src.decode(), int(sport), dst.decode(), int(dport))
        elif line.strip():
            raise RecordFormatError(f"{name}: unexpected line from tshark's tap: {line[:60]!r}")


def _frame(line: bytes, read, name: str, payload: PayloadFrames | None) -> Iterator[Record]:  # noqa: ANN001
    parts = line.split()
    frame, tcp, direction = int(parts[1]), int(parts[2]), int(parts[3])
    tls = parts[4] == b"1"
    at_us, first_frame, first_us = int(parts[5]), int(parts[6]), int(parts[7])
    items = parts[8:]
    if payload is not None:
        payload.add(tcp, direction, frame)
    total = 0
    for item in items:
        if item[0] in _BLOB_CODES and len(item) > 1:
            total += int(item[1:])
    data = read(total) if total else b""
    if len(data) != total:
        raise RecordFormatError(f"{name}: tshark's output ended inside frame {frame}")
    pos = 0
    msg: Http1Message | None = None
    h2: H2Frame | None = None
    # The first message of a frame may have been reassembled from earlier segments; the
    # others in the same frame started in it.
    start_frame, start_us = first_frame, first_us
    for item in items:
        code = item[0]
        if code == 76:  # L: a capture gap before this frame
            yield Gap(frame, tcp, direction)
            continue
        if code == 88:  # X: an HTTP/1 message (or continuation) starts
            if msg is not None:
                yield msg
                msg = None
            if h2 is not None:
                yield h2
                h2 = None
            size = int(item[1:])
            if size == 0:
                yield Continuation(frame, tcp, direction)
                continue
            msg = Http1Message(
                frame, start_frame, tcp, direction, tls, start_us, at_us, data[pos : pos + size]
            )
            pos += size
            start_frame, start_us = frame, at_us
            continue
        if code == 89:  # Y: an HTTP/2 frame starts
            if msg is not None:
                yield msg
                msg = None
            if h2 is not None and h2.type >= 0:
                yield h2
            size = int(item[1:])
            h2 = H2Frame(frame, tcp, direction, tls, start_us)
            _h2_header(h2, data[pos : pos + size])
            pos += size
            start_us = at_us
            continue
        if code in _BLOB_CODES:
            size = int(item[1:])
            blob = data[pos : pos + size]
            pos += size
            if msg is not None:
                if code == 66:  # B
                    msg.body = blob
                    msg.chunks = None
                elif code == 75:  # K
                    if msg.body is None:
                        msg.chunks = [*(msg.chunks or ()), blob]
                elif code == 90:  # Z
                    msg.rest = blob
            elif h2 is not None:
                if code == 110:  # n
                    h2.names.append(blob)
                elif code == 119:  # w
                    h2.values.append(blob)
            continue
        if h2 is None:
            continue
        if code == 99:  # c
            h2.header_count = int(item[1:])
    if msg is not None:
        yield msg
    if h2 is not None and h2.type >= 0:
        yield h2
    if pos != total:
        raise RecordFormatError(f"{name}: frame {frame} of tshark's output did not add up")
