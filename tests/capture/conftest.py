"""Fixtures for the capture stage: a real upstream HTTP server, a real `shadowtape capture`
process in front of it, and readers that look at what reached the disk."""

from __future__ import annotations

import gzip
import http.server
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from shadowtape.keyed import Key, Keyed
from shadowtape.schema import batch_to_rows, dataset_files, iter_batches

KEY = "capture-test-key-0123456789abcdef"
BINARY = bytes(range(256)) * 4
# Says gzip, is not (its checksum and length zeroed): no recorder can decode it.
CORRUPT_GZIP = gzip.compress(b"zipped " * 50, mtime=0)[:-8] + b"\x00" * 8
LOGIN_SECRET = "SECRETlogin0004"  # repeated in test_capture_live.SECRETS
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0


class UpstreamHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # two writes per response: no 40 ms delayed-ACK stalls

    def _send(self, status: int, body: bytes, headers: list[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append((self.command, self.path))  # type: ignore[attr-defined]
        path = self.path.split("?")[0]
        if path == "/binary":
            self._send(200, BINARY, [("Content-Type", "application/octet-stream")])
        elif path == "/login":
            # The server mints the session secret, as a real login does.
            token = LOGIN_SECRET
            self._send(
                200,
                b'{"ok": true}',
                [
                    ("Content-Type", "application/json"),
                    ("Set-Cookie", f"sid={token}; Path=/; HttpOnly"),
                    ("Set-Cookie", "theme=dark; Path=/"),
                ],
            )
        elif path == "/gzip":
            self._send(200, gzip.compress(b"zipped " * 50), [("Content-Encoding", "gzip")])
        elif path == "/corrupt-gzip":
            self._send(200, CORRUPT_GZIP, [("Content-Encoding", "gzip")])
        elif path == "/big":
            self._send(200, b"x" * 5000, [("Content-Type", "text/plain")])
        else:
            self._send(
                201 if self.command == "POST" else 200,
                body or b"ok",
                [("Content-Type", "text/plain"), ("X-Dup", "a"), ("X-Dup", "b")],
            )

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class Upstream:
    url: str
    server: http.server.ThreadingHTTPServer
    port: int

    @property
    def seen(self) -> list[tuple[str, str]]:
        return self.server.seen  # type: ignore[attr-defined]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), UpstreamHandler)
    server.daemon_threads = True
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    up = Upstream(f"http://127.0.0.1:{port}", server, port)
    yield up
    server.shutdown()
    server.server_close()


@pytest.fixture
def capture_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["SHADOWTAPE_KEY"] = KEY
    # mitmproxy keeps its CA in ~/.mitmproxy; a private HOME keeps tests apart.
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env["HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class CaptureProcess:
    proc: subprocess.Popen[str]
    url: str
    lines: queue.Queue[str | None]
    out_dir: Path
    stdout: list[str] = field(default_factory=list)

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str, str]:
        self.proc.send_signal(sig)
        rc = self.proc.wait(STOP_TIMEOUT)
        rest = self.proc.stdout.read() if self.proc.stdout else ""
        err = self.proc.stderr.read() if self.proc.stderr else ""
        return rc, "".join(self.stdout) + rest, err


def _pump(stream: Any, lines: queue.Queue[str | None]) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line)
        if line.startswith("listening on "):
            break
    lines.put(None)


@pytest.fixture
def start_capture(
    tmp_path: Path, capture_env: dict[str, str], upstream: Upstream
) -> Iterator[Callable[..., CaptureProcess]]:
    started: list[CaptureProcess] = []

    def start(*args: str, out: Path | None = None, to: str | None = None) -> CaptureProcess:
        out_dir = out or tmp_path / "raw"
        cmd = [
            sys.executable,
            "-m",
            "shadowtape",
            "capture",
            "--upstream",
            to or upstream.url,
            "--listen",
            "127.0.0.1:0",
            "--out",
            str(out_dir),
            *args,
        ]
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=capture_env,
        )
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
        seen: list[str] = []
        while True:
            try:
                line = lines.get(timeout=START_TIMEOUT)
            except queue.Empty:
                proc.kill()
                pytest.fail(f"capture did not announce its address; stdout so far: {seen}")
            if line is None:
                err = proc.stderr.read() if proc.stderr else ""
                proc.kill()
                pytest.fail(f"capture exited before listening: {''.join(seen)} {err}")
            seen.append(line)
            if line.startswith("listening on "):
                url = line.split()[2]
                break
        cp = CaptureProcess(proc, url, lines, out_dir, seen)
        started.append(cp)
        return cp

    yield start
    for cp in started:
        if cp.proc.poll() is None:
            cp.proc.kill()
            cp.proc.wait(10)


def read_rows(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for batch in iter_batches(path):
        rows.extend(batch_to_rows(batch))
    return rows


def disk_bytes(path: Path) -> bytes:
    """Everything written under path: raw file bytes (compressed pages included) and every
    decoded value, so a secret is found whether or not compression hid it."""
    chunks = []
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        chunks.append(f.read_bytes())
    for f in dataset_files(path):
        table = pq.read_table(f)
        chunks.append(repr(table.to_pylist()).encode())
        meta = pq.ParquetFile(f).metadata.metadata or {}
        chunks.extend(k + v for k, v in meta.items())
    return b"\n".join(chunks)


@pytest.fixture
def rows_of() -> Callable[[Path], list[dict[str, Any]]]:
    return read_rows


@pytest.fixture
def bytes_of() -> Callable[[Path], bytes]:
    return disk_bytes


def header_values(pairs: list[tuple[str, str]], name: str) -> list[str]:
    return [v for n, v in pairs if n.lower() == name.lower()]


@pytest.fixture
def headers_named() -> Callable[[list[tuple[str, str]], str], list[str]]:
    return header_values


@pytest.fixture
def shadowtape_cmd() -> list[str]:
    """The CLI as a user runs it, from this interpreter (the venv need not be on PATH)."""
    return [sys.executable, "-m", "shadowtape"]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capture_env: dict[str, str]) -> Callable[..., Any]:
    """The CLI in-process (click's runner): the same parsing and error lines as the command,
    without paying an interpreter start for each bad-input case."""
    from click.testing import CliRunner

    from shadowtape.cli import main

    def invoke(*args: object, key: bool = True) -> Any:
        monkeypatch.setenv("HOME", capture_env["HOME"])
        if key:
            monkeypatch.setenv("SHADOWTAPE_KEY", KEY)
        else:
            monkeypatch.delenv("SHADOWTAPE_KEY", raising=False)
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture
def keyed() -> Keyed:
    """The keyed functions under the key the capture and import fixtures run with."""
    return Keyed(Key(KEY.encode(), "$SHADOWTAPE_KEY"))


@pytest.fixture
def traffic_fields() -> list[str]:
    """Every column the traffic itself fills: what live capture, the HAR importer and the
    flow importer must agree on for the same traffic. Ids, sessions and the capture id name
    the run; HAR keeps phases as ms durations, so of the times only the start is compared."""
    return [
        *("method", "scheme", "host", "port", "server_address", "path", "query"),
        *("request_target", "http_version", "request_headers", "request_body"),
        *("request_body_truncated", "request_body_size", "request_body_undecodable"),
        *("status", "reason", "response_headers", "response_body", "response_body_truncated"),
        *("response_body_size", "response_body_undecodable", "response_from_cache"),
        *("error", "started_at"),
    ]
