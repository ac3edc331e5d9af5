"""Replay test kit: a real staging server on 127.0.0.1 that records what it receives, and
dataset builders. Imported by name (tests run with --import-mode=importlib; see conftest)."""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from shadowtape.schema import (
    META_SANITIZED,
    DatasetWriter,
    Exchange,
    RollPolicy,
    read_files,
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


@pytest.fixture
def staging() -> Iterator[Staging]:
    state = Staging()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


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


def write_manifest(directory: Path) -> None:
    """The manifest `shadowtape sanitize` writes beside its files, which replay checks."""
    files = [
        {"name": i.path.relative_to(directory).as_posix(), "rows": i.num_rows,
         "row_groups": i.num_row_groups}
        for i in read_files(directory)
    ]  # fmt: skip
    doc = {"format": "shadowtape.sanitize-manifest", "version": 1, "files": files}
    (directory / "_manifest.json").write_text(json.dumps(doc))
