"""`shadowtape serve` against `mitmdump --server-replay`: the same recordings, the same load.

One recording (synthetic, seeded: four routes with JSON bodies and per-route log-normal
latencies) is written twice, as a shadowtape dataset and as a mitmproxy flow file. wrk (one
thread, so the server keeps the other core) plays the same Lua script of the recorded requests
against each server in turn:

  * throughput: requests/s of `shadowtape serve --latency none` (matching on: route template,
    then fingerprint of path, query and body; the served-requests log on) and of
    `mitmdump --server-replay` (reverse mode, reuse on); the serve process's CPU time gives
    requests per CPU-second (per core);
  * latency fidelity: `shadowtape serve --latency recorded` answers every recorded request once
    to a Python client (asyncio on uvloop) that times each request; per route, the
    Kolmogorov-Smirnov distance between the recorded and the served latencies as the client
    saw them (`ks_per_route`), and as the double's own log says it answered them
    (`ks_per_route_server_side`, first request byte to answer written), which tells the
    double's error apart from the client's and the machine's when the machine is busy.

Targets: >= 2x mitmdump, >= 2,000 requests/s per core, KS <= 0.1 on every route. The machine
is shared: the load average before and after goes in the figures. Prints ONE JSON line.

    .venv/bin/python bench/serve.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import uvloop

from shadowtape.schema import (
    DatasetWriter,
    Exchange,
    RollPolicy,
    batch_to_rows,
    iter_batches,
    uuid7,
)

T0 = 1_750_000_000_000_000
CONNECTIONS = 16
TARGET_RATIO = 2.0
TARGET_PER_CORE = 2000.0
TARGET_KS = 0.1
# route label, median latency (ms), log-normal sigma
ROUTES = {
    "GET /api/products/{id}": (4.0, 0.5),
    "GET /api/products/search": (30.0, 0.4),
    "POST /api/orders": (15.0, 0.3),
    "GET /api/users/{uuid}": (8.0, 0.6),
}
_LISTENING = re.compile(r"listening on (http://\S+)")


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the recording -----------------------------------------------------------------------


def recording(n: int, seed: int = 7) -> list[Exchange]:
    rng = random.Random(seed)
    users = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(40)]
    out = []
    for i in range(n):
        route = list(ROUTES)[i % len(ROUTES)]
        median, sigma = ROUTES[route]
        latency_us = round(rng.lognormvariate(math.log(median * 1000), sigma))
        started = T0 + i * 20_000
        headers = [("Host", "shop.internal"), ("Accept", "application/json")]
        query: list[tuple[str, str]] = []
        body = None
        if route == "GET /api/products/{id}":
            pid = rng.randrange(200)
            path = f"/api/products/{pid}"
            payload = {"id": pid, "title": f"product {pid}", "price": round(pid * 1.7, 2)}
        elif route == "GET /api/products/search":
            term = rng.choice(["lamp", "chair", "desk", "mug", "pen"])
            path, query = "/api/products/search", [("q", term)]
            items = [{"id": k, "title": f"{term} {k}"} for k in range(8)]
            payload = {"query": term, "items": items}
        elif route == "POST /api/orders":
            path = "/api/orders"
            order = {"items": [{"product_id": rng.randrange(200), "quantity": 1 + i % 3}]}
            body = json.dumps(order).encode()
            headers.append(("Content-Type", "application/json"))
            payload = {"id": str(uuid.UUID(int=rng.getrandbits(128), version=4)), **order}
        else:
            user = rng.choice(users)
            path = f"/api/users/{user}"
            payload = {"id": user, "name": "A. Person", "tier": "gold"}
        response = json.dumps(payload).encode()
        out.append(
            Exchange(
                id=uuid7(started, i.to_bytes(10, "big")),
                session_id=f"s{i % 50}",
                seq=i // 50,
                started_at=started,
                request_sent_at=started,
                response_started_at=started + latency_us,
                response_ended_at=started + latency_us,
                method=route.split(" ")[0],
                host="shop.internal",
                port=80,
                path=path,
                query=query,
                request_headers=headers,
                request_body=body,
                status=201 if route.startswith("POST") else 200,
                reason="Created" if route.startswith("POST") else "OK",
                response_headers=[
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(response))),
                ],
                response_body=response,
                route=route,
            )
        )
    return out


def write_dataset(directory: Path, exchanges: list[Exchange]) -> None:
    # Made up here, no user data: served with --allow-unsanitized.
    with DatasetWriter(directory, roll=RollPolicy(row_group_rows=5000)) as writer:
        writer.write_exchanges(exchanges)


def _target(ex: Exchange) -> str:
    from urllib.parse import urlencode

    return ex.path + (("?" + urlencode(ex.query)) if ex.query else "")


def write_flows(path: Path, exchanges: list[Exchange]) -> None:
    from mitmproxy import http, io
    from mitmproxy.test import tflow

    with open(path, "wb") as fh:
        writer = io.FlowWriter(fh)
        for ex in exchanges:
            f = tflow.tflow(resp=True)
            f.request = http.Request.make(
                ex.method,
                f"http://shop.internal{_target(ex)}",
                ex.request_body or b"",
                dict(ex.request_headers),
            )
            f.response = http.Response.make(
                ex.status or 200, ex.response_body or b"", dict(ex.response_headers)
            )
            writer.add(f)


def wrk_script(path: Path, exchanges: list[Exchange]) -> None:
    """A wrk Lua script that cycles through the recorded requests."""

    def lua(text: str) -> str:
        return json.dumps(text)  # a JSON string is a valid Lua string literal here

    lines = ["local reqs = {}", "local i = 0", "init = function(args)"]
    for ex in exchanges:
        headers = ", ".join(
            f"[{lua(k)}] = {lua(v)}" for k, v in ex.request_headers if k.lower() != "host"
        )
        body = lua(ex.request_body.decode()) if ex.request_body else "nil"
        lines.append(
            f"  reqs[#reqs + 1] = wrk.format({lua(ex.method)}, {lua(_target(ex))}, "
            f"{{{headers}}}, {body})"
        )
    lines += [
        "end",
        "request = function()",
        "  i = i % #reqs + 1",
        "  return reqs[i]",
        "end",
    ]
    path.write_text("\n".join(lines) + "\n")


# --- running the servers -------------------------------------------------------------------


def _start(
    cmd: list[str], ready: re.Pattern[str] | None, port: int | None
) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if ready is not None:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            m = ready.search(line)
            if m:
                return proc, m.group(1)
            if time.monotonic() > deadline:
                break
        proc.kill()
        raise RuntimeError(f"{cmd[0]} did not start")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    import socket

    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{cmd[0]} did not listen on {port}")


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, script: Path, seconds: int) -> tuple[float, int, int]:
    """requests/s, requests, non-2xx/3xx answers."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = int(bad.group(1)) if bad else 0
    if errors:
        failed += sum(int(g) for g in errors.groups())
    return rps, total, failed


