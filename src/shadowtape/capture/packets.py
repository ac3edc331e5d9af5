"""Packet captures (pcap, pcapng) into exchanges: tshark dissects, this module pairs and records.

Files are dissected in parallel, one tshark per file (a live ring gives many), each file's
records buffered up to a bound while an earlier file is being recorded; records are paired
and recorded strictly in file order, so sessions, sequence numbers and ids do not depend on
which tshark finished first: the same files and key give the same dataset. Exchanges that a
file boundary cut are put back together by `packet_pairing` (carries and seams).

tshark's output goes straight from its pipe into memory and out as scrubbed records: raw
credentials are never written anywhere by shadowtape (the capture files themselves hold them,
which is the user's to protect).
"""

from __future__ import annotations

import os
import re
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from shadowtape.bodies import DEFAULT_MAX_BODY
from shadowtape.capture.importer import discard, import_sink
from shadowtape.capture.packet_counters import PacketCaptureCounters, PacketCounters
from shadowtape.capture.packet_exchange import packet_exchange, request_url_parts
from shadowtape.capture.packet_pairing import (
    Carry,
    OpenRequest,
    SeamPairing,
    TupleKey,
    UnitPairing,
    give_up,
    seam_cuts,
)
from shadowtape.capture.packet_records import (
    End,
    H2Frame,
    Http1Message,
    PayloadFrames,
    Record,
    RecordFormatError,
    iter_records,
)
from shadowtape.capture.packet_wire import WireRequest, WireResponse
from shadowtape.capture.pcapng_stats import interface_drops
from shadowtape.capture.tshark import (
    DissectOptions,
    TsharkRun,
    check_capture_file,
    is_capture_file,
    start_seam,
    start_tshark,
    tool,
)
from shadowtape.capture.writer import DEFAULT_ROLL_BYTES, ExchangeSink
from shadowtape.credentials import CredentialScrubber
from shadowtape.errors import InputError, ShadowtapeError
from shadowtape.governance.access import FileAccess
from shadowtape.keyed import Key, Keyed
from shadowtape.schema import Exchange, uuid7
from shadowtape.sessions import SessionKey, SessionTracker, sample_keeps

BATCH_ROWS = 1000
# Records of a file dissected ahead of its turn are held up to this many body bytes; beyond
# it that tshark waits (its pipe fills), so memory stays bounded whatever the files hold.
AHEAD_BYTES = 64 * 1024 * 1024
_CHUNK_RECORDS = 512


PACKET_SUFFIXES = frozenset({".pcap", ".pcapng", ".cap", ".dmp"})


def _looks_like_packets(path: Path) -> bool:
    if path.suffix.lower() in PACKET_SUFFIXES or path.name.lower().endswith(".pcap.gz"):
        return True
    return path.is_file() and path.stat().st_size > 0 and is_capture_file(path)


def packet_files(paths: Sequence[Path]) -> bool:
    """True when every input is a packet capture (by content, or by name, so a broken one
    gets the packet importer's error), False when none is; a mix is an error (they are
    different imports, with different options)."""
    kinds = {_looks_like_packets(p) for p in paths}
    if kinds == {True, False}:
        raise InputError("packet captures and HAR/flow files in one import: import them separately")
    return kinds == {True}


class Planned(NamedTuple):
    session_id: str
    seq: int


@dataclass(frozen=True, slots=True)
class RecordingRules:
    """Which exchanges to keep: the addon's filters and session sampling."""

    filter_host: re.Pattern[str] | None = None
    filter_path: re.Pattern[str] | None = None
    sample: float = 1.0
    seed: int = 0


