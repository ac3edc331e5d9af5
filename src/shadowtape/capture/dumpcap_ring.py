"""dumpcap writing a ring of capture files, and the files it has finished.

dumpcap is the packet writer Wireshark itself uses: it only copies packets from the kernel's
buffer to disk, so it keeps up with a busy interface where a dissector would not. It switches
to a new file by size or time and prints each finished file's name (`-b printname:stdout`),
which is when the file can be dissected. Its drop counts come once, at exit, on stderr.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shadowtape.capture.tshark import tool
from shadowtape.errors import ShadowtapeError

START_TIMEOUT = 30.0
# dumpcap prints "Capturing on" before its filter is in place: packets in the next ~50 ms
# (measured on loopback) are not captured. Announcing only after this grace keeps the
# promise that what follows the announcement is recorded.
READY_GRACE = 0.5
_STATS = re.compile(
    r"received/dropped on interface '[^']*': (\d+)/(\d+) "
    r"\(pcap:(\d+)/dumpcap:(\d+)/flushed:(\d+)/ps_ifdrop:(\d+)\)"
)
_STDERR_KEPT = 50
DEFAULT_FILE_BYTES = 64 * 1024 * 1024
DEFAULT_FILE_SECONDS = 10
# Kernel capture buffer: on a busy 2-core host 64 MiB still overflowed in bursts (measured).
DEFAULT_BUFFER_MIB = 256
# Ring files waiting for dissection may hold this much; beyond it the oldest is given up.
DEFAULT_BACKLOG_BYTES = 4 * 1024 * 1024 * 1024
# Dissection's nice level: the service on the same host keeps the CPU it needs.
DEFAULT_NICE = 10


@dataclass(frozen=True, slots=True)
class RingSettings:
    interface: str
    ports: tuple[int, ...]
    directory: Path
    file_bytes: int = DEFAULT_FILE_BYTES
    file_seconds: int = DEFAULT_FILE_SECONDS
    # The kernel buffer dumpcap asks for: what absorbs a burst while the disk catches up.
    buffer_mib: int = DEFAULT_BUFFER_MIB

    def capture_filter(self) -> str:
        ports = " or ".join(f"port {p}" for p in self.ports)
        return f"tcp and ({ports})"

    def command(self) -> list[str]:
        return [
            tool("dumpcap"),
            "-i",
            self.interface,
            "-f",
            self.capture_filter(),
            "-B",
            str(self.buffer_mib),
            "-b",
            f"filesize:{max(1, self.file_bytes // 1000)}",
            "-b",
            f"duration:{max(1, self.file_seconds)}",
            "-b",
            "printname:stdout",
            "-w",
            str(self.directory / "ring.pcapng"),
        ]


@dataclass(slots=True)
class DumpcapStats:
    received: int = 0
    dropped: int = 0
    # pcap: the kernel's drops (its buffer was full); dumpcap: dumpcap's own; flushed: lost
    # when dumpcap flushed at exit; ps_ifdrop: dropped by the interface or its driver.
    kernel: int = 0
    dumpcap: int = 0
    flushed: int = 0
    interface: int = 0


@dataclass(slots=True)
class DumpcapRing:
    settings: RingSettings
    on_file: Callable[[Path], None]
    on_exit: Callable[[], None]
    proc: subprocess.Popen[bytes] | None = None
    stderr_lines: list[str] = field(default_factory=list)
    stats: DumpcapStats | None = None
    started: threading.Event = field(default_factory=threading.Event)
    exited: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> DumpcapRing:
        self.proc = subprocess.Popen(
            self.settings.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # Ctrl-C reaches shadowtape, which stops dumpcap itself (SIGTERM) and then
            # dissects the last file; were shadowtape killed, dumpcap dies of the closed
            # pipe at its next file.
            start_new_session=True,
        )
        for target in (self._read_names, self._read_stderr):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._threads.append(t)
        watcher = threading.Thread(target=self._watch, daemon=True)
        watcher.start()
        self._threads.append(watcher)
        started = self.started.wait(START_TIMEOUT)
        # it may say "Capturing on" and then fail (no such interface, no permission)
        if started and not self.exited.wait(READY_GRACE):
            return self
        self.stop()
        why = self.problem() or "it did not start"
        raise ShadowtapeError(
            f"dumpcap cannot capture on {self.settings.interface} ({why}); packet capture "
            "needs root or the capture capabilities (Debian: dpkg-reconfigure "
            "wireshark-common, then add yourself to the wireshark group)"
        )

    def _read_names(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            name = raw.decode("utf-8", "surrogateescape").strip()
            if name:
                self.on_file(Path(name))

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        # dumpcap writes its progress ("Packets: N") without newlines: split on both.
        buffer = b""
        while chunk := self.proc.stderr.read1(4096):
            buffer += chunk
            *lines, buffer = re.split(rb"[\r\n]", buffer)
            for line in lines:
                self._stderr_line(line.decode("utf-8", "replace").strip())
        self._stderr_line(buffer.decode("utf-8", "replace").strip())

    def _stderr_line(self, line: str) -> None:
        if not line or line.startswith("Packets: "):
            return
        if line.startswith("Capturing on"):
            self.started.set()
        match = _STATS.search(line)
        if match:
            values = [int(g) for g in match.groups()]
            self.stats = DumpcapStats(*values)
        if len(self.stderr_lines) < _STDERR_KEPT:
            self.stderr_lines.append(line)

    def _watch(self) -> None:
        assert self.proc is not None
        self.proc.wait()
        for t in self._threads[:2]:
            t.join()
        self.exited.set()
        self.started.set()
        self.on_exit()

    def problem(self) -> str | None:
        for line in self.stderr_lines:
            if line.startswith(("Capturing on", "File:", "Packets captured")):
                continue
            if _STATS.search(line):
                continue
            return line.removeprefix("dumpcap: ")
        return None

    def request_stop(self) -> None:
        """Ask dumpcap to finish its file and exit; safe from a signal handler."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30.0) -> None:
        self.request_stop()
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.exited.wait(timeout)

    @property
    def failed(self) -> bool:
        """dumpcap exited on its own (not asked to) with an error."""
        return self.proc is not None and self.proc.returncode not in (None, 0, -signal.SIGTERM)