def free_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --- latency fidelity ------------------------------------------------------------------------


async def _timed_requests(url: str, exchanges: list[Exchange]) -> list[tuple[str, float]]:
    """Every recorded request once, CONNECTIONS at a time; (route, seconds) each."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    todo = list(enumerate(exchanges))
    results: list[tuple[int, float]] = []

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        while todo:
            i, ex = todo.pop(0)
            body = ex.request_body or b""
            head = f"{ex.method} {_target(ex)} HTTP/1.1\r\nHost: {host}\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in ex.request_headers if k.lower() != "host")
            head += f"Content-Length: {len(body)}\r\n\r\n"
            started = time.perf_counter()
            writer.write(head.encode() + body)
            status_and_headers = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: (\d+)", status_and_headers).group(1))
            await reader.readexactly(length)
            results.append((i, time.perf_counter() - started))
        writer.close()

    await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    return [(exchanges[i].route or "", t) for i, t in results]


def ks_distance(a: list[float], b: list[float]) -> float:
    a, b = sorted(a), sorted(b)
    i = j = 0
    d = 0.0
    while i < len(a) and j < len(b):
        x = min(a[i], b[j])
        while i < len(a) and a[i] <= x:
            i += 1
        while j < len(b) and b[j] <= x:
            j += 1
        d = max(d, abs(i / len(a) - j / len(b)))
    return d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller and shorter")
    args = parser.parse_args()
    n = 800 if args.quick else 2000
    seconds = 5 if args.quick else 10
    load_before = [round(x, 2) for x in os.getloadavg()]
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    exchanges = recording(n)
    try:
        dataset = work / "recording"
        write_dataset(dataset, exchanges)
        flows = work / "recording.mitm"
        write_flows(flows, exchanges)
        script = work / "requests.lua"
        wrk_script(script, exchanges)
        shadowtape = [sys.executable, "-m", "shadowtape", "--no-config", "serve", str(dataset),
                      "--allow-unsanitized"]  # fmt: skip

        _note("throughput: shadowtape serve --latency none (matching on, served log on)")
        proc, url = _start(
            [*shadowtape, "--listen", "127.0.0.1:0", "--latency", "none", "--exhausted", "cycle",
             "--served", str(work / "served")],
            _LISTENING,
            None,
        )  # fmt: skip
        cpu0 = _cpu_seconds(proc.pid)
        serve_rps, serve_total, serve_failed = run_wrk(url, script, seconds)
        cpu = _cpu_seconds(proc.pid) - cpu0
        serve_out = _stop(proc)
        _note(f"  {serve_rps:,.0f} req/s, {serve_total / cpu:,.0f} per CPU-second")

        _note("throughput: mitmdump --server-replay")
        port = free_port()
        mitmdump = str(Path(sys.executable).with_name("mitmdump"))
        proc, url = _start(
            [mitmdump, "-q", "--mode", "reverse:http://127.0.0.1:9", "--listen-host",
             "127.0.0.1", "--listen-port", str(port), "--server-replay", str(flows),
             "--set", "server_replay_reuse=true", "--set", "server_replay_ignore_host=true",
             "--set", "server_replay_ignore_port=true", "--set", "server_replay_refresh=false",
             "--set", "server_replay_extra=404", "--set", "connection_strategy=lazy"],
            None,
            port,
        )  # fmt: skip
        mitm_rps, _, mitm_failed = run_wrk(url, script, seconds)
        _stop(proc)
        _note(f"  {mitm_rps:,.0f} req/s, {mitm_failed} failed")

        _note("latency fidelity: shadowtape serve --latency recorded")
        proc, url = _start(
            [*shadowtape, "--listen", "127.0.0.1:0", "--latency", "recorded",
             "--served", str(work / "served-latency")],
            _LISTENING,
            None,
        )  # fmt: skip
        timed = uvloop.run(_timed_requests(url, exchanges))
        _stop(proc)
        by_id = {ex.id: ex.route for ex in exchanges}
        server_side: dict[str, list[float]] = {}
        for batch in iter_batches(work / "served-latency"):
            for row in batch_to_rows(batch):
                seconds_taken = (row["answered_at"] - row["received_at"]) / 1e6
                server_side.setdefault(by_id[row["matched_exchange_id"]], []).append(seconds_taken)
        served: dict[str, list[float]] = {}
        for route, seconds_taken in timed:
            served.setdefault(route, []).append(seconds_taken)
        recorded: dict[str, list[float]] = {}
        for ex in exchanges:
            recorded.setdefault(ex.route, []).append((ex.response_ended_at - ex.started_at) / 1e6)
        ks = {r: round(ks_distance(recorded[r], served.get(r, [])), 4) for r in ROUTES}
        ks_server = {r: round(ks_distance(recorded[r], server_side.get(r, [])), 4) for r in ROUTES}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    per_core = serve_total / cpu if cpu else 0.0
    ratio = serve_rps / mitm_rps if mitm_rps else math.inf
    figures = {
        "bench": "serve",
        "exchanges": n,
        "routes": len(ROUTES),
        "connections": CONNECTIONS,
        "seconds": seconds,
        "serve_rps": round(serve_rps),
        "serve_rps_per_core": round(per_core),
        "serve_failed": serve_failed,
        "mitmdump_server_replay_rps": round(mitm_rps),
        "mitmdump_failed": mitm_failed,
        "ratio_vs_mitmdump": round(ratio, 2),
        "ks_per_route": ks,
        "ks_max": max(ks.values()),
        "ks_per_route_server_side": ks_server,
        "latency_requests": len(timed),
        "targets": {"ratio": TARGET_RATIO, "per_core": TARGET_PER_CORE, "ks": TARGET_KS},
        "meets_targets": ratio >= TARGET_RATIO
        and per_core >= TARGET_PER_CORE
        and max(ks.values()) <= TARGET_KS
        and serve_failed == 0,
        "load_avg_before": load_before,
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "serve_summary": serve_out.strip().splitlines()[-1] if serve_out.strip() else "",
    }
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
