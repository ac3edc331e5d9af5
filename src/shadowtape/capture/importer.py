"""`shadowtape import`: HAR and mitmproxy flow files into an exchanges dataset.

The output is a function of the inputs and the key: ids come from each entry's time and a keyed
digest of the file name and index, never from randomness, so importing the same files twice
gives the same rows. A run that fails removes every file it wrote: a half import must not sit
in a directory looking like a whole one.
"""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shadowtape.bodies import DEFAULT_MAX_BODY
from shadowtape.capture.flow_to_exchange import client_address, flow_to_exchange, micros
from shadowtape.capture.har import (
    EntryError,
    HarEntry,
    har_entry_to_exchange,
    iter_har_entries,
)
from shadowtape.capture.mitmflows import iter_flows
from shadowtape.capture.writer import (
    DEFAULT_ROLL_BYTES,
    CaptureCounters,
    ExchangeSink,
    WriterSettings,
)
from shadowtape.credentials import CredentialScrubber, scrub_exchange
from shadowtape.errors import InputError
from shadowtape.governance.access import FileAccess
from shadowtape.governance.lineage import lineage_metadata
from shadowtape.keyed import Key, Keyed
from shadowtape.schema import Exchange, capture_metadata, uuid7
from shadowtape.sessions import SessionKey, SessionTracker

ON_ERROR = ("fail", "skip")
BATCH_ROWS = 1000
MAX_PROBLEMS_KEPT = 20
# An import is one closed set of traffic: gaps split sessions exactly as live capture does,
# with the file standing in for the (unknown) client address.
_HAR_CLIENT = "har-file:"


@dataclass(frozen=True, slots=True)
class ImportSettings:
    out_dir: Path
    on_error: str = "fail"
    max_body: int = DEFAULT_MAX_BODY
    session_key: SessionKey = field(default_factory=SessionKey)
    session_gap: float = 1800.0
    redact_headers: tuple[str, ...] = ()
    roll_bytes: int = DEFAULT_ROLL_BYTES
    access: FileAccess = field(default_factory=FileAccess)  # raw data: owner-only by default


@dataclass(slots=True)
class ImportSummary:
    capture_id: str = ""
    inputs: int = 0
    entries: int = 0
    counters: CaptureCounters = field(default_factory=CaptureCounters)
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0
    files: list[Path] = field(default_factory=list)
    bytes_written: int = 0


