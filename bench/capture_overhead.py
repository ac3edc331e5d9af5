"""Capture overhead: bare mitmdump vs mitmdump with the shadowtape addon, and the writer alone.

Same run, same loopback upstream, same load generator (wrk when installed, else a bundled
asyncio client) for: the upstream direct, bare `mitmdump --mode reverse`, mitmdump with the
addon, and `shadowtape capture --workers N` for each N of `--workers` (default 1,2: N proxy
processes on one address). Then the writer alone: exchanges with 1 KB bodies into Parquet on
one core, with RSS sampled to show memory stays flat. Prints one JSON line, with the load
average and, per worker count, the cores the capture processes really got while loaded and
their CPU per request (a shared machine's figures say as much about the neighbours as about
the code: scaling needs free cores, and CPU per request shows what each worker costs).

Targets: addon throughput >= 0.90 x bare mitmdump; added p99 latency <= 1 ms; no drops below
the queue bound; writer >= 50,000 exchanges/s; capture throughput >= 1.7x from 1 to 2 workers.

    python bench/capture_overhead.py --quick    # < 60 s
    python bench/capture_overhead.py            # a few minutes
    python bench/capture_overhead.py --workers 1,2,4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

BODY_1K = (b'{"id": 12345, "name": "widget", "tags": ["a", "b"], "pad": "' + b"x" * 960 + b'"}')[
    :1024
]
KEY = "bench-key-0123456789abcdef0123456789"
ROOT = Path(__file__).resolve().parents[1]
ADDON = ROOT / "src" / "shadowtape" / "capture" / "addon.py"

# --- a fast upstream in its own process ------------------------------------------------------

UPSTREAM_CODE = r"""
import asyncio, sys
BODY = sys.argv[2].encode() * 1
RESP = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
served = 0
class P(asyncio.Protocol):
    def connection_made(self, t): self.t = t; self.buf = b""
    def data_received(self, d):
        global served
        self.buf += d
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0: return
            head = self.buf[:i].lower(); n = 0
            m = head.find(b"content-length:")
            if m >= 0: n = int(head[m+15:].split(b"\r\n")[0])
            if len(self.buf) < i + 4 + n: return
            self.buf = self.buf[i + 4 + n:]
            self.t.write(RESP); served += 1
# Optional: on a second port (argv[3]), how many responses it wrote (bench/capture_offpath).
class Count(asyncio.Protocol):
    def connection_made(self, t): t.write(str(served).encode()); t.close()
async def main():
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(P, "127.0.0.1", int(sys.argv[1]))
    if len(sys.argv) > 3:
        await loop.create_server(Count, "127.0.0.1", int(sys.argv[3]))
    await srv.serve_forever()
asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early ({proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


# --- load generators -------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if not m:
        raise ValueError(f"wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(url: str, seconds: int, connections: int) -> dict:
    out = subprocess.run(
        ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_err = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "requests": requests,
        "p50_ms": p50,
        "p99_ms": p99,
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": sock_err.group(1).strip() if sock_err else "",
    }


async def _client_loop(host: str, port: int, stop: float, lat: list[float]) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    req = f"GET /bench HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    n = 0
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        writer.write(req)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
        await reader.readexactly(length)
        lat.append((time.perf_counter() - t0) * 1000)
        n += 1
    writer.close()
    return n


def run_bundled(url: str, seconds: int, connections: int) -> dict:
    """The fallback load generator: keep-alive GETs over N connections, latency per request."""
    host, port = url.split("//")[1].split("/")[0].split(":")

    async def main() -> tuple[int, list[float]]:
        lat: list[float] = []
        stop = time.perf_counter() + seconds
        counts = await asyncio.gather(
            *(_client_loop(host, int(port), stop, lat) for _ in range(connections))
        )
        return sum(counts), lat

    t0 = time.perf_counter()
    n, lat = asyncio.run(main())
    elapsed = time.perf_counter() - t0
    lat.sort()
    return {
        "rps": n / elapsed,
        "requests": n,
        "p50_ms": lat[len(lat) // 2] if lat else None,
        "p99_ms": lat[int(len(lat) * 0.99)] if lat else None,
        "non_2xx": 0,
        "socket_errors": "",
    }


# --- the three proxy setups ------------------------------------------------------------------


def mitmdump_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "mitmdump"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from mitmproxy.tools.main import mitmdump; mitmdump()"]


def run_proxy(upstream: str, load, seconds, conns, env, addon_out: Path | None) -> dict:
    port = free_port()
    cmd = [
        *mitmdump_cmd(),
        "-q",
        "--mode",
        f"reverse:{upstream}@127.0.0.1:{port}",
        "--set",
        "connection_strategy=lazy",
    ]
    if addon_out is not None:
        cmd += ["-s", str(ADDON), "--set", f"shadowtape_out={addon_out}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port, proc)
        load(f"http://127.0.0.1:{port}/bench", 1, conns)  # warm up: connections, caches
        result = load(f"http://127.0.0.1:{port}/bench", seconds, conns)
        # Latency on one connection: at saturation p99 is queueing, not the cost per request.
        single = load(f"http://127.0.0.1:{port}/bench", seconds, 1)
        result["c1_p50_ms"], result["c1_p99_ms"] = single["p50_ms"], single["p99_ms"]
    finally:
        interrupt(proc)
    if addon_out is not None:
        result.update(addon_counters(addon_out))
    return result


def interrupt(proc: subprocess.Popen) -> None:
    """Ctrl-C, as a user stops a proxy (files finalized), and a kill if it does not stop."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) so far of a process and its children, from /proc; None
    where there is no /proc. With it a run shows how many cores the workers really got: on
    a shared machine, fewer than there are."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, grew = {pid}, True
    while grew:
        more = {p for p, parent in parents.items() if parent in tree} - tree
        grew = bool(more)
        tree |= more
    return sum(times.get(p, 0.0) for p in tree)


def shadowtape_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "shadowtape"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "shadowtape"]


def run_capture(upstream: str, load, seconds, conns, env, out: Path, workers: int) -> dict:
    """`shadowtape capture --workers N` in front of the upstream, under the same load."""
    port = free_port()
    cmd = [*shadowtape_cmd(), "capture", "--upstream", upstream, "--listen", f"127.0.0.1:{port}"]
    cmd += ["--out", str(out), "--workers", str(workers)]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        # Not wait_port: the parent's sockets accept before the workers serve them; the
        # line says every worker is serving.
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("listening on"):
                break
        else:
            raise RuntimeError(f"shadowtape capture exited before listening ({proc.wait()})")
        load(f"http://127.0.0.1:{port}/bench", 1, conns)  # warm up every worker's caches
        cpu0, t0 = tree_cpu_seconds(proc.pid), time.monotonic()
        result = load(f"http://127.0.0.1:{port}/bench", seconds, conns)
        cpu1, t1 = tree_cpu_seconds(proc.pid), time.monotonic()
        if cpu0 is not None and cpu1 is not None:
            result["cores_used"] = (cpu1 - cpu0) / (t1 - t0)
            result["cpu_us_per_request"] = (cpu1 - cpu0) / max(result["requests"], 1) * 1e6
    finally:
        interrupt(proc)
    result.update(addon_counters(out))
    return result


def addon_counters(out: Path) -> dict:
    sys.path.insert(0, str(ROOT / "src"))
    from shadowtape.capture.inspection import inspect_dataset

    report = inspect_dataset(out)
    c = report.capture_counters
    return {
        "rows_on_disk": report.rows,
        "recorded": c.get("written", 0),
        "dropped": sum(v for k, v in c.items() if k.startswith("dropped_")),
    }


# --- the writer alone ------------------------------------------------------------------------


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_writer(total: int, out: Path) -> dict:
    sys.path.insert(0, str(ROOT / "src"))
    from shadowtape.capture.writer import CaptureCounters, ExchangeSink, WriterSettings
    from shadowtape.schema import Exchange, uuid7

    batch_size = 2000
    t_base = 1_700_000_000_000_000
    headers = [("Host", "api.example"), ("Accept", "application/json"), ("User-Agent", "b/1")]
    template = [
        Exchange(
            id=uuid7(t_base + i, os.urandom(10)),
            session_id=f"{i % 97:032x}",
            seq=i,
            started_at=t_base + i,
            method="GET",
            host="api.example",
            port=443,
            path=f"/items/{i}",
            query=[("page", str(i % 10))],
            request_headers=headers,
            request_body=b"",
            status=200,
            reason="OK",
            response_headers=[("Content-Type", "application/json")],
            response_body=BODY_1K[:-8] + f"{i:08d}".encode(),
            request_sent_at=t_base + i + 10,
            response_started_at=t_base + i + 200,
            response_ended_at=t_base + i + 250,
            capture_id="bench",
        )
        for i in range(batch_size)
    ]
    sink = ExchangeSink(WriterSettings(out, "bench", {}, roll_seconds=None), CaptureCounters())
    rss = [rss_mib()]
    marks: dict[str, float] = {}
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    written = 0
    while written < total:
        sink.write(template)
        written += batch_size
        rss.append(rss_mib())
        for pct in (25, 50, 75):
            if f"{pct}%" not in marks and written >= total * pct // 100:
                marks[f"{pct}%"] = round(rss[-1], 1)
    sink.close()
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    rss.append(rss_mib())
    return {
        "writer_exchanges": written,
        "writer_per_s": round(written / elapsed),
        "writer_per_cpu_s": round(written / cpu) if cpu else None,
        "writer_files": len(sink.files),
        "writer_bytes": sink.bytes_written,
        "writer_rss_mib_start": round(rss[0], 1),
        "writer_rss_mib_at": marks,
        "writer_rss_mib_max": round(max(rss), 1),
        "writer_rss_mib_end": round(rss[-1], 1),
    }


def _median_of(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if key in r]
    return round(median(values), 2) if values else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small run, under a minute")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--workers", default="1,2", help="capture --workers counts (1,2)")
    args = ap.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",")]
    load_start = [round(x, 2) for x in os.getloadavg()]
    seconds = 3 if args.quick else 15
    # Bare and addon runs alternate, several rounds, medians reported: on a shared machine
    # one run of each says more about the neighbours than about the addon.
    rounds = 2 if args.quick else 3
    writer_total = 100_000 if args.quick else 1_000_000
    load = run_wrk if shutil.which("wrk") else run_bundled

    env = dict(os.environ)
    env["SHADOWTAPE_KEY"] = KEY
    work = Path(tempfile.mkdtemp(prefix="shadowtape-bench-"))
    env["HOME"] = str(work / "home")
    up_port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-c", UPSTREAM_CODE, str(up_port), BODY_1K.decode()],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_port(up_port, upstream)
        up_url = f"http://127.0.0.1:{up_port}"
        direct = load(f"{up_url}/bench", seconds, args.connections)
        bares, addons = [], []
        by_workers: dict[int, list[dict]] = {w: [] for w in worker_counts}
        for i in range(rounds):
            bares.append(run_proxy(up_url, load, seconds, args.connections, env, None))
            out = work / f"raw{i}"
            addons.append(run_proxy(up_url, load, seconds, args.connections, env, out))
            for w in worker_counts:
                out = work / f"raw{i}-w{w}"
                by_workers[w].append(
                    run_capture(up_url, load, seconds, args.connections, env, out, w)
                )
    finally:
        upstream.kill()
    writer = bench_writer(writer_total, work / "writer")
    shutil.rmtree(work, ignore_errors=True)
    keys = ("rps", "p50_ms", "p99_ms", "c1_p50_ms", "c1_p99_ms")
    bare = {k: median(r[k] for r in bares) for k in keys}
    addon = {k: median(r[k] for r in addons) for k in keys}
    for k in ("requests", "recorded", "rows_on_disk", "dropped"):
        addon[k] = sum(r[k] for r in addons)
    non_2xx = sum(r["non_2xx"] for r in bares + addons)
    workers_figures = {}
    for w, runs in by_workers.items():
        rps = median(r["rps"] for r in runs)
        workers_figures[str(w)] = {
            "rps": round(rps, 1),
            "rps_runs": [round(r["rps"], 1) for r in runs],
            "ratio_vs_bare": round(rps / bare["rps"], 3),
            # While loaded: cores the workers got, and CPU per request (start-up excluded).
            "cores_used": _median_of(runs, "cores_used"),
            "cpu_us_per_request": _median_of(runs, "cpu_us_per_request"),
            "requests": sum(r["requests"] for r in runs),
            "recorded": sum(r["recorded"] for r in runs),
            "rows_on_disk": sum(r["rows_on_disk"] for r in runs),
            "dropped": sum(r["dropped"] for r in runs),
        }
    scaling = None
    if "1" in workers_figures and "2" in workers_figures:
        scaling = round(workers_figures["2"]["rps"] / workers_figures["1"]["rps"], 3)
    result = {
        "bench": "capture_overhead",
        "quick": args.quick,
        "load_generator": load.__name__.removeprefix("run_"),
        "connections": args.connections,
        "seconds": seconds,
        "rounds": rounds,
        "bare_rps_runs": [round(r["rps"], 1) for r in bares],
        "addon_rps_runs": [round(r["rps"], 1) for r in addons],
        "cpus": os.cpu_count(),
        "direct_rps": round(direct["rps"], 1),
        "bare_mitmdump_rps": round(bare["rps"], 1),
        "addon_mitmdump_rps": round(addon["rps"], 1),
        "throughput_ratio_addon_vs_bare": round(addon["rps"] / bare["rps"], 3),
        "saturated_bare_p99_ms": bare["p99_ms"],
        "saturated_addon_p99_ms": addon["p99_ms"],
        "c1_bare_p50_ms": bare["c1_p50_ms"],
        "c1_addon_p50_ms": addon["c1_p50_ms"],
        "c1_bare_p99_ms": bare["c1_p99_ms"],
        "c1_addon_p99_ms": addon["c1_p99_ms"],
        "added_p99_ms": round(addon["c1_p99_ms"] - bare["c1_p99_ms"], 3),
        "addon_requests": addon["requests"],
        "addon_recorded": addon["recorded"],
        "addon_rows_on_disk": addon["rows_on_disk"],
        "addon_dropped": addon["dropped"],
        "non_2xx": non_2xx,
        **writer,
        "capture_by_workers": workers_figures,
        "capture_scaling_1_to_2_workers": scaling,
        "load_average_start": load_start,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "targets_met": {
            "capture_scaling_1_to_2>=1.7": scaling is not None and scaling >= 1.7,
            "throughput_ratio>=0.90": addon["rps"] / bare["rps"] >= 0.90,
            "added_p99<=1ms": addon["c1_p99_ms"] - bare["c1_p99_ms"] <= 1.0,
            "no_drops": addon["dropped"] == 0,
            "writer>=50k/s": writer["writer_per_s"] >= 50_000,
            "writer>=50k/cpu_s": (writer["writer_per_cpu_s"] or 0) >= 50_000,
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
