"""Real packets for the packet importer's tests: loopback servers (HTTP/1.1, h2c, TLS) that
remember what they received, and dumpcap capturing their port on `lo`.

Imported by name from the tests next to it (tests run with --import-mode=importlib).
"""

from __future__ import annotations

import contextlib
import gzip
import http.server
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest

BINARY = bytes(range(256)) * 3
LOGIN_SECRET = "SECRETpktcookie01"
BEARER_SECRET = "SECRETpktbearer02"
CHUNKS = [b"first chunk ", b"\x00\xff binary \x80 ", b"last"]
BIG = bytes(range(251)) * 1200  # ~300 KB: several TCP segments even on lo


def need_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (Debian: apt-get install tshark)")


# --- HTTP/1.1 -----------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Sent:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Exchanged:
    """What one request was on arrival, and what the server answered."""

    seen: Seen | H2Seen
    sent: Sent


class Http1Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def _reply(
        self, status: int, body: bytes, headers: list[tuple[str, str]], chunked: bool = False
    ) -> None:
        reason = self.responses.get(status, ("",))[0]
        head = [*headers]
        if chunked:
            head.append(("Transfer-Encoding", "chunked"))
        else:
            head.append(("Content-Length", str(len(body))))
        self.server.exchanges.append(Exchanged(self._seen, Sent(status, reason, head, body)))  # type: ignore[attr-defined]
        self.send_response_only(status, reason)
        for name, value in head:
            self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        if chunked:
            parts = CHUNKS if self.path.split("?")[0] == "/chunked" else [body[:7], body[7:]]
            for part in parts:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.wfile.write(body)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            body = self.rfile.read(length) if length else b""
        self._seen = Seen(self.command, self.path, list(self.headers.items()), body)
        path = self.path.split("?")[0]
        if path == "/slow":
            time.sleep(float(self.path.split("=")[-1]))
        plain = [("Content-Type", "text/plain"), ("X-Dup", "a"), ("X-Dup", "b")]
        if path == "/gzip":
            self._reply(200, gzip.compress(b"zipped " * 40), [("Content-Encoding", "gzip")])
        elif path == "/broken-gzip":
            self._reply(200, b"\x1f\x8bnot really gzip", [("Content-Encoding", "gzip")])
        elif path == "/chunked":
            self._reply(200, b"".join(CHUNKS), [("Content-Type", "application/octet-stream")], True)
        elif path == "/chunked-gzip":
            payload = gzip.compress(b"chunked and zipped " * 30)
            self._reply(200, payload, [("Content-Encoding", "gzip")], True)
        elif path == "/binary":
            self._reply(200, BINARY, [("Content-Type", "application/octet-stream")])
        elif path == "/big":
            self._reply(200, BIG, [("Content-Type", "application/octet-stream")])
        elif path == "/login":
            cookies = [
                ("Set-Cookie", f"sid={LOGIN_SECRET}; Path=/; HttpOnly"),
                ("Set-Cookie", "theme=dark"),
            ]
            self._reply(200, b'{"ok": true}', [("Content-Type", "application/json"), *cookies])
        elif path == "/empty":
            self._reply(204, b"", [])
        else:
            status = 201 if self.command == "POST" else 200
            self._reply(status, body or b"ok " + self.path.encode(), plain)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class Server:
    port: int
    exchanges: list[Exchanged]
    stop: Any
    scheme: str = "http"

    def by_target(self) -> dict[str, Exchanged]:
        out = {}
        for ex in self.exchanges:
            seen = ex.seen
            target = seen.target if isinstance(seen, Seen) else dict(seen.headers)[":path"]
            out[target] = ex
        return out

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"


@contextmanager
def http1_server(tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Http1Handler)
    server.daemon_threads = True
    server.exchanges = []  # type: ignore[attr-defined]
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(
            server.server_address[1],
            server.exchanges,  # type: ignore[attr-defined]
            server.shutdown,
            "https" if tls else "http",
        )
    finally:
        server.shutdown()
        server.server_close()


