"""Replay throughput, schedule accuracy and memory, against named peers in the same run.

Peers, all against the same loopback server with the same connection count:
  * wrk (a C load generator: the ceiling for this server on this machine),
  * `mitmdump --client-replay` on the same requests, written as a .mitm flow file here.
Figures: requests/s of each and the ratios; dispatch lateness p50/p99 at --speed 1 over a
recording of 3,000 requests in 30 s; peak RSS of the replay at 100k and 1M recorded requests.

Prints ONE JSON line. `--quick` shrinks every size (under a minute). Not a test: figures are
indicative on a shared machine.

    .venv/bin/python bench/replay_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shadowtape.schema import META_SANITIZED, DatasetWriter, Exchange, RollPolicy, uuid7

T0 = 1_750_000_000_000_000
BODY = b'{"id": 1, "name": "widget", "price": 9.5, "tags": ["a", "b"]}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)


# --- the loopback server: minimal HTTP/1.1 keep-alive, so the clients are what is measured ---


class _Http(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        # GETs only: a request ends at the blank line (pipelining answered in order).
        n = self.buf.count(b"\r\n\r\n")
        if n:
            self.buf = self.buf[self.buf.rfind(b"\r\n\r\n") + 4 :]
            self.transport.write(RESPONSE * n)


def _serve(port_queue: multiprocessing.Queue) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Http, "127.0.0.1", 0, backlog=1024)
        port_queue.put(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


# --- inputs ------------------------------------------------------------------------------


def make_dataset(directory: Path, n: int, sessions: int, span_s: float, host: str) -> Path:
    """n GET exchanges spread over `sessions` sessions and `span_s` recorded seconds."""
    writer = DatasetWriter(
        directory, metadata={META_SANITIZED: "true"}, roll=RollPolicy(row_group_rows=10_000)
    )
    step = span_s * 1_000_000 / max(n, 1)
    chunk: list[Exchange] = []
    for i in range(n):
        started = T0 + int(i * step)
        chunk.append(
            Exchange(
                id=uuid7(started, i.to_bytes(10, "big")),
                session_id=f"session-{i % sessions}",
                seq=i // sessions,
                started_at=started,
                method="GET",
                host=host,
                port=80,
                path=f"/items/{i % 100}",
                query=[("page", str(i % 7))],
                request_headers=[("Host", host), ("Accept", "application/json")],
                status=200,
                response_headers=[("Content-Type", "application/json")],
                response_body=BODY,
            )
        )
        if len(chunk) == 10_000:
            writer.write_exchanges(chunk)
            chunk = []
    writer.write_exchanges(chunk)
    writer.close()
    return directory


def write_flows(path: Path, n: int, url: str) -> None:
    from mitmproxy import http, io
    from mitmproxy.test import tflow

    with open(path, "wb") as fh:
        writer = io.FlowWriter(fh)
        for i in range(n):
            f = tflow.tflow()
            f.request = http.Request.make(
                "GET", f"{url}/items/{i % 100}?page={i % 7}", headers={"Accept": "application/json"}
            )
            f.response = None
            writer.add(f)


# --- runners -------------------------------------------------------------------------------


# CPU seconds (user + system) of the last command _measured ran: telemetry_overhead.py's figure.
LAST_CPU_S = 0.0


def _measured(cmd: list[str], timeout: float) -> tuple[float, int, str]:
    """Run a command; wall seconds, its peak RSS (KiB) and output (its CPU in LAST_CPU_S)."""
    global LAST_CPU_S
    wrapper = (
        "import resource, subprocess, sys, json;"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
        "u = resource.getrusage(resource.RUSAGE_CHILDREN);"
        "print(json.dumps({'rc': p.returncode, 'out': p.stdout + p.stderr,"
        " 'rss': u.ru_maxrss, 'cpu': u.ru_utime + u.ru_stime}))"
    )
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, timeout=timeout
    )
    wall = time.monotonic() - start
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    LAST_CPU_S = result["cpu"]
    if result["rc"] not in (0,):
        raise RuntimeError(f"{cmd[0]} failed ({result['rc']}): {result['out'][-2000:]}")
    return wall, result["rss"], result["out"]


def run_wrk(url: str, connections: int, seconds: int) -> float:
    if shutil.which("wrk") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True)
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed and `apt-get install -y wrk` failed")
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", f"{url}/items/1?page=1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def run_replay(dataset: Path, url: str, out: Path, *extra: str) -> dict:
    shadowtape = str(Path(sys.executable).with_name("shadowtape"))
    wall, rss, _ = _measured(
        [
            shadowtape,
            "replay",
            str(dataset),
            "--target",
            url,
            "--out",
            str(out),
            "--correlate",
            "off",
            "--overwrite",
            *extra,
        ],
        timeout=1800,
    )
    import polars as pl

    frame = pl.read_parquet(out / "*.parquet", columns=["outcome", "sent_at", "done_at"])
    sent = frame.filter(pl.col("outcome") == "sent")
    span = (sent["done_at"].max() - sent["sent_at"].min()).total_seconds()
    meta = _replay_meta(out)
    return {
        "sent": sent.height,
        "wall_s": round(wall, 2),
        "rps": sent.height / span if span else 0.0,
        "rss_mib": round(rss / 1024, 1),
        "lateness_p50_ms": meta.get("lateness_p50_us", 0) / 1000,
        "lateness_p99_ms": meta.get("lateness_p99_us", 0) / 1000,
    }


def _replay_meta(out: Path) -> dict:
    from shadowtape.schema import dataset_metadata

    return json.loads(dataset_metadata(out, "results")["shadowtape.replay"])


def run_mitm(work: Path, url: str, n: int) -> float:
    """mitmdump's client replay of n flows; its start-up is measured (1 flow) and taken off."""
    mitmdump = str(Path(sys.executable).with_name("mitmdump"))

    def once(count: int) -> float:
        flows = work / f"flows-{count}.mitm"
        write_flows(flows, count, url)
        wall, _, _ = _measured(
            [
                mitmdump,
                "-q",
                "--no-server",
                "--client-replay",
                str(flows),
                "--set",
                "client_replay_concurrency=-1",
            ],
            timeout=1800,
        )
        return wall

    base = once(1)
    full = once(n)
    return n / max(full - base, 1e-6)


