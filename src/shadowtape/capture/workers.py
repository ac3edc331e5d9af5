"""`capture --workers N`: N mitmproxy processes behind one listen address, one capture.

mitmproxy serves one core: its proxy, not the recorder, is what a gateway waits on. Here
the parent binds N listening sockets to the one address with SO_REUSEPORT (the kernel spreads
new connections over them) and hands one to each of N worker processes, each a complete
`shadowtape capture` (mitmproxy in-process, the same addon) serving its socket through a
reverse-proxy mode that accepts on a given socket (`shared_listen`). Where SO_REUSEPORT is
missing, one socket is handed to all and they accept from it in turn.

One capture, not N: every worker writes under the one capture id into the one dataset, its
files named `capture-ID-wI-*` and marked with its number; the session table is shared
(`shared_sessions`), so a session whose requests reach several workers keeps one id and one
seq order. The parent prints one listening line, one live line (summed) and one summary;
Ctrl-C or SIGTERM stops every worker, each finalizing its files. A worker that dies is
reported at once with what it took with it; the others keep serving (its socket closed with
it, so the kernel sends new connections to them) and the capture exits non-zero.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from shadowtape.capture.proxy import CaptureSummary, ProxySettings, run_capture
from shadowtape.capture.shared_sessions import SharedSessionsHandle, SharedSessionTable
from shadowtape.errors import InputError, ShadowtapeError
from shadowtape.schema import uuid7
from shadowtape.supervision import SignalCounter, how_it_ended, messages

POLL_S = 0.2
STARTUP_TIMEOUT_S = 120.0
SNAPSHOT_KEYS = ("seen", "written", "queued", "dropped", "bytes", "files")


def reuse_port_available() -> bool:
    # Linux spreads connections over SO_REUSEPORT sockets; the BSDs accept the option but
    # send every connection to one socket, which is the shared socket's behaviour at best.
    return hasattr(socket, "SO_REUSEPORT") and os.uname().sysname == "Linux"


def listening_sockets(host: str, port: int, count: int, reuse_port: bool) -> list[socket.socket]:
    """`count` listening sockets on one address: one per worker with SO_REUSEPORT, else the
    same one `count` times. Port 0 picks one free port for all."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise InputError(f"--listen {host}:{port}: cannot resolve the host ({exc})") from None
    made: list[socket.socket] = []
    try:
        for _ in range(count if reuse_port else 1):
            sock = socket.socket(family, kind, proto)
            made.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.listen(1024)
            sock.setblocking(False)
            address = (address[0], sock.getsockname()[1], *address[2:])  # the others: same port
    except OSError as exc:
        for sock in made:
            sock.close()
        raise ShadowtapeError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another address "
            "with --listen HOST:PORT (port 0 picks a free one)"
        ) from None
    return made if reuse_port else made * count


# --- the worker process ----------------------------------------------------------------------


def _worker_main(
    index: int,
    sock: socket.socket,
    proxy: ProxySettings,
    capture_options: Mapping[str, Any],
    sessions: SharedSessionsHandle,
    conn: Connection,
) -> None:
    from shadowtape.capture import shared_listen  # registers the worker mode, here only
    from shadowtape.capture.addon import ShadowtapeCapture

    shared_listen.serve_socket(sock)
    table = SharedSessionTable.attach(sessions)
    addon = ShadowtapeCapture(shared_sessions=table, worker=index)
    try:
        summary = run_capture(
            dataclasses.replace(proxy, mode_name=shared_listen.MODE_NAME),
            capture_options,
            on_listening=lambda url: conn.send(("listening", url)),
            on_tick=lambda snapshot: conn.send(("tick", snapshot)),
            addon=addon,
        )
    except ShadowtapeError as exc:
        conn.send(("error", (str(exc), exc.exit_code)))
        return
    except BaseException:
        conn.send(("error", (traceback.format_exc(), 1)))
        return
    finally:
        table.close()
    conn.send(("done", summary))


# --- the supervisor --------------------------------------------------------------------------