class PacketRecorder:
    """Plans each request (filter, session, sampling) as it is read, in capture order, and
    turns each answered or abandoned request into a scrubbed exchange for the sink."""

    def __init__(
        self,
        keyed: Keyed,
        capture_id: str,
        sink: ExchangeSink,
        counters: PacketCaptureCounters,
        *,
        session_key: SessionKey,
        session_gap: float,
        redact_headers: Sequence[str] = (),
        max_body: int = DEFAULT_MAX_BODY,
        rules: RecordingRules | None = None,
    ) -> None:
        self.keyed = keyed
        self.capture_id = capture_id
        self.sink = sink
        self.counters = counters
        self.max_body = max_body
        self.rules = rules or RecordingRules()
        self.scrubber = CredentialScrubber(keyed, redact_headers)
        self.sessions = SessionTracker(keyed, session_key, session_gap)
        self.pending: list[Exchange] = []

    def plan(self, req: WireRequest) -> Planned | None:
        rules = self.rules
        if rules.filter_host is not None or rules.filter_path is not None:
            _, host, _, target = request_url_parts(req)
            path = target.partition("?")[0] or "/"
            if (rules.filter_host is not None and not rules.filter_host.search(host)) or (
                rules.filter_path is not None and not rules.filter_path.search(path)
            ):
                self.counters.skipped_filter += 1
                return None
        session_id, seq = self.sessions.assign(req.headers, req.client[0], req.started_us)
        if not sample_keeps(session_id, rules.sample, rules.seed):
            self.counters.skipped_sample += 1
            return None
        return Planned(session_id, seq)

    def emit(self, opened: OpenRequest, resp: WireResponse | None, error: str | None) -> None:
        plan = opened.plan
        if not isinstance(plan, Planned):
            return
        req = opened.request
        name, frame, index = req.origin
        rand = self.keyed.digest("packet-id", f"{self.capture_id}\x00{name}\x00{frame}\x00{index}")
        try:
            ex = packet_exchange(
                req,
                resp,
                exchange_id=uuid7(req.started_us, rand),
                session_id=plan.session_id,
                seq=plan.seq,
                capture_id=self.capture_id,
                scrubber=self.scrubber,
                max_body=self.max_body,
                error=error,
            )
        except Exception:  # one odd message is a counted loss, not a failed capture
            self.counters.seen += 1
            self.counters.dropped_conversion_error += 1
            return
        self.pending.append(ex)
        if len(self.pending) >= BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.sink.write(self.pending)
            self.pending = []


# --- dissecting one file (or seam) in a thread ------------------------------------------------


