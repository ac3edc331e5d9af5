"""Running Wireshark's command-line tools: tshark to dissect, editcap to cut packets out.

tshark does the TCP reassembly, TLS decryption and HTTP/1.1 and HTTP/2 dissection; its tap
(`http_messages.lua`) prints only the fields the importer needs, with their exact bytes.
Everything tshark would do beyond that is turned off where a preference allows (name
resolution, TCP timing analysis, content decoding: the importer undoes content codings itself,
with the same decoder as the rest of shadowtape, so a body tshark cannot decode still keeps
its bytes).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shadowtape.errors import InputError, ShadowtapeError

TAP_SCRIPT = Path(__file__).with_name("http_messages.lua")
INSTALL_HINT = (
    "install Wireshark's command-line tools (Debian/Ubuntu: apt-get install tshark; "
    "macOS: brew install wireshark)"
)
# editcap keeps at most this many packet selections per run (ranges count as one).
EDITCAP_SELECTIONS = 500
# Magic numbers of the capture files tshark reads: pcap (both byte orders, µs and ns),
# pcapng, and the compressed forms tshark opens itself.
_MAGICS = (
    b"\xd4\xc3\xb2\xa1",
    b"\xa1\xb2\xc3\xd4",
    b"\x4d\x3c\xb2\xa1",
    b"\xa1\xb2\x3c\x4d",
    b"\x34\xcd\xb2\xa1",
    b"\xa1\xb2\xcd\x34",
    b"\x0a\x0d\x0d\x0a",
    b"\x1f\x8b",  # gzip
    b"\x28\xb5\x2f\xfd",  # zstd
    b"\x04\x22\x4d\x18",  # lz4
)
_STDERR_KEPT = 20


class ToolMissingError(ShadowtapeError):
    """A Wireshark tool is not installed: the environment's problem, exit 1."""


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ToolMissingError(f"{name} not found on PATH; {INSTALL_HINT}")
    return found


def is_capture_file(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(4)
    return any(head.startswith(m) for m in _MAGICS)


def check_capture_file(path: Path) -> None:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty; not a packet capture")
    if not is_capture_file(path):
        raise InputError(
            f"{path}: not a pcap or pcapng file (tcpdump -w, dumpcap and Wireshark write those)"
        )


@dataclass(frozen=True, slots=True)
class DissectOptions:
    """What tshark needs to know to find the HTTP in a capture."""

    # TCP ports of HTTP servers (plain HTTP/1.1 and h2c); tshark finds HTTP/1.1 on other
    # ports by itself, but h2c with prior knowledge only on ports it is told about.
    ports: tuple[int, ...] = ()
    tls_keylog: Path | None = None

    def tshark_args(self) -> list[str]:
        args = [
            "-n",
            "-q",
            "-X",
            f"lua_script:{TAP_SCRIPT}",
            "-o",
            "http.decompress_body:FALSE",
            "-o",
            "http.desegment_headers:TRUE",
            "-o",
            "http.desegment_body:TRUE",
            "-o",
            "http.dechunk_body:TRUE",
            "-o",
            "tcp.desegment_tcp_streams:TRUE",
            # Retransmissions are recognised and not read twice. Out-of-order reassembly stays
            # off: after packets the kernel dropped it would wait for them to the end of the
            # file and read nothing more of that connection (measured); off, the stream
            # resumes at the next message and the pairing resyncs at the gap.
            "-o",
            "tcp.analyze_sequence_numbers:TRUE",
            "-o",
            "tcp.reassemble_out_of_order:FALSE",
            "-o",
            "tcp.calculate_timestamps:FALSE",
            "-o",
            "tcp.track_bytes_in_flight:FALSE",
        ]
        for port in self.ports:
            args += ["-d", f"tcp.port=={port},http"]
        if self.tls_keylog is not None:
            # TLS is recognised by its handshake on any port, before the port's HTTP guess.
            args += ["-o", f"tls.keylog_file:{self.tls_keylog}"]
            args += ["-o", "tcp.try_heuristic_first:TRUE"]
        return args

    def check(self) -> None:
        if self.tls_keylog is not None:
            if not self.tls_keylog.is_file():
                raise InputError(f"--tls-keylog {self.tls_keylog}: no such file")
            if not os.access(self.tls_keylog, os.R_OK):
                raise InputError(f"--tls-keylog {self.tls_keylog}: cannot be read")
        for port in self.ports:
            if not 0 < port < 65536:
                raise InputError(f"--port {port}: not a TCP port")


@dataclass(slots=True)
class TsharkRun:
    """One tshark process reading a capture (a file, or packets fed on stdin)."""

    name: str
    proc: subprocess.Popen[bytes]
    stderr_lines: list[str] = field(default_factory=list)
    _stderr_thread: threading.Thread | None = None
    _feeder: threading.Thread | None = None
    feed_error: str | None = None

    @property
    def stdout(self):  # noqa: ANN201 (a binary pipe)
        assert self.proc.stdout is not None
        return self.proc.stdout

    def wait(self) -> int:
        rc = self.proc.wait()
        if self._stderr_thread is not None:
            self._stderr_thread.join()
        if self._feeder is not None:
            self._feeder.join()
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()

    def problem(self) -> str | None:
        """The first line of tshark's stderr that says something went wrong."""
        for line in self.stderr_lines:
            if line.startswith("Running as user") or not line.strip():
                continue
            return line.removeprefix("tshark: ").strip()
        return None

    @property
    def truncated(self) -> bool:
        return any("cut short in the middle of a packet" in line for line in self.stderr_lines)


def _drain_stderr(run: TsharkRun) -> None:
    assert run.proc.stderr is not None
    for raw in run.proc.stderr:
        if len(run.stderr_lines) < _STDERR_KEPT:
            run.stderr_lines.append(raw.decode("utf-8", "replace").rstrip())


def start_tshark(name: str, source: Path | None, options: DissectOptions) -> TsharkRun:
    """tshark on a file, or on stdin when `source` is None (the caller feeds it)."""
    cmd = [tool("tshark"), "-r", str(source) if source else "-"]
    cmd += options.tshark_args()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE if source is None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=1 << 20,
        # A terminal's Ctrl-C goes to the whole process group: tshark must not die of it
        # mid-file; shadowtape decides when dissection stops. If shadowtape dies, tshark
        # dies of the closed pipe.
        start_new_session=True,
    )
    run = TsharkRun(name, proc)
    run._stderr_thread = threading.Thread(target=_drain_stderr, args=(run,), daemon=True)
    run._stderr_thread.start()
    return run


