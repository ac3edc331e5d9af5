"""The capture addon: records every finished flow as an exchange, never slowing the proxy.

Load it into your own mitmproxy:

    SHADOWTAPE_KEY=... mitmdump -s src/shadowtape/capture/addon.py --set shadowtape_out=raw/

or let `shadowtape capture` run it in front of a service. The hooks only decide, convert and
`put_nowait`; Arrow, Parquet and the disk live on the writer thread.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from mitmproxy import ctx, exceptions, http
from mitmproxy.proxy import mode_specs

from shadowtape.bodies import DEFAULT_MAX_BODY
from shadowtape.capture.config import CaptureConfig, build_config
from shadowtape.capture.flow_to_exchange import (
    client_address,
    flow_to_exchange,
    header_pairs,
    micros,
    split_path,
)
from shadowtape.capture.writer import (
    DEFAULT_QUEUE_SIZE,
    DEFAULT_ROLL_BYTES,
    DEFAULT_ROLL_SECONDS,
    CaptureCounters,
    CaptureWriter,
    ExchangeSink,
    WriterSettings,
)
from shadowtape.credentials import CredentialScrubber
from shadowtape.errors import ShadowtapeError
from shadowtape.governance.access import FileAccess
from shadowtape.governance.lineage import lineage_metadata
from shadowtape.keyed import DEFAULT_KEY_ENV, Key, Keyed
from shadowtape.schema import META_CAPTURE_WORKER, capture_metadata, uuid7
from shadowtape.sessions import SessionTracker, sample_keeps

if TYPE_CHECKING:  # fcntl-based, POSIX only: the addon itself must load everywhere
    from shadowtape.capture.shared_sessions import SharedSessionTable

logger = logging.getLogger(__name__)

# Where a flow's recording decision is kept between its request and its end.
_META = "shadowtape"
_SKIP = "skip"
_DONE = "done"


# A NamedTuple, not a dataclass: mitmdump executes this file as a script outside
# sys.modules, where dataclasses cannot resolve the module they are defined in.
class Planned(NamedTuple):
    session_id: str
    seq: int


WriterFactory = Callable[[ExchangeSink, int], CaptureWriter]


def default_writer(sink: ExchangeSink, queue_size: int) -> CaptureWriter:
    return CaptureWriter(sink, queue_size)


class ShadowtapeCapture:
    """Turns finished flows into exchange records and hands them to a background writer."""

    def __init__(
        self,
        writer_factory: WriterFactory = default_writer,
        *,
        shared_sessions: SharedSessionTable | None = None,
        worker: int | None = None,
    ) -> None:
        self.writer_factory = writer_factory
        # Set by `capture --workers`: the session table its processes share, and which one
        # this is. A user's own `mitmdump -s` leaves both unset: one process, as before.
        self.shared_sessions = shared_sessions
        self.worker = worker
        self.config: CaptureConfig | None = None
        self.writer: CaptureWriter | None = None
        self.capture_id: str | None = None
        self._keyed: Keyed | None = None
        self._scrubber: CredentialScrubber | None = None
        self._sessions: SessionTracker | None = None
        self._warned_inactive = False
        self._done = False
        self.config_error: ShadowtapeError | None = None
        # Exchange ids need unique bits, not secret ones: os.urandom per flow measured ~0.5 ms
        # on a VM, more than all the rest of the hook.
        self._id_bits = random.Random(int.from_bytes(os.urandom(16), "big"))
        # Writers already closed (a reconfigure starts a new capture), for the final summary.
        self.finished: list[CaptureWriter] = []

    # --- options ---------------------------------------------------------------------------

    def load(self, loader) -> None:  # noqa: ANN001 (mitmproxy's Loader)
        loader.add_option(
            "shadowtape_out", str, "", "Directory for the exchanges dataset (Parquet files)."
        )
        loader.add_option(
            "shadowtape_key_file",
            str,
            "",
            "File with the HMAC key for credential tokens; default: $shadowtape_key_env.",
        )
        loader.add_option(
            "shadowtape_key_env",
            str,
            DEFAULT_KEY_ENV,
            "Environment variable that holds the key (the one sanitize uses).",
        )
        loader.add_option(
            "shadowtape_filter_host", str, "", "Record only hosts matching this regex."
        )
        loader.add_option(
            "shadowtape_filter_path", str, "", "Record only paths matching this regex."
        )
        loader.add_option(
            "shadowtape_sample",
            str,
            "1.0",
            "Fraction of sessions to record (0..1); a session is kept or dropped whole.",
        )
        loader.add_option("shadowtape_seed", int, 0, "Seed of the session sampling.")
        loader.add_option(
            "shadowtape_max_body",
            int,
            DEFAULT_MAX_BODY,
            "Bodies longer than this many bytes are truncated and flagged.",
        )
        loader.add_option(
            "shadowtape_roll_size",
            int,
            DEFAULT_ROLL_BYTES,
            "Finalize a file once this many bytes (in memory) were written to it.",
        )
        loader.add_option(
            "shadowtape_roll_interval",
            str,
            str(DEFAULT_ROLL_SECONDS),
            "Finalize a file this many seconds after it was opened; bounds what a crash loses.",
        )
        loader.add_option(
            "shadowtape_session_key",
            str,
            "auto",
            "What names a session: auto, client, cookie:NAME or header:NAME.",
        )
        loader.add_option(
            "shadowtape_session_gap",
            str,
            "1800",
            "Seconds of silence after which a client address starts a new session.",
        )
        loader.add_option(
            "shadowtape_redact_headers",
            Sequence[str],
            [],
            "More header names whose values are credentials (replaced by keyed tokens).",
        )
        loader.add_option(
            "shadowtape_queue_size",
            int,
            DEFAULT_QUEUE_SIZE,
            "Exchanges waiting for the writer; beyond it flows are dropped and counted.",
        )
        loader.add_option(
            "shadowtape_capture_id", str, "", "Id of this capture; default: a new UUIDv7."
        )
        loader.add_option(
            "shadowtape_group",
            str,
            "",
            "Share the raw files with this group (0640/0750); default: owner only (0600/0700).",
        )

    def configure(self, updated: set[str]) -> None:
        if not any(name.startswith("shadowtape_") for name in updated):
            return
        opts = ctx.options
        if not opts.shadowtape_out:
            self._stop_writer()
            self.config = None
            return
        try:
            config = build_config(
                out_dir=opts.shadowtape_out,
                key_file=opts.shadowtape_key_file or None,
                filter_host=opts.shadowtape_filter_host,
                filter_path=opts.shadowtape_filter_path,
                sample=opts.shadowtape_sample,
                seed=opts.shadowtape_seed,
                max_body=opts.shadowtape_max_body,
                roll_bytes=opts.shadowtape_roll_size,
                roll_seconds=opts.shadowtape_roll_interval,
                session_key=opts.shadowtape_session_key,
                session_gap=opts.shadowtape_session_gap,
                redact_headers=opts.shadowtape_redact_headers,
                queue_size=opts.shadowtape_queue_size,
                capture_id=opts.shadowtape_capture_id,
                group=opts.shadowtape_group,
            )
            key = Key.load(config.key_file, env=opts.shadowtape_key_env or DEFAULT_KEY_ENV)
            ensure_writable(config.out_dir, config.access)
        except ShadowtapeError as exc:
            # Kept, so `shadowtape capture` reports it with its own exit code (bad input 2,
            # an unwritable output directory 1); mitmproxy itself sees an OptionsError.
            self.config_error = exc
            raise exceptions.OptionsError(f"shadowtape: {exc}") from None
        # New settings begin a new capture: the old one's files are finalized as they were.
        self._stop_writer()
        self.config = config
        self._keyed = Keyed(key)
        self._scrubber = CredentialScrubber(self._keyed, config.redact_headers)
        self._sessions = SessionTracker(
            self._keyed, config.session_key, config.session_gap, shared=self.shared_sessions
        )

    def running(self) -> None:
        self._ensure_writer()

    # --- hooks -----------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._plan(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        self._record(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        # Flows that die before a response (upstream down, client gone) end here, not in
        # `response`; they are recorded with status null and the error text.
        self._record(flow)

    def done(self) -> None:
        self._done = True
        self._stop_writer()

    # --- internals -------------------------------------------------------------------------

    def _ensure_writer(self) -> CaptureWriter | None:
        if self.writer is not None or self._done:
            return self.writer
        config = self.config
        if config is None or self._keyed is None:
            if not self._warned_inactive:
                self._warned_inactive = True
                logger.warning("shadowtape: not recording; set shadowtape_out to a directory")
            return None
        self.capture_id = config.capture_id or uuid7()
        settings = WriterSettings(
            out_dir=config.out_dir,
            capture_id=self.capture_id,
            metadata={
                **capture_metadata(self.capture_id, "mitmproxy", self._keyed.key.fingerprint),
                **lineage_metadata("capture", upstream=", ".join(map(_as_spec, ctx.options.mode))),
                **({} if self.worker is None else {META_CAPTURE_WORKER: str(self.worker)}),
            },
            roll_bytes=config.roll_bytes,
            roll_seconds=config.roll_seconds,
            access=config.access,
            worker=self.worker,
        )
        sink = ExchangeSink(settings, CaptureCounters())
        self.writer = self.writer_factory(sink, config.queue_size).start()
        return self.writer

    def _stop_writer(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close()
            self.finished.append(writer)
            c = writer.counters
            logger.info(
                "shadowtape: wrote %d of %d exchanges, dropped %d, in %d files",
                c.written,
                c.seen,
                c.dropped(),
                len(writer.sink.files),
            )

    def _plan(self, flow: http.HTTPFlow) -> object:
        """Decide once, when the request starts, so seq follows the order requests began."""
        planned = flow.metadata.get(_META)
        if planned is not None:
            return planned
        writer = self._ensure_writer()
        if writer is None:
            flow.metadata[_META] = _SKIP
            return _SKIP
        config = self.config
        assert config is not None and self._sessions is not None
        req = flow.request
        counters = writer.counters
        if (config.filter_host and not _host_matches(config, req)) or (
            config.filter_path and not config.filter_path.search(split_path(req.path))
        ):
            counters.skipped_filter += 1
            flow.metadata[_META] = _SKIP
            return _SKIP
        session_id, seq = self._sessions.assign(
            header_pairs(req.headers),
            client_address(flow),
            micros(req.timestamp_start) or 0,
        )
        if not sample_keeps(session_id, config.sample, config.seed):
            counters.skipped_sample += 1
            flow.metadata[_META] = _SKIP
            return _SKIP
        planned = Planned(session_id, seq)
        flow.metadata[_META] = planned
        return planned

    def _record(self, flow: http.HTTPFlow) -> None:
        planned = self._plan(flow)
        if not isinstance(planned, Planned):
            return
        writer = self.writer
        if writer is None:
            return
        # `error` can follow `response` for the same flow (a client that hangs up while the
        # body streams): one flow, one row.
        flow.metadata[_META] = _DONE
        assert self._scrubber is not None and self.capture_id is not None
        started = micros(flow.request.timestamp_start) or 0
        try:
            converted = flow_to_exchange(
                flow,
                exchange_id=uuid7(started, self._id_bits.randbytes(10)),
                session_id=planned.session_id,
                seq=planned.seq,
                capture_id=self.capture_id,
                scrubber=self._scrubber,
                max_body=self.config.max_body if self.config else DEFAULT_MAX_BODY,
            )
        except Exception:  # a flow we cannot convert is a counted loss, never a proxy error
            writer.counters.seen += 1
            writer.counters.dropped_conversion_error += 1
            logger.exception("shadowtape: could not record %s", flow.request.pretty_url)
            return
        writer.counters.streamed_bodies += converted.streamed_bodies
        writer.offer(converted.exchange)

    def snapshot(self) -> dict[str, int]:
        if self.writer is None:
            return {"seen": 0, "written": 0, "queued": 0, "dropped": 0, "bytes": 0, "files": 0}
        return self.writer.snapshot()


def _as_spec(mode: str) -> str:
    """The mode as a user would write it: a capture worker's mode is a reverse proxy."""
    parsed = mode_specs.ProxyMode.parse(mode)
    if isinstance(parsed, mode_specs.ReverseMode) and parsed.type_name != "reverse":
        return "reverse" + mode[len(parsed.type_name) :]
    return mode


def ensure_writable(directory: Path, access: FileAccess | None = None) -> None:
    """Fail at startup, not at the first flow, when the output cannot be written."""
    try:
        if access is not None:
            access.make_dirs(directory)
        else:
            directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ShadowtapeError(
            f"{directory}: cannot create the output directory ({exc.strerror}); "
            "choose another --out"
        ) from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ShadowtapeError(
            f"{directory}: the output directory is not writable; choose another --out"
        )


def _host_matches(config: CaptureConfig, req: http.Request) -> bool:
    assert config.filter_host is not None
    return bool(config.filter_host.search(req.pretty_host) or config.filter_host.search(req.host))


addons = [ShadowtapeCapture()]