def detect_format(path: Path) -> str:
    """`har`, `zhar` or `flows`, by content: HAR is JSON, `.zhar` is zlib-compressed HAR (as
    mitmproxy's save.har writes it), a flow file is tnetstrings. A file named `.har` or
    `.zhar` must be what its name says, so the error names the format the user meant."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    if not head:
        raise InputError(f"{path}: the file is empty; nothing to import")
    is_json = head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{")
    suffix = path.suffix.lower()
    if suffix == ".zhar":
        if head[:1] != b"\x78":
            raise InputError(f"{path}: not a .zhar file (no zlib stream); give a HAR or .zhar file")
        return "zhar"
    if suffix == ".har" and not is_json:
        raise InputError(
            f"{path}: not a HAR file (HAR is a JSON object starting with '{{'); "
            "export it again from the browser or mitmproxy"
        )
    return "har" if is_json else "flows"


class ZlibReader(io.RawIOBase):
    """A zlib stream decompressed as it is read, so a large .zhar never sits whole in memory."""

    def __init__(self, raw: io.BufferedIOBase, name: str) -> None:
        self.raw = raw
        self.name = name
        self._z = zlib.decompressobj()
        self._out = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._out and not self._z.eof:
            chunk = self.raw.read(1 << 16)
            try:
                self._out = self._z.decompress(chunk) if chunk else self._z.flush()
            except zlib.error as exc:
                raise InputError(f"{self.name}: not a valid .zhar (zlib: {exc})") from None
            if not chunk:
                if not self._z.eof:
                    raise InputError(f"{self.name}: ends early; the .zhar looks truncated")
                break
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n


def import_files(
    paths: Sequence[str | os.PathLike[str]],
    settings: ImportSettings,
    key: Key,
    on_progress: Callable[[ImportSummary], None] | None = None,
) -> ImportSummary:
    if settings.on_error not in ON_ERROR:
        raise InputError(f"--on-error {settings.on_error!r}: expected fail or skip")
    files = [Path(p) for p in paths]
    for f in files:
        if not f.is_file():
            raise InputError(f"{f}: no such file")
    keyed = Keyed(key)
    summary = ImportSummary(inputs=len(files))
    summary.capture_id, sink = import_sink(
        files,
        settings.out_dir,
        settings.roll_bytes,
        key,
        "import",
        summary.counters,
        settings.access,
    )
    run = _ImportRun(settings, keyed, summary.capture_id, summary, sink, on_progress)
    try:
        for f in files:
            run.import_file(f)
        run.flush()
        summary.files = sink.close()
        summary.bytes_written = sink.bytes_written
    except BaseException:
        discard(sink)
        raise
    return summary


def import_sink(
    files: Sequence[Path],
    out_dir: Path,
    roll_bytes: int,
    key: Key,
    source: str,
    counters: CaptureCounters,
    access: FileAccess,
) -> tuple[str, ExchangeSink]:
    """The capture id of an import (a function of the file names and the key) and the sink
    its rows go to; shared by every importer (HAR and flows here, packets)."""
    capture_id = "import-" + Keyed(key).hash_hex("\x00".join(f.name for f in files), 16)
    writer_settings = WriterSettings(
        out_dir=out_dir,
        capture_id=capture_id,
        metadata={
            **capture_metadata(capture_id, source, key.fingerprint),
            **lineage_metadata("import", files=files),
        },
        roll_bytes=roll_bytes,
        roll_seconds=None,
        access=access,
    )
    # The same files and key give the same capture id: importing them again into the same
    # directory would silently double every row.
    earlier = sorted(out_dir.glob(f"{writer_settings.prefix}-*.parquet"))
    if earlier:
        raise InputError(
            f"{out_dir}: these files were already imported here ({earlier[0].name}); "
            "remove those files or import into another --out"
        )
    return capture_id, ExchangeSink(writer_settings, counters)


def discard(sink: ExchangeSink) -> None:
    """A failed import leaves nothing behind that could pass for a whole one."""
    sink.abort()
    for written in sink.files:
        written.unlink(missing_ok=True)


class _ImportRun:
    def __init__(
        self,
        settings: ImportSettings,
        keyed: Keyed,
        capture_id: str,
        summary: ImportSummary,
        sink: ExchangeSink,
        on_progress: Callable[[ImportSummary], None] | None,
    ) -> None:
        self.settings = settings
        self.keyed = keyed
        self.capture_id = capture_id
        self.summary = summary
        self.sink = sink
        self.on_progress = on_progress
        self.scrubber = CredentialScrubber(keyed, settings.redact_headers)
        self.sessions = SessionTracker(keyed, settings.session_key, settings.session_gap)
        self.pending: list[Exchange] = []

    def import_file(self, path: Path) -> None:
        fmt = detect_format(path)
        records = self._flows(path) if fmt == "flows" else self._har(path, fmt == "zhar")
        for record in records:
            self.summary.entries += 1
            if record is not None:
                self.pending.append(record)
                if len(self.pending) >= BATCH_ROWS:
                    self.flush()

    def flush(self) -> None:
        self.sink.write(self.pending)
        self.pending = []
        if self.on_progress is not None:
            self.on_progress(self.summary)

    def _exchange_id(self, path: Path, index: int, started_us: int) -> str:
        return uuid7(started_us, self.keyed.digest("import-id", f"{path.name}\x00{index}"))

    def _problem(self, path: Path, index: int, reason: str) -> None:
        message = f"{path}: entry {index}: {reason}"
        if self.settings.on_error == "fail":
            raise InputError(f"{message}; fix it or pass --on-error skip")
        self.summary.counters.skipped_invalid += 1
        self.summary.problem_count += 1
        if len(self.summary.problems) < MAX_PROBLEMS_KEPT:
            self.summary.problems.append(message)

    def _har(self, path: Path, compressed: bool) -> Iterator[Exchange | None]:
        with open(path, "rb") as raw:
            binary = io.BufferedReader(ZlibReader(raw, str(path))) if compressed else raw
            fh = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape")
            for item in iter_har_entries(fh, str(path)):
                try:
                    ex = self._har_entry(path, item)
                except EntryError as exc:
                    self._problem(path, item.index, str(exc))
                    ex = None
                except (TypeError, AttributeError) as exc:
                    # A field of an unexpected JSON type deep in the entry: still one bad entry.
                    self._problem(path, item.index, f"malformed entry ({exc})")
                    ex = None
                yield ex

    def _har_entry(self, path: Path, item: HarEntry) -> Exchange:
        ex = har_entry_to_exchange(
            item.entry, self.capture_id, self.settings.max_body, item.creator
        )
        ex.id = self._exchange_id(path, item.index, ex.started_at)
        ex.session_id, ex.seq = self.sessions.assign(
            ex.request_headers, _HAR_CLIENT + path.name, ex.started_at
        )
        return scrub_exchange(ex, self.scrubber)

    def _flows(self, path: Path) -> Iterator[Exchange | None]:
        with open(path, "rb") as raw:
            fh = io.BufferedReader(raw)
            for item in iter_flows(fh, str(path)):
                if item.flow is None:
                    self.summary.counters.skipped_non_http += 1
                    yield None
                    continue
                flow = item.flow
                started = micros(flow.request.timestamp_start) or 0
                session_id, seq = self.sessions.assign(
                    list(flow.request.headers.items(multi=True)),
                    client_address(flow) or _HAR_CLIENT + path.name,
                    started,
                )
                converted = flow_to_exchange(
                    flow,
                    exchange_id=self._exchange_id(path, item.index, started),
                    session_id=session_id,
                    seq=seq,
                    capture_id=self.capture_id,
                    scrubber=self.scrubber,
                    max_body=self.settings.max_body,
                )
                self.summary.counters.streamed_bodies += converted.streamed_bodies
                yield converted.exchange
