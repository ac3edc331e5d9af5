"""Replay test kit: a real staging server on 127.0.0.1 that records what it receives, and
dataset builders. Imported by name (tests run with --import-mode=importlib; see conftest)."""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from manifest_testkit import write_manifest

from shadowtape.keyed import Key, Keyed
from shadowtape.schema import (
    META_SANITIZED,
    DatasetWriter,
    Exchange,
    RollPolicy,
    uuid7,
)

T0 = 1_700_000_000_000_000  # recorded origin, µs


@dataclass
class Received:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    at: float

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)


@dataclass
class Staging:
    """What the server saw, and the state of its little app (tokens, orders, flaky paths)."""

    received: list[Received] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)
    orders: set[str] = field(default_factory=set)
    fail_first: dict[str, int] = field(default_factory=dict)  # path -> 503s still to give
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def by_session(self) -> dict[str, list[Received]]:
        out: dict[str, list[Received]] = {}
        for r in self.received:
            out.setdefault(r.header("x-session") or "", []).append(r)
        return out


def _handler(state: Staging) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _reply(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _authorized(self) -> bool:
            auth = self.headers.get("Authorization", "")
            return auth.startswith("Bearer ") and auth[7:] in state.tokens

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path = self.path.split("?", 1)[0]
            with state.lock:
                state.received.append(
                    Received(
                        self.command, self.path, list(self.headers.items()), body, time.monotonic()
                    )
                )
                remaining = state.fail_first.get(path, 0)
                if remaining:
                    state.fail_first[path] = remaining - 1
            if state.delay:
                time.sleep(state.delay)
            if remaining:
                self._reply(503, {"error": "try again"})
                return
            if path == "/login" and self.command == "POST":
                token = "tok-" + secrets.token_hex(8)
                state.tokens.add(token)
                self._reply(200, {"token": token, "user": "u1"})
                return
            if path == "/logout" and self.command == "POST":
                # Ends the session: its token stops working, as on a real app.
                if not self._authorized():
                    self._reply(401, {"error": "unauthorized"})
                    return
                with state.lock:
                    state.tokens.discard(self.headers["Authorization"][7:])
                self._reply(200, {"logged_out": True})
                return
            if path == "/orders" and self.command == "POST":
                if not self._authorized():
                    self._reply(401, {"error": "unauthorized"})
                    return
                order = str(secrets.randbelow(10**9) + 10**9)
                state.orders.add(order)
                self._reply(201, {"id": order}, {"Location": f"/orders/{order}"})
                return
            if path.startswith("/orders/"):
                if not self._authorized():
                    self._reply(401, {"error": "unauthorized"})
                    return
                order = path.split("/")[2]
                if order not in state.orders:
                    self._reply(404, {"error": "no such order"})
                    return
                self._reply(200, {"id": order, "status": "open"})
                return
            self._reply(200, {"method": self.command, "path": self.path})

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _any

    return Handler


@contextmanager
def serve_staging() -> Iterator[Staging]:
    """One staging server with its own state (tokens, orders): a deployment of its own."""
    state = Staging()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def staging() -> Iterator[Staging]:
    with serve_staging() as state:
        yield state


@pytest.fixture
def baseline() -> Iterator[Staging]:
    """A second deployment, for replay --baseline."""
    with serve_staging() as state:
        yield state


@pytest.fixture
def dead_url() -> str:
    """A loopback port nobody listens on: connections are refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def exchange(
    session: str,
    seq: int,
    offset_ms: float,
    method: str = "GET",
    path: str = "/",
    *,
    query: list[tuple[str, str]] | None = None,
    headers: list[tuple[str, str]] | None = None,
    body: bytes | None = None,
    status: int = 200,
    response_headers: list[tuple[str, str]] | None = None,
    response_body: bytes | None = b"{}",
) -> Exchange:
    started = T0 + int(offset_ms * 1000)
    return Exchange(
        id=uuid7(started, (session + str(seq)).encode().ljust(10, b"\x00")[:10]),
        session_id=session,
        seq=seq,
        started_at=started,
        method=method,
        host="api.example.com",
        port=443,
        scheme="https",
        path=path,
        query=query or [],
        request_headers=[("Host", "api.example.com"), ("X-Session", session), *(headers or [])],
        request_body=body,
        status=status,
        response_headers=response_headers or [("Content-Type", "application/json")],
        response_body=response_body,
    )


def write_dataset(
    directory: Path,
    records: list[Exchange],
    *,
    sanitized: bool = True,
    row_group_rows: int = 10_000,
) -> Path:
    meta = {META_SANITIZED: "true"} if sanitized else {}
    with DatasetWriter(
        directory, metadata=meta, roll=RollPolicy(row_group_rows=row_group_rows)
    ) as w:
        w.write_exchanges(records)
    if sanitized:
        write_manifest(directory)
    return directory


KEYED = Keyed(Key(b"correlation-test-key-0123456789", "test"))


def shop_sessions(n: int = 3) -> list:
    """Recorded sessions: login, create an order, read it twice. Tokens are keyed tokens, as
    capture writes them; ids are the recorded server's."""
    records = []
    for s in range(n):
        sid = f"sess{s}"
        token = KEYED.secret(f"raw-session-token-{s}")
        order = str(4_000_000_000 + s)
        auth = [("Authorization", f"Bearer {token}"), ("Content-Type", "application/json")]
        records += [
            exchange(
                sid,
                0,
                s * 100,
                "POST",
                "/login",
                body=b'{"user": "u1"}',
                headers=[("Content-Type", "application/json")],
                response_body=json.dumps({"token": token, "user": "u1"}).encode(),
            ),
            exchange(
                sid,
                1,
                s * 100 + 10,
                "POST",
                "/orders",
                headers=auth,
                body=b'{"item": "book"}',
                status=201,
                response_headers=[("Location", f"/orders/{order}")],
                response_body=json.dumps({"id": order}).encode(),
            ),
            exchange(
                sid,
                2,
                s * 100 + 20,
                "GET",
                f"/orders/{order}",
                headers=auth,
                response_body=json.dumps({"id": order, "status": "open"}).encode(),
            ),
            exchange(
                sid,
                3,
                s * 100 + 30,
                "GET",
                f"/orders/{order}",
                query=[("expand", "1")],
                headers=auth,
            ),
        ]
    return records


# --- a server that keeps the exact bytes it was sent --------------------------------------


@dataclass
class RawRequest:
    """One request as it arrived: the request line, the header block (each line without its
    CRLF), and the body with any chunked framing undone (`chunked` says it was chunked)."""

    line: bytes
    headers: list[bytes]
    body: bytes
    chunked: bool = False

    def fields(self) -> list[tuple[bytes, bytes]]:
        return [tuple(h.split(b": ", 1)) if b": " in h else (h, b"") for h in self.headers]

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.fields() if n.lower() == name.lower()), None)


