"""Two real services on 127.0.0.1 and a results dataset made from real calls to them.

`v1` plays production (its answers are the recording), `v2` plays staging with known drift
planted on some routes and known noise (timestamps, UUIDs, a nonce that changes on every call,
random ETags) on all of them. Loaded by tests/diff and tests/report (by file path, since test
folders are not packages).
"""

from __future__ import annotations

import gzip
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from shadowtape import schema

# (route, part, location, kind): exactly what the diff must call drift.
EXPECTED_DRIFT = {
    ("GET /users/{id}", "body", "$.name", "removed"),
    ("GET /users/{id}", "body", "$.full_name", "added"),
    ("GET /orders/{uuid}", "body", "$.total", "type_changed"),
    ("GET /orders/{uuid}", "body", "$.items[*].price", "changed"),
    ("GET /catalog", "body", "$.categories", "reordered"),
    ("GET /catalog", "header", "cache-control", "changed"),
    ("GET /health", "body", "$.version", "added"),
    ("GET /reports/{id}", "status", "status", "changed"),
    ("GET /pages/about", "body", "line 2", "changed"),
}
SLOW_ROUTE = "GET /search"
CLEAN_ROUTES = {"GET /search", "GET /logo.png"}
LOGO = bytes(range(256)) * 4

ORDER_IDS = [str(uuid.UUID(int=0xABC000 + i, version=4)) for i in range(8)]


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _answer(version: int, path: str) -> tuple[int, str, bytes, dict[str, str]]:
    """status, content type, body, extra headers for one request to v1 or v2."""
    noise = {"generated_at": _now_iso(), "trace": str(uuid.uuid4()), "nonce": secrets.token_hex(8)}
    headers = {"ETag": f'"{secrets.token_hex(6)}"', "Cache-Control": "max-age=60"}
    parts = path.strip("/").split("/")
    if parts[0] == "users":
        uid = int(parts[1])
        body: dict[str, Any] = {"id": uid, "email": f"user{uid}@example.test", "plan": "pro"}
        body["full_name" if version == 2 else "name"] = f"User {uid}"
        body.update(noise, roles=["admin", "dev"])
    elif parts[0] == "orders":
        base = [{"sku": "A-1", "price": 1.5, "qty": 1}, {"sku": "B-2", "price": 2.25, "qty": 2}]
        if version == 2:
            base = [dict(item, price=round(item["price"] * 1.1, 2)) for item in base]
        body = {
            "id": parts[1],
            "total": "6.00" if version == 2 else 6.0,
            "currency": "EUR",
            "items": base,
            "created_at": noise["generated_at"],
            "nonce": noise["nonce"],
        }
    elif parts[0] == "catalog":
        cats = ["books", "games", "music", "tools"]
        body = {
            "categories": cats[::-1] if version == 2 else cats,
            "count": 4,
            "server_time": round(time.time(), 3),
        }
        if version == 2:
            headers["Cache-Control"] = "no-store"
    elif parts[0] == "health":
        body = {"status": "ok", "checked_at": noise["generated_at"]}
        if version == 2:
            body["version"] = "2.0"
    elif parts[0] == "reports":
        if version == 2:
            return 500, "text/plain", b"internal error\n", headers
        body = {"report": int(parts[1]), "rows": [1, 2, 3], "trace": noise["trace"]}
    elif parts[0] == "search":
        time.sleep(0.03 if version == 1 else 0.075)
        body = {"results": [{"id": 1, "title": "shoes"}], "nonce": noise["nonce"]}
    elif parts[0] == "pages":
        text = f"About us\nVersion {version}\nContact: team@example.test\nGenerated: {_now_iso()}\n"
        return 200, "text/plain; charset=utf-8", text.encode(), headers
    elif parts[0] == "logo.png":
        return 200, "image/png", LOGO, {"Cache-Control": "max-age=60"}
    else:
        return 404, "application/json", b'{"error":"not found"}', {}
    return 200, "application/json", json.dumps(body).encode(), headers


Answer = Callable[[int, str], tuple[int, str, bytes, dict[str, str]]]


