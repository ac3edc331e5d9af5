"""`shadowtape capture`: mitmproxy in-process, in reverse mode, in front of one service.

The proxy's lifecycle lives here (event loop, signals, the listening announcement); what is
recorded and how is the addon's business, so the same addon runs in a user's own mitmdump.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mitmproxy import exceptions, options
from mitmproxy.tools.dump import DumpMaster

from shadowtape.capture.addon import ShadowtapeCapture
from shadowtape.capture.writer import CaptureCounters
from shadowtape.errors import InputError, ShadowtapeError

TICK_SECONDS = 0.2


@dataclass(frozen=True, slots=True)
class ProxySettings:
    upstream: str
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    mode_name: str = "reverse"  # a capture worker's: see capture/shared_listen.py

    @property
    def mode(self) -> str:
        return f"{self.mode_name}:{self.upstream}@{self.listen_host}:{self.listen_port}"


def parse_upstream(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"upstream {url!r}: give an http:// or https:// URL with a host")
    if parts.path not in ("", "/") or parts.query:
        raise InputError(
            f"upstream {url!r}: a reverse proxy forwards whole paths; give only scheme://host:port"
        )
    try:
        parts.port  # noqa: B018 (validates the port)
    except ValueError:
        raise InputError(f"upstream {url!r}: bad port") from None
    return f"{parts.scheme}://{parts.netloc}"


@dataclass(slots=True)
class CaptureSummary:
    listen_url: str = ""
    capture_ids: list[str] = field(default_factory=list)
    counters: CaptureCounters = field(default_factory=CaptureCounters)
    files: list[Path] = field(default_factory=list)
    bytes_written: int = 0
    # Why writes failed, each cause once with how often it happened.
    failures: Counter[str] = field(default_factory=Counter)
    workers: int = 1
    lost_workers: list[str] = field(default_factory=list)  # workers that died, and what they lost

    def add(self, other: CaptureSummary) -> None:
        """Another writer's or worker's figures into these (one capture, disjoint flows)."""
        for cid in other.capture_ids:
            if cid not in self.capture_ids:
                self.capture_ids.append(cid)
        self.counters.add(other.counters)
        self.files.extend(other.files)
        self.bytes_written += other.bytes_written
        self.failures.update(other.failures)


class _StartupErrors(logging.Handler):
    """Errors mitmproxy logs while starting (a port in use, a bad mode), kept to become the
    one-line error; mitmproxy's own check would print its own line and sys.exit()."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage().strip().splitlines()[0])


class _Announcer:
    """Tells the caller where the proxy listens, once the socket is really bound."""

    def __init__(self, master: DumpMaster, on_listening: Callable[[str], None]) -> None:
        self.master = master
        self.on_listening = on_listening
        self.listen_url = ""
        self.startup_errors = _StartupErrors()
        logging.getLogger().addHandler(self.startup_errors)

    def running(self) -> None:
        logging.getLogger().removeHandler(self.startup_errors)
        addrs = self.master.addons.get("proxyserver").listen_addrs()
        if self.startup_errors.messages or not addrs:
            self.master.shutdown()
            return
        host, port = addrs[0][0], addrs[0][1]
        shown = f"[{host}]" if ":" in host else host
        self.listen_url = f"http://{shown}:{port}"
        self.on_listening(self.listen_url)


def run_capture(
    proxy: ProxySettings,
    capture_options: Mapping[str, Any],
    *,
    on_listening: Callable[[str], None],
    on_tick: Callable[[dict[str, int]], None] | None = None,
    addon: ShadowtapeCapture | None = None,
) -> CaptureSummary:
    """Run until SIGINT or SIGTERM, then flush, finalize and summarize."""
    return asyncio.run(_run(proxy, capture_options, on_listening, on_tick, addon))


async def _run(
    proxy: ProxySettings,
    capture_options: Mapping[str, Any],
    on_listening: Callable[[str], None],
    on_tick: Callable[[dict[str, int]], None] | None,
    addon: ShadowtapeCapture | None,
) -> CaptureSummary:
    # DumpMaster needs a running loop; the addon's options exist only once it is added.
    master = DumpMaster(options.Options(), with_termlog=False, with_dumper=False)
    capture = addon or ShadowtapeCapture()
    errorcheck = master.addons.get("errorcheck")
    if errorcheck is not None:
        errorcheck.finish()
        master.addons.remove(errorcheck)
    announcer = _Announcer(master, on_listening)
    master.addons.add(capture, announcer)
    try:
        master.options.update(
            mode=[proxy.mode],
            # lazy: with the upstream down the client gets a 502 and the flow reaches the
            # `error` hook; eager would close the client with no flow at all to record.
            connection_strategy="lazy",
            **capture_options,
        )
    except exceptions.OptionsError as exc:
        if capture.config_error is not None:
            raise capture.config_error from None
        raise InputError(str(exc).removeprefix("shadowtape: ")) from None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    ticker = asyncio.create_task(_tick(capture, on_tick)) if on_tick else None
    try:
        await master.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if ticker is not None:
            ticker.cancel()
        capture.done()
    if not announcer.listen_url:
        logging.getLogger().removeHandler(announcer.startup_errors)
        why = "; ".join(announcer.startup_errors.messages) or "no listening socket"
        raise ShadowtapeError(
            f"cannot start the proxy on {proxy.listen_host}:{proxy.listen_port} ({why}); "
            "pick another address with --listen HOST:PORT (port 0 picks a free one)"
        )
    return summarize(capture, announcer.listen_url)


async def _tick(capture: ShadowtapeCapture, on_tick: Callable[[dict[str, int]], None]) -> None:
    while True:
        on_tick(capture.snapshot())
        await asyncio.sleep(TICK_SECONDS)


def summarize(capture: ShadowtapeCapture, listen_url: str) -> CaptureSummary:
    summary = CaptureSummary(listen_url=listen_url)
    for writer in capture.finished:
        summary.capture_ids.append(writer.sink.settings.capture_id)
        summary.counters.add(writer.counters)
        summary.files.extend(writer.sink.files)
        summary.bytes_written += writer.sink.bytes_written
        summary.failures.update(writer.failures)
    return summary