_STARTED = time.monotonic()


def _note(text: str) -> None:
    print(f"bench [{time.monotonic() - _STARTED:6.1f} s]: {text}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    args = parser.parse_args()
    quick = args.quick
    conns = 32
    n_max = 3_000 if quick else 20_000
    n_mitm = 1_000 if quick else 5_000
    # RSS: the same number of sends, with 10x more recorded rows streamed through the replay
    # (the rest are written as `limit` skips), so the figure shows whether memory follows the
    # dataset size. Sending 1M requests would take an hour at these rates on 2 shared cores.
    rss_sizes, rss_sends = ((20_000, 200_000), 1_000) if quick else ((100_000, 1_000_000), 10_000)
    lat_n, lat_span = (500, 5.0) if quick else (3_000, 30.0)

    q: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(target=_serve, args=(q,), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{q.get(timeout=30)}"
    work = Path(tempfile.mkdtemp(prefix="shadowtape-bench-"))
    try:
        figures: dict[str, object] = {"quick": quick, "connections": conns, "cpus": os.cpu_count()}
        wrk_rps = run_wrk(url, conns, 5 if quick else 15)
        _note(f"wrk {wrk_rps:.0f} req/s")
        ds = make_dataset(work / "max", n_max, sessions=1000, span_s=600, host="api.example.com")
        st = run_replay(ds, url, work / "out-max", "--speed", "max", "--concurrency", str(conns))
        _note(f"shadowtape --speed max: {st}")
        mitm_rps = run_mitm(work, url, n_mitm)
        _note(f"mitmdump --client-replay {mitm_rps:.0f} req/s")
        figures.update(
            wrk_rps=round(wrk_rps),
            shadowtape_rps=round(st["rps"]),
            shadowtape_requests=st["sent"],
            mitmdump_client_replay_rps=round(mitm_rps),
            ratio_vs_wrk=round(st["rps"] / wrk_rps, 3),
            ratio_vs_mitmdump=round(st["rps"] / mitm_rps, 2),
        )
        lat_ds = make_dataset(
            work / "lat", lat_n, sessions=100, span_s=lat_span, host="api.example.com"
        )
        lat = run_replay(lat_ds, url, work / "out-lat", "--speed", "1", "--concurrency", str(conns))
        _note(f"shadowtape --speed 1: {lat}")
        figures.update(
            speed1_requests=lat_n,
            speed1_recorded_s=lat_span,
            lateness_p50_ms=lat["lateness_p50_ms"],
            lateness_p99_ms=lat["lateness_p99_ms"],
        )
        rss = {}
        for size in rss_sizes:
            d = make_dataset(
                work / f"rss-{size}",
                size,
                sessions=size // 10,
                span_s=size / 10,
                host="api.example.com",
            )
            r = run_replay(
                d,
                url,
                work / f"out-rss-{size}",
                "--speed",
                "max",
                "--concurrency",
                str(conns),
                "--limit",
                str(rss_sends),
            )
            rss[size] = r["rss_mib"]
            _note(f"rss, {size} recorded rows, {rss_sends} sent: {r}")
            shutil.rmtree(d)
            shutil.rmtree(work / f"out-rss-{size}")
        small, big = rss_sizes
        figures.update(
            rss_mib_small=rss[small],
            rss_mib_big=rss[big],
            rss_sizes=list(rss_sizes),
            rss_sends=rss_sends,
            rss_ratio_big_vs_small=round(rss[big] / rss[small], 2),
        )
        print(json.dumps(figures))
    finally:
        server.terminate()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
