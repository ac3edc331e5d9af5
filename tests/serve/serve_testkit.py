"""Serve test kit: recordings with latencies and failures, a real upstream for the fallback,
and small real clients. Imported by name (tests run with --import-mode=importlib)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from manifest_testkit import write_manifest  # tests/ is on sys.path (tests/conftest.py)

from shadowtape.schema import META_SANITIZED, DatasetWriter, Exchange, RollPolicy, uuid7

T0 = 1_700_000_000_000_000


def rec(
    session: str,
    seq: int,
    method: str,
    path: str,
    *,
    query: list[tuple[str, str]] | None = None,
    headers: list[tuple[str, str]] | None = None,
    body: Any = None,
    status: int | None = 200,
    response: Any = None,
    response_headers: list[tuple[str, str]] | None = None,
    latency_ms: float | None = 1.0,
    error: str | None = None,
    at_ms: float | None = None,
    session_header: str = "X-Session",
) -> Exchange:
    """One recorded exchange; JSON bodies given as Python values."""
    started = T0 + int((at_ms if at_ms is not None else seq * 10) * 1000)
    request_headers = [("Host", "dep.internal"), (session_header, session), *(headers or [])]
    raw_body = None
    if body is not None:
        raw_body = body if isinstance(body, bytes) else json.dumps(body).encode()
        if not isinstance(body, bytes):
            request_headers.append(("Content-Type", "application/json"))
    raw_response = None
    if status is not None:
        raw_response = (
            response if isinstance(response, bytes) else json.dumps(response or {}).encode()
        )
    ended = None if latency_ms is None or status is None else started + int(latency_ms * 1000)
    return Exchange(
        id=uuid7(started, f"{session}:{seq}".encode().ljust(10, b"\x00")[:10]),
        session_id=f"sess-{session}",
        seq=seq,
        started_at=started,
        request_sent_at=started,
        response_started_at=ended,
        response_ended_at=ended,
        method=method,
        host="dep.internal",
        port=80,
        path=path,
        query=query or [],
        request_headers=request_headers,
        request_body=raw_body,
        status=status,
        reason=None,
        response_headers=response_headers or [("Content-Type", "application/json")],
        response_body=raw_response,
        error=error,
    )


def write_recording(directory: Path, records: list[Exchange], *, sanitized: bool = True) -> Path:
    meta = {META_SANITIZED: "true" if sanitized else "false"}
    with DatasetWriter(directory, metadata=meta, roll=RollPolicy(row_group_rows=50)) as w:
        w.write_exchanges(records)
    if sanitized:
        write_manifest(directory)  # as sanitize would: replay checks it
    return directory


def shadowtape(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shadowtape", "--no-config", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class ServeProcess:
    """`shadowtape serve` as a user runs it, in a child process."""

    proc: subprocess.Popen[str]
    url: str
    lines: list[str] = field(default_factory=list)

    def stop(self, sig: int = 2) -> tuple[int, str]:
        self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=60)
        return self.proc.returncode, "\n".join(self.lines) + "\n" + (out or "")


def start_serve(*args: str, env: dict[str, str] | None = None) -> ServeProcess:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shadowtape", "--no-config", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith("listening on "):
            url = line.split()[2]
            return ServeProcess(proc, url, lines)
    proc.wait()
    raise AssertionError("serve did not start:\n" + "\n".join(lines))


@dataclass
class Upstream:
    """A real service for the fallback: echoes what it got, and counts it."""

    url: str = ""
    received: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)


def _upstream_handler(state: Upstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            state.received.append((self.command, self.path, dict(self.headers.items()), body))
            payload = json.dumps({"real": True, "path": self.path.split("?")[0]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Set-Cookie", "session=real-session-secret; Path=/")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = _any

    return Handler


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    state = Upstream()
    with ThreadingHTTPServer(("127.0.0.1", 0), _upstream_handler(state)) as server:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        host, port = server.server_address[:2]
        state.url = f"http://{host}:{port}"
        yield state
        server.shutdown()


def raw_exchange(url: str, request: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes or the answer is complete."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if request.startswith(b"HEAD "):
            return head + b"\r\n\r\n" + body
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body


@dataclass(frozen=True)
class Timed:
    status: int
    body: bytes
    seconds: float


async def timed_gets(url: str, targets: list[str], concurrency: int) -> list[Timed]:
    """GET each target over `concurrency` keep-alive connections, timing each from the first
    byte sent to the last byte read. A bare asyncio client: httpx adds a millisecond or more
    per request under load, which would be measured as the double's."""
    import asyncio
    import time

    host, port = url.removeprefix("http://").rsplit(":", 1)
    results: list[Timed | None] = [None] * len(targets)
    todo = list(range(len(targets)))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /__shadowtape/health HTTP/1.1\r\nHost: x\r\n\r\n")  # warm up
        await _read_answer(reader)
        while todo:
            i = todo.pop(0)
            request = f"GET {targets[i]} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            started = time.perf_counter()
            writer.write(request)
            status, body = await _read_answer(reader)
            results[i] = Timed(status, body, time.perf_counter() - started)
        writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results  # type: ignore[return-value]


async def _read_answer(reader: Any) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)
