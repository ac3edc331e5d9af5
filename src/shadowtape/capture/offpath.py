"""`shadowtape capture --interface`: record off the path, from packets, live.

dumpcap writes a ring of files (owner-only, in a private directory); each finished file is
dissected into the dataset and removed, while dumpcap goes on writing the next, so dissection
never stands between the kernel and the disk: a burst becomes a backlog of files, not kernel
drops. Dissection runs niced, so the service on the same host keeps the CPU it needs; beyond
a backlog limit the oldest unread file is given up and counted.

On SIGINT or SIGTERM dumpcap finishes its last file, which is dissected too; a second signal
gives up the files not yet read (counted). The ring directory is removed at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shadowtape.capture.addon import ensure_writable
from shadowtape.capture.config import CaptureConfig
from shadowtape.capture.dumpcap_ring import (
    DEFAULT_BACKLOG_BYTES,
    DEFAULT_BUFFER_MIB,
    DEFAULT_FILE_BYTES,
    DEFAULT_FILE_SECONDS,
    DEFAULT_NICE,
    DumpcapRing,
    DumpcapStats,
    RingSettings,
)
from shadowtape.capture.packet_counters import PacketCaptureCounters, PacketCounters
from shadowtape.capture.packets import (
    DissectionPipeline,
    PacketRecorder,
    RecordingRules,
    default_workers,
)
from shadowtape.capture.tshark import DissectOptions, tool
from shadowtape.capture.writer import ExchangeSink, WriterSettings
from shadowtape.errors import InputError, ShadowtapeError
from shadowtape.governance.lineage import lineage_metadata
from shadowtape.keyed import Key, Keyed
from shadowtape.schema import capture_metadata, uuid7

TICK_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class OffPathSettings:
    interface: str
    ports: tuple[int, ...]
    config: CaptureConfig
    ring_dir: Path | None = None
    ring_file_bytes: int = DEFAULT_FILE_BYTES
    ring_file_seconds: int = DEFAULT_FILE_SECONDS
    buffer_mib: int = DEFAULT_BUFFER_MIB
    workers: int = 0
    nice: int = DEFAULT_NICE
    backlog_bytes: int = DEFAULT_BACKLOG_BYTES
    tls_keylog: Path | None = None


@dataclass(slots=True)
class OffPathSummary:
    capture_id: str = ""
    counters: PacketCaptureCounters = field(default_factory=PacketCaptureCounters)
    files: list[Path] = field(default_factory=list)
    bytes_written: int = 0
    dumpcap: DumpcapStats | None = None
    failure: str | None = None

    @property
    def packets(self) -> PacketCounters:
        assert self.counters.packet is not None
        return self.counters.packet


def _check(settings: OffPathSettings) -> None:
    if not settings.ports:
        raise InputError("--interface needs --port N: the TCP port of the service to record")
    for port in settings.ports:
        if not 0 < port < 65536:
            raise InputError(f"--port {port}: not a TCP port")
    for name in ("dumpcap", "tshark", "editcap"):
        tool(name)
    ensure_writable(settings.config.out_dir, settings.config.access)


def _ring_directory(settings: OffPathSettings) -> Path:
    parent = settings.ring_dir
    if parent is not None:
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"--ring-dir {parent}: cannot create it ({exc.strerror})") from None
    # mkdtemp makes it 0700: the ring holds raw packets, credentials included.
    return Path(tempfile.mkdtemp(prefix="shadowtape-ring-", dir=parent))


def run_offpath(
    settings: OffPathSettings,
    key: Key,
    *,
    on_started: Callable[[Path], None] | None = None,
    on_tick: Callable[[dict[str, int]], None] | None = None,
) -> OffPathSummary:
    """Capture until SIGINT/SIGTERM, dissect everything captured, summarize."""
    _check(settings)
    config = settings.config
    keyed = Keyed(key)
    capture_id = config.capture_id or uuid7()
    summary = OffPathSummary(capture_id=capture_id)
    summary.counters.packet = PacketCounters()
    sink = ExchangeSink(
        WriterSettings(
            out_dir=config.out_dir,
            capture_id=capture_id,
            metadata={
                **capture_metadata(capture_id, "packets", key.fingerprint),
                **lineage_metadata("capture", upstream=f"interface {settings.interface}"),
            },
            roll_bytes=config.roll_bytes,
            roll_seconds=config.roll_seconds,
            access=config.access,
        ),
        summary.counters,
    )
    recorder = PacketRecorder(
        keyed,
        capture_id,
        sink,
        summary.counters,
        session_key=config.session_key,
        session_gap=config.session_gap,
        redact_headers=config.redact_headers,
        max_body=config.max_body,
        rules=RecordingRules(config.filter_host, config.filter_path, config.sample, config.seed),
    )
    options = DissectOptions(ports=settings.ports, tls_keylog=settings.tls_keylog)
    options.check()
    pipeline = DissectionPipeline(
        options,
        recorder,
        summary.packets,
        workers=settings.workers or default_workers(),
        on_done=lambda path: path.unlink(missing_ok=True),
        read_drops=False,
    )
    ring_dir = _ring_directory(settings)
    ring = DumpcapRing(
        RingSettings(
            settings.interface,
            settings.ports,
            ring_dir,
            settings.ring_file_bytes,
            settings.ring_file_seconds,
            settings.buffer_mib,
        ),
        on_file=pipeline.add,
        on_exit=pipeline.close,
    )
    signals = _Signals(ring)
    try:
        ring.start()
        if settings.nice:
            # After dumpcap started: it keeps its priority, dissection (and tshark, which
            # inherits it) yields the CPU to the service.
            os.nice(settings.nice)
        if on_started is not None:
            on_started(ring_dir)
        signals.install()
        _record(pipeline, sink, summary, settings, signals, on_tick)
        recorder.flush()
    except BaseException:
        ring.stop()
        pipeline.stop()
        sink.abort()
        raise
    finally:
        signals.restore()
        shutil.rmtree(ring_dir, ignore_errors=True)
    ring.stop()
    summary.dumpcap = ring.stats
    if ring.stats is not None:
        p = summary.packets
        p.packets_dropped_kernel = ring.stats.kernel
        p.packets_dropped_interface = ring.stats.interface
        p.packets_dropped_capture = ring.stats.dumpcap + ring.stats.flushed
    if ring.failed and not signals.count:
        summary.failure = f"dumpcap stopped on its own: {ring.problem() or 'no reason given'}"
    summary.files = sink.close()
    summary.bytes_written = sink.bytes_written
    return summary


def _record(
    pipeline: DissectionPipeline,
    sink: ExchangeSink,
    summary: OffPathSummary,
    settings: OffPathSettings,
    signals: _Signals,
    on_tick: Callable[[dict[str, int]], None] | None,
) -> None:
    last_tick = 0.0
    while not pipeline.done:
        if signals.count >= 2:
            for path in pipeline.backlog():
                if pipeline.drop(path):
                    path.unlink(missing_ok=True)
            pipeline.stop()
            break
        _limit_backlog(pipeline, settings.backlog_bytes)
        pipeline.step(TICK_SECONDS)
        if sink.due():
            sink.finalize_file()
        now = time.monotonic()
        if on_tick is not None and now - last_tick >= TICK_SECONDS:
            last_tick = now
            on_tick(snapshot(summary, sink, pipeline))


def _limit_backlog(pipeline: DissectionPipeline, limit: int) -> None:
    waiting = pipeline.backlog()
    sizes = {p: p.stat().st_size for p in waiting if p.exists()}
    total = sum(sizes.values())
    # The newest file is never given up: it is the one the next exchanges are read from.
    for path in waiting[:-1]:
        if total <= limit:
            break
        if pipeline.drop(path):
            total -= sizes.get(path, 0)
            path.unlink(missing_ok=True)


def snapshot(
    summary: OffPathSummary, sink: ExchangeSink, pipeline: DissectionPipeline
) -> dict[str, int]:
    c = summary.counters
    return {
        "seen": c.seen,
        "written": c.written,
        "requests": summary.packets.requests,
        "backlog": len(pipeline.backlog()),
        "dropped": c.dropped() + summary.packets.ring_files_dropped,
        "bytes": c.body_bytes,
        "files": len(sink.files),
    }


class _Signals:
    """First SIGINT/SIGTERM: stop capturing, dissect what is there. Second: give it up."""

    def __init__(self, ring: DumpcapRing) -> None:
        self.ring = ring
        self.count = 0
        self._old: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.count += 1
        self.ring.request_stop()

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._old = {}


def failure_error(summary: OffPathSummary) -> ShadowtapeError | None:
    return ShadowtapeError(summary.failure) if summary.failure else None