def _handler(version: int, answer: Answer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body in one write, without Nagle: otherwise delayed ACKs add ~40 ms to
        # some answers and swamp the latency the tests plant.
        wbufsize = 1 << 16
        disable_nagle_algorithm = True

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            status, ctype, body, extra = answer(version, self.path.split("?", 1)[0])
            if (
                version == 1
                and "gzip" in self.headers.get("Accept-Encoding", "")
                and (ctype == "application/json")
            ):
                body = gzip.compress(body, mtime=0)
                extra = dict(extra, **{"Content-Encoding": "gzip"})
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Request-Id", str(uuid.uuid4()))
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@contextmanager
def serve(version: int, answer: Answer = _answer) -> Iterator[str]:
    """Serve `answer(version, path)` on loopback (the planted routes unless told otherwise)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(version, answer))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def planned_requests() -> list[tuple[str, list[tuple[str, str]]]]:
    reqs: list[tuple[str, list[tuple[str, str]]]] = []
    reqs += [(f"/users/{1000 + i}", []) for i in range(12)]
    reqs += [(f"/orders/{oid}", []) for oid in ORDER_IDS]
    reqs += [("/catalog", []) for _ in range(8)]
    reqs += [("/health", []) for _ in range(6)]
    reqs += [(f"/reports/{70 + i}", []) for i in range(6)]
    reqs += [("/search", [("q", f"shoes{i}")]) for i in range(10)]
    reqs += [("/pages/about", []) for _ in range(6)]
    reqs += [("/logo.png", []) for _ in range(4)]
    return reqs


def _us() -> int:
    return time.time_ns() // 1000


def _record(client: httpx.Client, url: str, query: list[tuple[str, str]]) -> dict[str, Any]:
    """What capture would store: the response as it crossed the wire (still gzip-encoded)."""
    started = _us()
    with client.stream("GET", url, params=query, headers={"Accept-Encoding": "gzip"}) as r:
        raw = b"".join(r.iter_raw())
        ended = _us()
        return {
            "started_at": started,
            "request_sent_at": started,
            "response_ended_at": ended,
            "status": r.status_code,
            "reason": r.reason_phrase,
            "response_headers": list(r.headers.multi_items()),
            "response_body": raw,
            "response_body_truncated": False,
            "response_body_size": len(raw),
        }


def _replay(client: httpx.Client, url: str, query: list[tuple[str, str]]) -> dict[str, Any]:
    """What replay would store: staging's answer as httpx decoded it."""
    sent = _us()
    r = client.get(url, params=query, headers={"Accept-Encoding": "gzip"})
    done = _us()
    return {
        "sent_at": sent,
        "first_byte_at": done,
        "done_at": done,
        "attempts": 1,
        "retries": 0,
        "staging_status": r.status_code,
        "staging_reason": r.reason_phrase,
        "staging_http_version": r.http_version,
        "staging_headers": list(r.headers.multi_items()),
        "staging_body": r.content,
        "staging_body_truncated": False,
        "outcome": "sent",
    }


def build_results(directory: Path, staging_version: int = 2, name: str = "results") -> Path:
    """Call v1 and v2 for real and write a results dataset; every third request of each route
    is sent to v2 a second time (replay_pass 2), as `replay --noise-sample` does.

    With staging_version=1 staging runs the recorded version: only noise differs."""
    rows: list[dict[str, Any]] = []
    per_route: dict[str, int] = {}
    with serve(1) as v1, serve(staging_version) as v2, httpx.Client(timeout=30) as client:
        for seq, (path, query) in enumerate(planned_requests()):
            ex_id = schema.uuid7(_us(), seq.to_bytes(10, "big"))
            base = {
                "id": ex_id,
                "session_id": "s1",
                "seq": seq,
                "method": "GET",
                "scheme": "http",
                "host": "prod.example.test",
                "port": 80,
                "path": path,
                "query": query,
                "http_version": "HTTP/1.1",
                "request_headers": [],
                "request_body": b"",
                "capture_id": "cap1",
                "run_id": "run1",
                "replay_id": f"r-{seq}",
                "target_url": v2,
            }
            row = dict(
                base, **_record(client, v1 + path, query), **_replay(client, v2 + path, query)
            )
            row["replay_pass"] = 1
            rows.append(row)
            kind = path.strip("/").split("/")[0]
            n = per_route.get(kind, 0)
            per_route[kind] = n + 1
            if n % 3 == 0:
                again = dict(row, **_replay(client, v2 + path, query))
                again["replay_pass"] = 2
                again["replay_id"] = f"r-{seq}-2"
                rows.append(again)
        # Rows the replay did not send: counted, never diffed.
        for k, outcome in enumerate(("skipped", "skipped", "failed")):
            seq = 1000 + k
            rows.append(
                {
                    "id": schema.uuid7(_us(), seq.to_bytes(10, "big")),
                    "session_id": "s2",
                    "seq": seq,
                    "started_at": _us(),
                    "method": "POST" if outcome == "skipped" else "GET",
                    "path": "/orders" if outcome == "skipped" else "/users/99",
                    "status": 201,
                    "outcome": outcome,
                    "replay_pass": 1,
                    "skip_reason": "writes not allowed" if outcome == "skipped" else None,
                    "staging_error": "connect timeout" if outcome == "failed" else None,
                }
            )
    out = directory / name
    with schema.DatasetWriter(
        out, schema.KIND_RESULTS, roll=schema.RollPolicy(row_group_rows=25)
    ) as w:
        w.write_batch(schema.rows_to_batch(rows, schema.RESULT_SCHEMA))
    return out
