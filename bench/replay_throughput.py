"""Replay throughput, schedule accuracy and memory, against named peers in the same run.

Peers, all against the same loopback server with the same connection count:
  * wrk (a C load generator: the ceiling for this server on this machine),
  * `mitmdump --client-replay` on the same requests, written as a .mitm flow file here.
Figures: requests/s of each and the ratios, for `replay --workers N` at each N of
`--workers` (default 1,2: the curve a bigger machine extends) and for the h11 engine (the send
path before httptools) at one worker; dispatch lateness p50/p99 at --speed 1 over a recording
of 3,000 requests in 30 s, per worker count; peak RSS of the replay at 100k and 1M recorded
requests; and the rate with a baseline (`--baseline`: two sends per request, the baseline on a
second address of the same server process, so the server's share of the CPUs is the same), per
request sent, against single-target replay (target: at least 0.8x). The load average at the
start and end goes in the line too: on a shared machine it says how far to trust the rest.

Targets: >= 3,000 requests/s per worker process; >= 0.25x wrk with --workers 2; lateness
p99 <= 5 ms at --speed 1; with a baseline >= 0.8x single-target.

Prints ONE JSON line. `--quick` shrinks every size (under a minute). Not a test: figures are
indicative on a shared machine.

    .venv/bin/python bench/replay_throughput.py [--quick] [--workers 1,2,4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shadowtape.schema import DatasetWriter, Exchange, RollPolicy, uuid7

T0 = 1_750_000_000_000_000
BASELINE_PAIRS = 3
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
    """One server process listening on two loopback addresses: one per replay side."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        servers = [
            await loop.create_server(_Http, host, 0, backlog=1024)
            for host in ("127.0.0.1", "127.0.0.2")
        ]
        port_queue.put([s.sockets[0].getsockname()[1] for s in servers])
        await asyncio.gather(*(s.serve_forever() for s in servers))

    asyncio.run(main())


# --- inputs ------------------------------------------------------------------------------


def make_dataset(directory: Path, n: int, sessions: int, span_s: float, host: str) -> Path:
    """n GET exchanges spread over `sessions` sessions and `span_s` recorded seconds."""
    # Made up here, no user data: replayed with --allow-unsanitized (a sanitized flag would
    # need the manifest only sanitize writes).
    writer = DatasetWriter(directory, roll=RollPolicy(row_group_rows=10_000))
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


# CPU seconds (user + system) of the last command _measured ran: telemetry_overhead.py's figure,
# and on a shared machine a steadier measure of the command's own cost than its wall time.
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
            "--allow-unsanitized",
            *extra,
        ],
        timeout=1800,
    )
    import polars as pl

    columns = ["outcome", "sent_at", "done_at"]
    frame = pl.read_parquet(out / "*.parquet", columns=columns)
    sent = frame.filter(pl.col("outcome") == "sent")
    first, last, sends = sent["sent_at"].min(), sent["done_at"].max(), sent.height
    if "--baseline" in extra:
        # Every send counts, the baseline's too: the rate is per request sent.
        both = pl.read_parquet(
            out / "*.parquet", columns=["baseline_outcome", "baseline_sent_at", "baseline_done_at"]
        ).filter(pl.col("baseline_outcome") == "sent")
        first = min(first, both["baseline_sent_at"].min())
        last = max(last, both["baseline_done_at"].max())
        sends += both.height
    span = (last - first).total_seconds()
    meta = _replay_meta(out)
    return {
        "sent": sends,
        "wall_s": round(wall, 2),
        "rps": sends / span if span else 0.0,
        "cpu_s": round(LAST_CPU_S, 3),
        "rss_mib": round(rss / 1024, 1),
        "lateness_p50_ms": meta.get("lateness_p50_us", 0) / 1000,
        "lateness_p99_ms": meta.get("lateness_p99_us", 0) / 1000,
    }