def frame_selections(frames: Sequence[int]) -> list[str]:
    """Sorted frame numbers as editcap selections, consecutive runs as ranges."""
    out: list[str] = []
    start = prev = None
    for f in frames:
        if prev is not None and f == prev + 1:
            prev = f
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = f
    if start is not None:
        out.append(str(start) if start == prev else f"{start}-{prev}")
    return out


def cut_packets(path: Path, frames: Sequence[int]) -> Iterator[list[str]]:
    """editcap commands that write the given frames of `path` to stdout as pcapng
    (sections concatenate; pcap files would not), in order."""
    selections = frame_selections(frames)
    editcap = tool("editcap")
    for i in range(0, len(selections), EDITCAP_SELECTIONS):
        chunk = selections[i : i + EDITCAP_SELECTIONS]
        yield [editcap, "-F", "pcapng", "-r", str(path), "-", *chunk]


def start_seam(name: str, cuts: list[tuple[Path, list[int]]], options: DissectOptions) -> TsharkRun:
    """tshark reading packets cut from several files, one after the other, from a pipe:
    nothing of them is written to disk again."""
    run = start_tshark(name, None, options)

    def feed() -> None:
        assert run.proc.stdin is not None
        try:
            for path, frames in cuts:
                for cmd in cut_packets(path, frames):
                    cut = subprocess.Popen(
                        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
                    )
                    assert cut.stdout is not None
                    while chunk := cut.stdout.read(1 << 16):
                        run.proc.stdin.write(chunk)
                    _, err = cut.communicate()
                    if cut.returncode != 0:
                        run.feed_error = err.decode("utf-8", "replace").strip()[:200]
                        return
        except (BrokenPipeError, OSError) as exc:
            run.feed_error = str(exc)
        finally:
            with contextlib.suppress(OSError):
                run.proc.stdin.close()

    run._feeder = threading.Thread(target=feed, name=f"feed-{name}", daemon=True)
    run._feeder.start()
    return run