@dataclass
class RawStaging:
    url: str = ""
    received: list[RawRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _read_chunked(f: Any) -> bytes:
    body = b""
    while True:
        size = int(f.readline().split(b";")[0].strip(), 16)
        if size == 0:
            while f.readline() not in (b"\r\n", b""):
                pass  # trailers
            return body
        body += f.read(size)
        f.readline()


def _serve_raw(conn: socket.socket, state: RawStaging) -> None:
    f = conn.makefile("rb")
    try:
        while True:
            line = f.readline()
            if not line:
                return
            head = []
            while (h := f.readline()) not in (b"\r\n", b""):
                head.append(h[:-2])
            req = RawRequest(line[:-2], head, b"")
            te = (req.header(b"transfer-encoding") or b"").lower()
            if b"chunked" in te:
                req.body, req.chunked = _read_chunked(f), True
            else:
                length = int(req.header(b"content-length") or 0)
                req.body = f.read(length) if length else b""
            with state.lock:
                state.received.append(req)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
            )
    except (OSError, ValueError):
        return
    finally:
        f.close()
        conn.close()


@contextlib.contextmanager
def raw_server() -> Iterator[RawStaging]:
    """A loopback HTTP/1.1 server that records the bytes of every request it gets."""
    state = RawStaging()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    state.url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=_serve_raw, args=(conn, state), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield state
    finally:
        stop.set()
        listener.close()


@pytest.fixture
def raw_staging() -> Iterator[RawStaging]:
    with raw_server() as state:
        yield state


@contextlib.contextmanager
def mitmdump_reverse(upstream: str, confdir: Path, *sets: str) -> Iterator[int]:
    """A real mitmdump in reverse mode in front of `upstream`, TLS (its own CA) and cleartext
    on one port; yields the port. `sets`: more mitmproxy options (`http2=false`)."""
    import shutil
    import subprocess
    import sys

    mitmdump = Path(sys.executable).with_name("mitmdump")
    if not mitmdump.exists():
        mitmdump = Path(shutil.which("mitmdump") or "mitmdump")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Lazy: ALPN is chosen from what the client offers, not from the (HTTP/1.1) upstream.
    options = [f"confdir={confdir}", "connection_strategy=lazy", *sets]
    proc = subprocess.Popen(
        [str(mitmdump), "-q", "--mode", f"reverse:{upstream}", "--listen-host", "127.0.0.1"]
        + ["--listen-port", str(port)]
        + [arg for o in options for arg in ("--set", o)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "mitmdump did not start"
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)