def replay_cpu_us(run: dict) -> float:
    """CPU (user + system, every process of the run, start-up included) per request sent."""
    return round(LAST_CPU_S / max(run["sent"], 1) * 1e6, 1)


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
    parser.add_argument(
        "--workers", default="1,2", help="worker counts to measure, comma-separated (1,2)"
    )
    args = parser.parse_args()
    quick = args.quick
    worker_counts = [int(w) for w in args.workers.split(",")]
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
    port, baseline_port = q.get(timeout=30)
    url = f"http://127.0.0.1:{port}"
    baseline_url = f"http://127.0.0.2:{baseline_port}"
    work = Path(tempfile.mkdtemp(prefix="shadowtape-bench-"))
    try:
        figures: dict[str, object] = {
            "bench": "replay_throughput",
            "quick": quick,
            "connections": conns,
            "cpus": os.cpu_count(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        }
        wrk_rps = run_wrk(url, conns, 5 if quick else 15)
        _note(f"wrk {wrk_rps:.0f} req/s")
        ds = make_dataset(work / "max", n_max, sessions=1000, span_s=600, host="api.example.com")
        speed_max = ("--speed", "max", "--concurrency", str(conns))
        by_workers: dict[str, dict[str, object]] = {}
        for w in worker_counts:
            st = run_replay(ds, url, work / f"out-max-{w}", *speed_max, "--workers", str(w))
            cpu_us = replay_cpu_us(st)
            _note(f"shadowtape --speed max --workers {w}: {st}, {cpu_us} µs CPU per request")
            by_workers[str(w)] = {
                "rps": round(st["rps"]),
                "rps_per_worker": round(st["rps"] / w),
                "ratio_vs_wrk": round(st["rps"] / wrk_rps, 3),
                "cpu_us_per_request": cpu_us,
            }
        h11 = run_replay(ds, url, work / "out-max-h11", *speed_max, "--http1-engine", "h11")
        h11_cpu = replay_cpu_us(h11)
        _note(f"shadowtape --speed max --http1-engine h11: {h11}, {h11_cpu} µs CPU per request")
        # With a baseline: the same requests, each also sent to the baseline. Pairs of runs,
        # interleaved, the median ratio: on a shared machine one pair is mostly noise.
        single_args = ("--speed", "max", "--concurrency", str(conns))
        # The CPU a run spends whatever it sends (start-up, scanning and writing every row):
        # the same dataset with --limit 1, per mode, taken off before dividing by the sends.
        fixed = {
            mode: run_replay(ds, url, work / f"out-fixed-{mode}", *single_args, "--limit", "1",
                             *(("--baseline", baseline_url) if mode == "baseline" else ()))
            for mode in ("single", "baseline")
        }  # fmt: skip
        pairs = []
        for i in range(BASELINE_PAIRS):
            runs = {}
            order = ("single", "baseline") if i % 2 == 0 else ("baseline", "single")
            for mode in order:
                extra = ("--baseline", baseline_url) if mode == "baseline" else ()
                runs[mode] = run_replay(ds, url, work / f"out-{mode}", *single_args, *extra)
            _note(f"pair {i + 1}: {runs}")
            pairs.append(runs)
        for p in pairs:
            for mode, r in p.items():
                r["cpu_us_per_send"] = round(
                    (r["cpu_s"] - fixed[mode]["cpu_s"]) / r["sent"] * 1e6, 1
                )
        rate = statistics.median(p["baseline"]["rps"] / p["single"]["rps"] for p in pairs)
        cpu = statistics.median(
            p["single"]["cpu_us_per_send"] / p["baseline"]["cpu_us_per_send"] for p in pairs
        )
        figures.update(
            baseline_pairs=BASELINE_PAIRS,
            baseline_sends=pairs[0]["baseline"]["sent"],
            baseline_sends_per_s=round(statistics.median(p["baseline"]["rps"] for p in pairs)),
            single_target_sends_per_s=round(statistics.median(p["single"]["rps"] for p in pairs)),
            baseline_ratio_vs_single=round(rate, 3),
            baseline_cpu_us_per_send=statistics.median(
                p["baseline"]["cpu_us_per_send"] for p in pairs
            ),
            single_cpu_us_per_send=statistics.median(p["single"]["cpu_us_per_send"] for p in pairs),
            # Sends per CPU second (net of the fixed cost), baseline over single: the
            # replay's own cost per send, which the machine's load does not move.
            baseline_cpu_ratio_vs_single=round(cpu, 3),
            fixed_cpu_s={mode: r["cpu_s"] for mode, r in fixed.items()},
        )
        mitm_rps = run_mitm(work, url, n_mitm)
        _note(f"mitmdump --client-replay {mitm_rps:.0f} req/s")
        one = by_workers[str(worker_counts[0])]
        figures.update(
            wrk_rps=round(wrk_rps),
            shadowtape_rps=one["rps"],
            shadowtape_requests=n_max,
            mitmdump_client_replay_rps=round(mitm_rps),
            ratio_vs_wrk=one["ratio_vs_wrk"],
            ratio_vs_mitmdump=round(one["rps"] / mitm_rps, 2),
            h11_rps=round(h11["rps"]),
            h11_ratio_vs_wrk=round(h11["rps"] / wrk_rps, 3),
            h11_cpu_us_per_request=h11_cpu,
        )
        lat_ds = make_dataset(
            work / "lat", lat_n, sessions=100, span_s=lat_span, host="api.example.com"
        )
        for w in worker_counts:
            lat = run_replay(
                lat_ds,
                url,
                work / f"out-lat-{w}",
                *("--speed", "1", "--concurrency", str(conns), "--workers", str(w)),
            )
            _note(f"shadowtape --speed 1 --workers {w}: {lat}")
            by_workers[str(w)].update(
                lateness_p50_ms=lat["lateness_p50_ms"], lateness_p99_ms=lat["lateness_p99_ms"]
            )
        figures.update(
            speed1_requests=lat_n,
            speed1_recorded_s=lat_span,
            lateness_p50_ms=one["lateness_p50_ms"],
            lateness_p99_ms=one["lateness_p99_ms"],
            by_workers=by_workers,
        )
        figures["targets_met"] = {
            f"rps_per_worker>=3000 (--workers {w})": f["rps_per_worker"] >= 3000
            for w, f in by_workers.items()
        }
        if "2" in by_workers:
            figures["targets_met"]["ratio_vs_wrk>=0.25 (--workers 2)"] = (
                by_workers["2"]["ratio_vs_wrk"] >= 0.25
            )
        for w, f in by_workers.items():
            figures["targets_met"][f"lateness_p99<=5ms (--workers {w})"] = (
                f["lateness_p99_ms"] <= 5.0
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
        figures["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(figures))
    finally:
        server.terminate()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