class _Ahead:
    """Record chunks from one tshark, bounded by body bytes (see AHEAD_BYTES)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: deque[tuple[list[Record], int]] = deque()
        self.bytes = 0
        self.done = False
        self.cond = threading.Condition()

    def put(self, chunk: list[Record], size: int) -> None:
        with self.cond:
            while self.chunks and self.bytes + size > self.limit:
                self.cond.wait()
            self.chunks.append((chunk, size))
            self.bytes += size
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.done = True
            self.cond.notify_all()

    def __iter__(self) -> Iterator[Record]:
        while True:
            with self.cond:
                while not self.chunks and not self.done:
                    self.cond.wait()
                if not self.chunks:
                    return
                chunk, size = self.chunks.popleft()
                self.bytes -= size
                self.cond.notify_all()
            yield from chunk


def _record_bytes(record: Record) -> int:
    if isinstance(record, Http1Message):
        return len(record.head) + len(record.body or b"") + len(record.rest or b"")
    if isinstance(record, H2Frame):
        return len(record.data) + 64
    return 16


class _Unit:
    """One tshark run and the records it gives, read on a thread of its own."""

    def __init__(
        self, index: int, name: str, start: Callable[[], TsharkRun], want_payload: bool
    ) -> None:
        self.index = index
        self.name = name
        self._start = start
        self.payload = PayloadFrames() if want_payload else None
        self.ahead = _Ahead(AHEAD_BYTES)
        self.frames = 0
        self.ended = False
        self.error: BaseException | None = None
        self.run: TsharkRun | None = None
        self.rc: int | None = None
        self.thread = threading.Thread(target=self._read, name=f"tshark-{name}", daemon=True)
        self.exited = threading.Event()

    def start(self) -> None:
        self.thread.start()

    def _read(self) -> None:
        try:
            self.run = self._start()
            chunk: list[Record] = []
            size = 0
            for record in iter_records(self.run.stdout, self.name, self.payload):
                if isinstance(record, End):
                    self.frames = record.frames
                    self.ended = True
                    continue
                chunk.append(record)
                size += _record_bytes(record)
                if len(chunk) >= _CHUNK_RECORDS:
                    self.ahead.put(chunk, size)
                    chunk, size = [], 0
            if chunk:
                self.ahead.put(chunk, size)
            self.rc = self.run.wait()
        except BaseException as exc:  # handed to the recording thread, which raises it
            self.error = exc
            if self.run is not None:
                self.run.kill()
        finally:
            self.exited.set()
            self.ahead.close()

    def stop(self) -> None:
        if self.run is not None:
            self.run.kill()
        self.ahead.close()


# --- the pipeline ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Input:
    index: int
    path: Path
    unit: _Unit | None = None
    processed: bool = False


@dataclass(slots=True)
class DissectionReport:
    truncated: list[str] = field(default_factory=list)


class DissectionPipeline:
    """Files in, exchanges out, in file order; see the module docstring.

    `add` may be called from another thread (a live ring); `step` runs the recording.
    """

    def __init__(
        self,
        options: DissectOptions,
        recorder: PacketRecorder,
        counters: PacketCounters,
        *,
        workers: int,
        on_error: str = "fail",
        on_done: Callable[[Path], None] | None = None,
        read_drops: bool = True,
    ) -> None:
        self.options = options
        self.recorder = recorder
        self.counters = counters
        self.workers = max(1, workers)
        self.on_error = on_error
        self.on_done = on_done
        self.read_drops = read_drops
        self.inputs: list[_Input] = []
        self.next_input = 0
        self.carries: dict[TupleKey, Carry] = {}
        self.closed = False
        self.report = DissectionReport()
        self._lock = threading.Condition()
        self._seams: list[tuple[_Unit, list[Carry]]] = []

    # --- inputs --------------------------------------------------------------------------

    def add(self, path: Path) -> None:
        with self._lock:
            self.inputs.append(_Input(len(self.inputs), path))
            self._lock.notify_all()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._lock.notify_all()

    def backlog(self) -> list[Path]:
        """Files waiting for their turn (none of their packets read yet)."""
        with self._lock:
            waiting = self.inputs[self.next_input :]
            return [i.path for i in waiting if i.unit is None and not i.processed]

    def drop(self, path: Path) -> bool:
        """Give up a file not yet started (a backlog over its limit); counted."""
        with self._lock:
            for item in self.inputs[self.next_input :]:
                if item.path == path and item.unit is None:
                    item.processed = True
                    self.counters.ring_files_dropped += 1
                    return True
        return False

    @property
    def done(self) -> bool:
        with self._lock:
            return self.closed and self.next_input >= len(self.inputs) and not self.carries

    # --- running -------------------------------------------------------------------------

    def _want_payload(self) -> bool:
        # Carries need payload frame numbers; a single closed input has no neighbour.
        return not (self.closed and len(self.inputs) == 1)

    def _start_ahead(self) -> None:
        # Started and not yet recorded, finished or not: each holds up to AHEAD_BYTES.
        running = sum(1 for i in self.inputs if i.unit is not None and not i.processed)
        for item in self.inputs[self.next_input :]:
            if running >= self.workers:
                break
            if item.unit is None and not item.processed:
                path = item.path
                item.unit = _Unit(
                    item.index,
                    path.name,
                    lambda path=path: start_tshark(path.name, path, self.options),
                    self._want_payload(),
                )
                item.unit.start()
                running += 1

    def step(self, timeout: float | None = None) -> bool:
        """Record the next file if it is there (waiting up to `timeout`); False if not."""
        with self._lock:
            if self.next_input >= len(self.inputs) and not (self.closed and self.carries):
                self._lock.wait(timeout)
            item = self.inputs[self.next_input] if self.next_input < len(self.inputs) else None
            flush = item is None and self.closed and bool(self.carries)
            if item is None and not flush:
                return False
            if item is not None and item.processed:  # dropped from the backlog
                self.next_input += 1
                return True
            if item is not None:
                self._start_ahead()
            last = self.closed and item is not None and item.index == len(self.inputs) - 1
        if item is None:
            self._flush_carries()
        else:
            assert item.unit is not None
            self._record_unit(item, last)
            with self._lock:
                item.processed = True
                self.next_input += 1
                self._start_ahead()
        self._release_files()
        return True

    def run(self) -> None:
        while not self.done:
            self.step(0.5)

    def stop(self) -> None:
        """Abandon dissection (a second interrupt): stop every tshark."""
        with self._lock:
            for item in self.inputs:
                if item.unit is not None:
                    item.unit.stop()

    # --- recording -----------------------------------------------------------------------

    def _record_unit(self, item: _Input, last: bool) -> None:
        unit = item.unit
        assert unit is not None
        self.counters.inputs += 1
        pairing = UnitPairing(
            item.index,
            unit.name,
            self.counters,
            self.recorder.plan,
            self.recorder.emit,
            carries=self.carries,
            server_ports=self.options.ports,
        )
        pairing.feed(unit.ahead)
        unit.exited.wait()
        self._check(unit, item.path)
        self.counters.packets += unit.frames
        if self.read_drops:
            drops = interface_drops(item.path)
            if drops is not None:
                self.counters.packets_dropped_kernel += drops
        ready, self.carries = pairing.finish(unit.payload, last)
        if ready:
            self._seam(item.index, ready, last)
        self.recorder.flush()

    def _flush_carries(self) -> None:
        """The capture ended while exchanges were still open: dissect what they have."""
        carries = list(self.carries.values())
        self.carries = {}
        joinable = [c for c in carries if c.sticky and c.frames]
        for carry in carries:
            if carry not in joinable:
                give_up(carry, self.counters, self.recorder.emit)
        if joinable:
            self._seam(len(self.inputs) - 1, joinable, last=True)
        self.recorder.flush()

    def _seam(self, after: int, carries: list[Carry], last: bool) -> None:
        """Dissect the packets of connections cut inside a message together, pair what
        they answer, and carry on what they still leave open."""
        paths = {i.index: i.path for i in self.inputs}
        names = [i.path.name for i in self.inputs]
        cuts, frame_map = seam_cuts(carries)
        name = f"{names[after]}+seam"
        files = [(paths[u], frames) for u, frames in cuts.items()]
        unit = _Unit(after, name, lambda: start_seam(name, files, self.options), not last)
        unit.start()
        pairing = SeamPairing(
            after,
            names,
            self.counters,
            self.recorder.plan,
            self.recorder.emit,
            carries,
            frame_map,
            self.options.ports,
        )
        pairing.feed(unit.ahead)
        unit.exited.wait()
        self._check(unit, self.inputs[after].path)
        if unit.run is not None and unit.run.feed_error:
            raise ShadowtapeError(f"cutting packets for {name} failed: {unit.run.feed_error}")
        ready, still_open = pairing.finish(unit.payload, last)
        self.carries.update(still_open)
        for carry in ready:
            give_up(carry, self.counters, self.recorder.emit)

    def _check(self, unit: _Unit, path: Path) -> None:
        if unit.error is not None:
            if isinstance(unit.error, ShadowtapeError | RecordFormatError):
                raise unit.error
            raise ShadowtapeError(f"{path}: dissecting failed: {unit.error}") from unit.error
        run = unit.run
        assert run is not None
        lua = next((line for line in run.stderr_lines if "Lua" in line), None)
        if lua is not None:
            raise ShadowtapeError(f"tshark could not run shadowtape's tap ({lua.strip()})")
        if run.truncated:
            if self.on_error == "fail":
                raise InputError(
                    f"{path}: the capture is cut short in the middle of a packet (a truncated "
                    "file); import what comes before the cut with --on-error skip"
                )
            self.report.truncated.append(str(path))
            return
        if unit.rc != 0 or not unit.ended:
            why = run.problem() or f"tshark exited with status {unit.rc}"
            if "isn't a capture file" in why or "unknown format" in why:
                raise InputError(f"{path}: {why}")
            raise ShadowtapeError(f"{path}: tshark failed: {why}")

    def _release_files(self) -> None:
        if self.on_done is None:
            return
        referenced = {u for c in self.carries.values() for u in c.frames}
        with self._lock:
            done = [i for i in self.inputs[: self.next_input] if i.processed and i.path.exists()]
        for item in done:
            if item.index not in referenced:
                self.on_done(item.path)


# --- `shadowtape import` of packet captures ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class PacketImportSettings:
    out_dir: Path
    options: DissectOptions = field(default_factory=DissectOptions)
    on_error: str = "fail"
    max_body: int = DEFAULT_MAX_BODY
    session_key: SessionKey = field(default_factory=SessionKey)
    session_gap: float = 1800.0
    redact_headers: tuple[str, ...] = ()
    roll_bytes: int = DEFAULT_ROLL_BYTES
    workers: int = 0
    access: FileAccess = field(default_factory=FileAccess)  # raw data: owner-only by default


@dataclass(slots=True)
class PacketImportSummary:
    capture_id: str = ""
    inputs: int = 0
    counters: PacketCaptureCounters = field(default_factory=PacketCaptureCounters)
    files: list[Path] = field(default_factory=list)
    bytes_written: int = 0
    truncated: list[str] = field(default_factory=list)

    @property
    def packets(self) -> PacketCounters:
        assert self.counters.packet is not None
        return self.counters.packet


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def import_packets(
    paths: Sequence[str | os.PathLike[str]],
    settings: PacketImportSettings,
    key: Key,
    on_progress: Callable[[PacketImportSummary], None] | None = None,
) -> PacketImportSummary:
    """Files in the order given (a `tcpdump -C` or ring series: oldest first) into one
    dataset; a run that fails removes every file it wrote."""
    files = [Path(p) for p in paths]
    for f in files:
        check_capture_file(f)
    settings.options.check()
    tool("tshark")
    keyed = Keyed(key)
    summary = PacketImportSummary(inputs=len(files))
    summary.counters.packet = PacketCounters()
    capture_id, sink = import_sink(
        files,
        settings.out_dir,
        settings.roll_bytes,
        key,
        "packets",
        summary.counters,
        settings.access,
    )
    summary.capture_id = capture_id
    recorder = PacketRecorder(
        keyed,
        capture_id,
        sink,
        summary.counters,
        session_key=settings.session_key,
        session_gap=settings.session_gap,
        redact_headers=settings.redact_headers,
        max_body=settings.max_body,
    )
    pipeline = DissectionPipeline(
        settings.options,
        recorder,
        summary.packets,
        workers=settings.workers or default_workers(),
        on_error=settings.on_error,
    )
    for f in files:
        pipeline.add(f)
    pipeline.close()
    try:
        while not pipeline.done:
            pipeline.step(None)
            if on_progress is not None:
                on_progress(summary)
        recorder.flush()
        if summary.packets.exchanges_seen() == 0:
            names = ", ".join(str(f) for f in files)
            raise InputError(
                f"{names}: no HTTP found in {summary.packets.packets} TCP packets; if the "
                "server listens on a port tshark does not take for HTTP (or speaks h2c), "
                "name it with --port N; TLS needs --tls-keylog"
            )
        summary.files = sink.close()
        summary.bytes_written = sink.bytes_written
        summary.truncated = pipeline.report.truncated
    except BaseException:
        pipeline.stop()
        discard(sink)
        raise
    return summary