# A worker's messages, and the _Worker field each one sets.
_MESSAGE_FIELDS = {
    "listening": "listening",
    "tick": "snapshot",
    "done": "summary",
    "error": "error",
}


@dataclass
class _Worker:
    index: int
    process: Any
    conn: Connection
    listening: str | None = None
    snapshot: dict[str, int] | None = None
    summary: CaptureSummary | None = None
    error: tuple[str, int] | None = None
    exitcode: int | None = None


def run_capture_workers(
    proxy: ProxySettings,
    capture_options: Mapping[str, Any],
    workers: int,
    *,
    on_listening: Callable[[str], None],
    on_tick: Callable[[dict[str, int]], None] | None = None,
    on_event: Callable[[str], None] | None = None,
) -> CaptureSummary:
    """Run `workers` capture processes on one address until SIGINT or SIGTERM; one summary.
    `on_event` hears, at once, of a worker that died."""
    if workers == 1:
        return run_capture(proxy, capture_options, on_listening=on_listening, on_tick=on_tick)
    if os.name != "posix":
        raise InputError("--workers needs a POSIX system (it shares sockets and a lock file)")
    out_dir = Path(str(capture_options["shadowtape_out"]))
    ensure_ca()
    options = dict(capture_options)
    options["shadowtape_capture_id"] = options.get("shadowtape_capture_id") or uuid7()
    sockets = listening_sockets(
        proxy.listen_host, proxy.listen_port, workers, reuse_port_available()
    )
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    table_dir = Path(tempfile.mkdtemp(prefix="shadowtape-capture-", dir=shm))
    table = SharedSessionTable.create(table_dir)
    try:
        supervisor = _Supervisor(proxy, options, sockets, table.handle, on_event)
        return supervisor.run(on_listening, on_tick, out_dir, options["shadowtape_capture_id"])
    finally:
        for sock in sockets:
            sock.close()
        table.close()
        shutil.rmtree(table_dir, ignore_errors=True)


def ensure_ca() -> None:
    """Make mitmproxy's CA before any worker starts. On a machine that has none yet, every
    worker would otherwise generate and write one at once, and a worker reading another's
    half-written key fails to start ("Could not deserialize key data")."""
    from mitmproxy import certs
    from mitmproxy.options import CONF_BASENAME, CONF_DIR, KEY_SIZE

    certs.CertStore.from_store(os.path.expanduser(CONF_DIR), CONF_BASENAME, KEY_SIZE)


