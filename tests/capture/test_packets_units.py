"""The packet importer's pure parts: tshark's tap output read back, HTTP/1 header blocks,
host and port from what a client sent, FIFO pairing, carries across files, pcapng drops."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest

from shadowtape.capture.packet_counters import PacketCaptureCounters, PacketCounters
from shadowtape.capture.packet_exchange import request_url_parts, split_authority
from shadowtape.capture.packet_pairing import OpenRequest, UnitPairing
from shadowtape.capture.packet_records import (
    Continuation,
    End,
    H2Frame,
    Http1Message,
    PayloadFrames,
    RecordFormatError,
    StreamInfo,
    iter_records,
)
from shadowtape.capture.packet_wire import (
    WireRequest,
    http1_request,
    http1_response,
    message_body,
    parse_head,
)
from shadowtape.capture.pcapng_stats import interface_drops
from shadowtape.capture.tshark import frame_selections

CLIENT, SERVER = ("10.0.0.1", 50000), ("10.0.0.2", 8080)


def _frame_line(frame: int, stream: int, direction: int, items: list[tuple[str, bytes]]) -> bytes:
    tokens = " ".join(f"{code}{len(blob)}" for code, blob in items)
    head = f"F {frame} {stream} {direction} 0 {1000 + frame} {frame} {1000 + frame} {tokens}\n"
    return head.encode() + b"".join(blob for _, blob in items)


def test_tap_output_is_read_back_in_order() -> None:
    h2 = bytes([0, 0, 3, 0, 0x9, 0, 0, 0, 5]) + b"\x01ab"  # DATA, END_STREAM|PADDED, 1 pad
    data = (
        b"S 0 10.0.0.1 50000 10.0.0.2 8080\n"
        + _frame_line(
            3,
            0,
            0,
            [("X", b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"), ("X", b"GET /b HTTP/1.1\r\n\r\n")],
        )  # fmt: skip
        + b"P 4 0 1\n"
        + _frame_line(5, 0, 1, [("X", b"HTTP/1.1 200 OK\r\n\r\n"), ("B", b"\x00\xff")])
        + _frame_line(6, 0, 1, [("X", b"")])
        + _frame_line(7, 0, 1, [("Y", h2)])
        + b"E 7\n"
    )
    payload = PayloadFrames()
    records = list(iter_records(io.BytesIO(data), "t", payload))
    kinds = [type(r).__name__ for r in records]
    assert kinds == [
        "StreamInfo", "Http1Message", "Http1Message", "Http1Message", "Continuation",
        "H2Frame", "End",
    ]  # fmt: skip
    first, second = records[1], records[2]
    assert isinstance(first, Http1Message) and first.first_frame == 3
    assert isinstance(second, Http1Message) and second.head == b"GET /b HTTP/1.1\r\n\r\n"
    assert isinstance(records[3], Http1Message) and records[3].body == b"\x00\xff"
    frame = records[5]
    assert isinstance(frame, H2Frame) and frame.sid == 5 and frame.data == b"a"
    assert frame.end_stream
    assert list(payload.of(0, 0)) == [3] and list(payload.of(0, 1)) == [4, 5, 6, 7]
    assert records[6] == End(7)


def test_tap_output_that_does_not_add_up_is_an_error() -> None:
    with pytest.raises(RecordFormatError, match="ended inside frame 3"):
        list(iter_records(io.BytesIO(b"F 3 0 0 0 1 3 1 X50\nGET"), "t"))
    with pytest.raises(RecordFormatError, match="unexpected line"):
        list(iter_records(io.BytesIO(b"Q what\n"), "t"))


def test_header_blocks_keep_order_duplicates_and_fold_like_mitmproxy() -> None:
    head = parse_head(
        b"GET /x HTTP/1.1\r\nA: 1\r\nb:2  \r\nA:  3\r\nLong: one\r\n two\r\nBare-Lf: y\n\r\n"
    )
    assert head is not None and head.start == [b"GET", b"/x", b"HTTP/1.1"]
    assert head.headers == [
        (b"A", b"1"), (b"b", b"2"), (b"A", b"3"), (b"Long", b"one\r\n two"), (b"Bare-Lf", b"y"),
    ]  # fmt: skip
    assert parse_head(b"garbage\r\n\r\n") is None


def _msg(head: bytes, **kw: object) -> Http1Message:
    return Http1Message(1, 1, 0, 0, False, 10, 20, head, **kw)  # type: ignore[arg-type]


def test_bodies_come_from_what_tshark_framed() -> None:
    head = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n")
    assert head is not None
    assert message_body(_msg(b"", rest=b"abcdef"), head.headers, False) == b"abc"
    assert message_body(_msg(b"", chunks=[b"a", b"b"]), [], False) == b"ab"
    assert message_body(_msg(b"", body=b"zz", rest=b"x"), head.headers, False) == b"zz"
    # a request without a length has no body: what follows is the next request
    assert message_body(_msg(b"", rest=b"GET /next"), [], True) == b""
    head_resp = http1_response(
        _msg(b"HTTP/1.1 200 Fine Thanks\r\nContent-Length: 9\r\n\r\n", rest=b"x" * 9), "HEAD"
    )
    assert head_resp is not None and head_resp.body == b"" and head_resp.reason == "Fine Thanks"
    interim = http1_response(_msg(b"HTTP/1.1 100 Continue\r\n\r\n"), "POST")
    assert interim is not None and interim.interim
    no_content = http1_response(_msg(b"HTTP/1.1 204 No Content\r\n\r\n", rest=b"HTTP/1.1"), "GET")
    assert no_content is not None and no_content.body == b""


def _req(head: bytes, tls: bool = False) -> WireRequest:
    req = http1_request(_msg(head), CLIENT, SERVER, ("f", 1, 1))
    assert req is not None
    req.tls = tls
    return req


@pytest.mark.parametrize(
    ("head", "expect"),
    [
        (b"GET /a?q=1 HTTP/1.1\r\nHost: api.example\r\n\r\n", ("http", "api.example", 8080)),
        (b"GET / HTTP/1.1\r\nHost: api.example:9000\r\n\r\n", ("http", "api.example", 9000)),
        (b"GET / HTTP/1.1\r\nHost: [::1]:81\r\n\r\n", ("http", "::1", 81)),
        (b"GET / HTTP/1.0\r\n\r\n", ("http", "10.0.0.2", 8080)),
        (b"GET http://other:7/p?x HTTP/1.1\r\nHost: ignored\r\n\r\n", ("http", "other", 7)),
    ],
)
def test_host_and_port_are_what_the_client_addressed(head: bytes, expect: tuple) -> None:
    scheme, host, port, target = request_url_parts(_req(head))
    assert (scheme, host, port) == expect
    assert target.startswith("/")


def test_authority_forms() -> None:
    assert split_authority("h") == ("h", None)
    assert split_authority("h:1") == ("h", 1)
    assert split_authority("[2001:db8::1]") == ("2001:db8::1", None)
    assert split_authority("::1") == ("::1", None)
    assert request_url_parts(_req(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", tls=True))[0] == "https"


class _Recorder:
    def __init__(self) -> None:
        self.exchanges: list[tuple[str, int | None]] = []

    def plan(self, req: WireRequest) -> object:
        return req.target

    def emit(self, opened: OpenRequest, resp, error) -> None:  # noqa: ANN001
        self.exchanges.append((opened.request.target, resp.status if resp else None))


def _records(*messages: tuple[int, int, bytes]) -> list:
    out: list = [StreamInfo(0, *CLIENT, *SERVER)]
    for frame, direction, head in messages:
        out.append(Http1Message(frame, frame, 0, direction, False, frame, frame, head))
    return out


def test_responses_answer_requests_in_order_interim_ones_answer_nothing() -> None:
    rec, counters = _Recorder(), PacketCounters()
    pairing = UnitPairing(0, "f", counters, rec.plan, rec.emit)
    pairing.feed(
        _records(
            (1, 0, b"GET /1 HTTP/1.1\r\n\r\n"),
            (1, 0, b"GET /2 HTTP/1.1\r\n\r\n"),
            (2, 1, b"HTTP/1.1 100 Continue\r\n\r\n"),
            (3, 1, b"HTTP/1.1 200 OK\r\n\r\n"),
            (4, 1, b"HTTP/1.1 404 Not Found\r\n\r\n"),
            (5, 1, b"HTTP/1.1 500 Oops\r\n\r\n"),
        )
    )
    pairing.finish(None, True)
    assert rec.exchanges == [("/1", 200), ("/2", 404)]
    assert counters.requests == 2 and counters.responses == 3
    assert counters.responses_without_request == 1


def test_a_clean_cut_carries_open_requests_to_the_next_file() -> None:
    rec, counters = _Recorder(), PacketCounters()
    first = UnitPairing(0, "a", counters, rec.plan, rec.emit)
    first.feed(_records((1, 0, b"GET /1 HTTP/1.1\r\n\r\n")))
    payload = PayloadFrames()
    payload.add(0, 0, 1)
    ready, carries = first.finish(payload, False)
    assert not ready and len(carries) == 1
    (carry,) = carries.values()
    assert not carry.sticky and [p.request.target for p in carry.pending] == ["/1"]
    second = UnitPairing(1, "b", counters, rec.plan, rec.emit, carries=carries)
    second.feed(_records((1, 1, b"HTTP/1.1 200 OK\r\n\r\n"), (2, 0, b"GET /2 HTTP/1.1\r\n\r\n")))
    second.feed([Http1Message(3, 3, 0, 1, False, 3, 3, b"HTTP/1.1 201 Created\r\n\r\n")])
    ready, carries = second.finish(None, True)
    assert rec.exchanges == [("/1", 200), ("/2", 201)]
    assert counters.exchanges_rejoined == 1 and not carries


def test_a_cut_inside_a_response_leaves_the_connection_to_a_seam() -> None:
    rec, counters = _Recorder(), PacketCounters()
    first = UnitPairing(0, "a", counters, rec.plan, rec.emit)
    first.feed(_records((1, 0, b"GET /1 HTTP/1.1\r\n\r\n")))
    payload = PayloadFrames()
    payload.add(0, 0, 1)
    payload.add(0, 1, 2)  # the response began, tshark could not finish it
    _, carries = first.finish(payload, False)
    (carry,) = carries.values()
    assert carry.sticky
    assert carry.frames[0].client == [1] and carry.frames[0].server == [2]
    second = UnitPairing(1, "b", counters, rec.plan, rec.emit, carries=carries)
    records = [
        StreamInfo(0, *SERVER, *CLIENT),
        Continuation(1, 0, 0),
        Http1Message(2, 2, 0, 0, False, 2, 2, b"HTTP/1.1 200 OK\r\n\r\n"),
    ]
    second.feed(records)
    payload = PayloadFrames()
    payload.add(0, 0, 1)
    payload.add(0, 0, 2)
    ready, still_open = second.finish(payload, False)
    # the next file does not pair that connection itself: the seam does, with these frames
    assert rec.exchanges == [] and ready == [carry] and not still_open
    assert carry.frames[1].server == [1, 2]


def test_frame_selections_are_ranges() -> None:
    assert frame_selections([1, 2, 3, 7, 9, 10]) == ["1-3", "7", "9-10"]
    assert frame_selections([]) == []


def _block(kind: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", kind, length) + body + struct.pack("<I", length)


def test_interface_drops_are_read_from_the_statistics_block(tmp_path: Path) -> None:
    shb = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb = _block(1, struct.pack("<HHI", 1, 0, 65535))
    options = struct.pack("<HHQ", 4, 8, 1000) + struct.pack("<HHQ", 5, 8, 17) + b"\x00" * 4
    isb = _block(5, struct.pack("<III", 0, 0, 0) + options)
    path = tmp_path / "c.pcapng"
    path.write_bytes(shb + idb + isb)
    assert interface_drops(path) == 17
    path.write_bytes(shb + idb)
    assert interface_drops(path) is None
    pcap = tmp_path / "c.pcap"
    pcap.write_bytes(b"\xd4\xc3\xb2\xa1" + b"\x00" * 20)
    assert interface_drops(pcap) is None


def test_packet_counters_go_to_metadata_and_back() -> None:
    packets = PacketCounters(requests=5, responses=4, responses_without_request=1)
    counters = PacketCaptureCounters(written=5, packet=packets)
    meta = counters.as_metadata()
    assert meta["shadowtape.capture.written"] == "5"
    assert meta["shadowtape.packets.exchanges_seen"] == "6"
    assert PacketCounters.from_metadata(meta) == packets


def test_a_backlog_over_its_limit_gives_up_the_oldest_files_and_counts_them(
    tmp_path: Path,
) -> None:
    from shadowtape.capture.offpath import _limit_backlog
    from shadowtape.capture.packets import DissectionPipeline
    from shadowtape.capture.tshark import DissectOptions

    counters = PacketCounters()
    pipeline = DissectionPipeline(DissectOptions(), None, counters, workers=1)  # type: ignore[arg-type]
    files = []
    for i in range(4):
        f = tmp_path / f"ring_{i}.pcapng"
        f.write_bytes(b"\x00" * 1000)
        files.append(f)
        pipeline.add(f)
    _limit_backlog(pipeline, 2500)
    assert counters.ring_files_dropped == 2
    assert [f.exists() for f in files] == [False, False, True, True]
    assert pipeline.backlog() == files[2:]


def test_a_capture_gap_ends_open_requests_rather_than_pairing_them_wrongly() -> None:
    from shadowtape.capture.packet_records import Gap

    rec, counters = _Recorder(), PacketCounters()
    pairing = UnitPairing(0, "f", counters, rec.plan, rec.emit)
    records = _records(
        (1, 0, b"GET /1 HTTP/1.1\r\n\r\n"),
        (2, 1, b"HTTP/1.1 200 OK\r\n\r\n"),
        (3, 0, b"GET /2 HTTP/1.1\r\n\r\n"),
    )
    # /2's response was dropped by the kernel, and /3's request with it
    records += [Gap(6, 0, 1), Http1Message(6, 6, 0, 1, False, 6, 6, b"HTTP/1.1 201 C\r\n\r\n")]
    records += _records((7, 0, b"GET /4 HTTP/1.1\r\n\r\n"), (8, 1, b"HTTP/1.1 202 A\r\n\r\n"))[1:]
    pairing.feed(records)
    pairing.finish(None, True)
    assert rec.exchanges == [("/1", 200), ("/2", None), ("/4", 202)]
    assert counters.requests_without_response == 1 and counters.responses_without_request == 1