def pipelined(port: int, requests: list[bytes], expect: int) -> bytes:
    """Send every request at once on one connection (pipelining) and read `expect` replies."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"".join(requests))
        data = b""
        deadline = time.monotonic() + 10
        while data.count(b"HTTP/1.1 ") < expect or not data.endswith(b"ok /p3"):
            if time.monotonic() > deadline:
                break
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


# --- HTTP/2 (h2c, and h2 over TLS) --------------------------------------------------------


@dataclass
class H2Seen:
    headers: list[tuple[str, str]]
    body: bytes


def _h2_serve(sock: socket.socket, exchanges: list[Exchanged]) -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    streams: dict[int, list[Any]] = {}
    try:
        while data := sock.recv(65535):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    streams[event.stream_id] = [
                        [(k.decode(), v.decode()) for k, v in event.headers],
                        b"",
                    ]
                elif isinstance(event, h2.events.DataReceived):
                    streams[event.stream_id][1] += event.data
                    conn.acknowledge_received_data(len(event.data), event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    headers, body = streams.pop(event.stream_id)
                    path = dict(headers)[":path"]
                    out = body or f"h2 says hi to {path}".encode()
                    resp = [
                        ("content-type", "text/plain"),
                        ("x-dup", "1"),
                        ("x-dup", "2"),
                        ("content-length", str(len(out))),
                    ]
                    if path.startswith("/gzip"):
                        out = gzip.compress(b"h2 zipped " * 20)
                        resp = [("content-encoding", "gzip"), ("content-length", str(len(out)))]
                    exchanges.append(Exchanged(H2Seen(headers, body), Sent(200, "", resp, out)))
                    conn.send_headers(event.stream_id, [(":status", "200"), *resp])
                    conn.send_data(event.stream_id, out, end_stream=True)
            sock.sendall(conn.data_to_send())
    except (OSError, ssl.SSLError):
        pass
    finally:
        sock.close()


@contextmanager
def h2_server(tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    exchanges: list[Exchanged] = []
    stopping = threading.Event()

    def accept() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if tls is not None:
                try:
                    conn = tls.wrap_socket(conn, server_side=True)
                except (OSError, ssl.SSLError):
                    continue
            threading.Thread(target=_h2_serve, args=(conn, exchanges), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield Server(listener.getsockname()[1], exchanges, stopping.set, "https" if tls else "http")
    finally:
        stopping.set()
        listener.close()


# --- TLS ----------------------------------------------------------------------------------


def server_tls(cert: Path, key: Path, keylog: Path, alpn: list[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(alpn)
    # the server writes the key log too, so decryption does not depend on the client's
    ctx.keylog_filename = str(keylog)
    return ctx


# --- capturing ----------------------------------------------------------------------------


@dataclass
class Capture:
    path: Path
    proc: subprocess.Popen[bytes]
    stderr: list[str] = field(default_factory=list)

    def stop(self) -> Path:
        # Let the last packets reach dumpcap's file before it stops.
        time.sleep(0.3)
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        return self.path


@contextmanager
def capturing(path: Path, *ports: int) -> Iterator[Capture]:
    """dumpcap on lo for these TCP ports into `path`; yields once packets really reach it.

    dumpcap says "Capturing on" some tens of ms before its filter is in place (measured
    here), so readiness is proven with a probe: TCP connections to the ports until dumpcap
    counts packets (the probes carry no payload, so they add no HTTP to the capture).
    """
    need_tools("dumpcap", "tshark")
    filt = "tcp and (" + " or ".join(f"port {p}" for p in ports) + ")"
    proc = subprocess.Popen(
        ["dumpcap", "-i", "lo", "-f", filt, "-w", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    capture = Capture(path, proc)
    counted = threading.Event()
    started = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for raw in iter(lambda: proc.stderr.read1(4096), b""):  # type: ignore[union-attr]
            text = raw.decode("utf-8", "replace")
            capture.stderr.append(text)
            if "Capturing on" in text:
                started.set()
            if re.search(r"Packets: [1-9]", text):
                counted.set()
        started.set()

    threading.Thread(target=read, daemon=True).start()
    if not started.wait(20) or proc.poll() is not None:
        proc.kill()
        pytest.skip(f"packet capture on lo is not permitted here: {''.join(capture.stderr)}")
    deadline = time.monotonic() + 20
    while not counted.is_set() and time.monotonic() < deadline:
        for port in ports:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                pass
        counted.wait(0.1)
    if not counted.is_set():
        proc.kill()
        pytest.fail(f"dumpcap never saw the probe packets: {''.join(capture.stderr)}")
    try:
        yield capture
    finally:
        if proc.poll() is None:
            capture.stop()