class _Supervisor:
    def __init__(
        self,
        proxy: ProxySettings,
        options: Mapping[str, Any],
        sockets: list[socket.socket],
        sessions: SharedSessionsHandle,
        on_event: Callable[[str], None] | None,
    ) -> None:
        self.on_event = on_event
        self.workers: list[_Worker] = []
        self._dead: list[str] = []
        self._announced = False
        self.signals = SignalCounter()
        self._relayed = 0
        ctx = get_context("spawn")
        shared = len({id(s) for s in sockets}) == 1
        for index, sock in enumerate(sockets):
            parent, child = ctx.Pipe()
            process = ctx.Process(
                target=_worker_main,
                args=(index, sock, proxy, options, sessions, child),
                name=f"shadowtape-capture-worker-{index}",
                daemon=True,
            )
            process.start()  # the socket went to the child with it (spawn passes the fd)
            child.close()
            if not shared:
                # The parent's copy closed: when a worker dies, so does its socket, and the
                # kernel stops sending it connections.
                sock.close()
            self.workers.append(_Worker(index, process, parent))
        if shared:
            sockets[0].close()

    def run(
        self,
        on_listening: Callable[[str], None],
        on_tick: Callable[[dict[str, int]], None] | None,
        out_dir: Path,
        capture_id: str,
    ) -> CaptureSummary:
        with self.signals.installed():
            self._supervise(on_listening, on_tick, out_dir, capture_id)
        return self._summary()

    def _supervise(self, on_listening: Any, on_tick: Any, out_dir: Path, capture_id: str) -> None:
        started = time.monotonic()
        last_tick = 0.0
        try:
            while not all(w.exitcode is not None for w in self.workers):
                self._step(out_dir, capture_id)
                self._relay_signals()
                if not self._announced:
                    if all(w.listening for w in self.workers):
                        self._announced = True
                        on_listening(self.workers[0].listening or "")
                    elif any(w.error or w.exitcode is not None for w in self.workers) or (
                        time.monotonic() - started > STARTUP_TIMEOUT_S
                    ):
                        self._terminate_all()  # a bad option fails every worker the same way
                now = time.monotonic()
                if on_tick is not None and self._announced and now - last_tick >= POLL_S:
                    last_tick = now
                    on_tick(self._summed())
        finally:
            for w in self.workers:
                if w.process.is_alive():
                    w.process.kill()
                    w.process.join(5)

    def _step(self, out_dir: Path, capture_id: str) -> None:
        handles: dict[Any, _Worker] = {}
        for w in self.workers:
            if w.exitcode is None:
                handles[w.conn] = w
                handles[w.process.sentinel] = w
        for ready in wait(list(handles), timeout=POLL_S):
            w = handles[ready]
            self._drain(w)
            if ready is w.process.sentinel:
                w.process.join()
                self._drain(w)
                w.exitcode = w.process.exitcode
                if w.summary is None and self._announced:
                    self._lost(w, out_dir, capture_id)

    def _drain(self, w: _Worker) -> None:
        for kind, value in messages(w.conn):
            setattr(w, _MESSAGE_FIELDS[kind], value)

    def _lost(self, w: _Worker, out_dir: Path, capture_id: str) -> None:
        if w.error is not None:
            how = f"failed: {w.error[0].strip().splitlines()[-1]}"
        else:
            how = how_it_ended(w.exitcode)
        # Taken = seen and not already counted as dropped (those are in its counters).
        snapshot = w.snapshot or {}
        seen = snapshot.get("seen", 0) - snapshot.get("dropped", 0)
        kept = sum(
            pq.ParquetFile(f).metadata.num_rows
            for f in out_dir.glob(f"capture-{capture_id}-w{w.index}-*.parquet")
        )
        line = (
            f"capture worker {w.index} of {len(self.workers)} (pid {w.process.pid}) died "
            f"({how}): at least {max(0, seen - kept)} exchanges it had taken are not on disk "
            f"({kept} are, in finalized files); its open connections were reset"
        )
        self._dead.append(line)
        if self.on_event is not None:
            others = sum(1 for x in self.workers if x.exitcode is None)
            self.on_event(line + (f"; {others} workers keep serving" if others else ""))

    def _summed(self) -> dict[str, int]:
        total = dict.fromkeys(SNAPSHOT_KEYS, 0)
        for w in self.workers:
            for k in SNAPSHOT_KEYS:
                total[k] += (w.snapshot or {}).get(k, 0)
        return total

    def _summary(self) -> CaptureSummary:
        if not self._announced:
            errors = [w.error for w in self.workers if w.error is not None]
            if errors:
                message, code = errors[0]
            else:
                dead = next((w for w in self.workers if w.exitcode), None)
                message = "the capture workers did not start listening" + (
                    f" (worker {dead.index} exited with {dead.exitcode})" if dead else ""
                )
                code = 1
            raise (InputError if code == 2 else ShadowtapeError)(message)
        summary = CaptureSummary(workers=len(self.workers))
        for w in self.workers:
            if w.summary is not None:
                summary.listen_url = summary.listen_url or w.summary.listen_url
                summary.add(w.summary)
        summary.lost_workers = list(self._dead)
        return summary

    # SIGINT/SIGTERM (counted by supervision.SignalCounter): each becomes a SIGTERM to
    # every worker, and each worker finalizes its files.
    def _relay_signals(self) -> None:
        if self._relayed < self.signals.count:
            self._relayed = self.signals.count
            self._terminate_all()

    def _terminate_all(self) -> None:
        for w in self.workers:
            if w.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.process.pid, signal.SIGTERM)
