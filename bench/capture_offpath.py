"""Off-path capture vs the service alone, and the in-path addon's added latency: one JSON line.

Same upstream (capture_overhead's asyncio server, 1 KB JSON bodies, counting what it serves
on a control port that is not captured), same wrk load, same run:

1. direct: wrk against the upstream, nothing recording (before and after the capture run).
2. off path: `shadowtape capture --interface lo --port P` running while wrk runs the same
   load; then SIGTERM, the ring is dissected to the end. Requests served (counted at the
   server) vs exchanges recorded; served rate with capture vs without. Then dumpcap alone
   writing the same ring (no dissection): what packet capture itself costs the service, so
   the off-path ratio can be read as capture's share and dissection's.
3. dissection alone: a dumpcap file of the same traffic imported with `shadowtape import`,
   exchanges per CPU-second of shadowtape and its tshark processes (and per wall second
   with one tshark per CPU).
4. in path: bare `mitmdump --mode reverse` saturated with wrk, then an open-loop fixed-rate
   load at 50% of that rate through bare mitmdump and through mitmdump with the addon,
   alternating; latency measured from each request's scheduled time (no coordinated
   omission); added p50/p99 = addon - bare (medians over rounds).

Targets: 0 exchanges lost; dissection >= 3,000 exchanges/s per core; served rate with
off-path capture >= 0.95 x without; in-path added p99 <= 1 ms.

    python bench/capture_offpath.py --quick    # about 2 minutes
    python bench/capture_offpath.py            # 10 s runs; several minutes (dissection)
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import capture_overhead as co  # noqa: E402

ROOT = co.ROOT
SHADOWTAPE = [sys.executable, "-m", "shadowtape"]


def served(count_port: int) -> int:
    with socket.create_connection(("127.0.0.1", count_port), timeout=10) as s:
        data = b""
        while chunk := s.recv(64):
            data += chunk
    return int(data)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def rows_in(out: Path) -> int:
    sys.path.insert(0, str(ROOT / "src"))
    from shadowtape.capture.inspection import inspect_dataset

    return inspect_dataset(out).rows


def packet_counters(out: Path) -> dict[str, int]:
    from shadowtape.capture.inspection import inspect_dataset

    return inspect_dataset(out).packet_counters


def wait_rusage(proc: subprocess.Popen, timeout: float) -> tuple[int, float]:
    """Wait for a child; its CPU seconds, with the children it waited for (tshark, dumpcap)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_utime + usage.ru_stime
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("capture did not finish")


# --- off path ------------------------------------------------------------------------------


def offpath_run(port: int, count_port: int, seconds: int, conns: int, work: Path, env) -> dict:  # noqa: ANN001
    out = work / "offpath"
    proc = subprocess.Popen(
        [*SHADOWTAPE, "capture", "--interface", "lo", "--port", str(port), "--out", str(out),
         "--ring-dir", str(work)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("capturing on"):
        proc.kill()
        raise RuntimeError(f"capture did not start: {line} {proc.stderr.read()}")  # type: ignore[union-attr]
    before = served(count_port)
    t0 = time.monotonic()
    result = co.run_wrk(f"http://127.0.0.1:{port}/bench", seconds, conns)
    wall = time.monotonic() - t0
    time.sleep(1.0)  # the last responses reach the ring
    after = served(count_port)
    stopped = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc, cpu = wait_rusage(proc, 3600)
    drain = time.monotonic() - stopped
    summary = proc.stdout.read()
    if rc != 0:
        raise RuntimeError(f"capture failed ({rc}): {summary} {proc.stderr.read()}")  # type: ignore[union-attr]
    recorded = rows_in(out)
    counters = packet_counters(out)
    shutil.rmtree(out, ignore_errors=True)
    return {
        "served": after - before,
        "served_rps": round((after - before) / wall, 1),
        "wrk_rps": result["rps"],
        "recorded": recorded,
        "lost": (after - before) - recorded,
        "drain_s": round(drain, 1),
        "cpu_s": round(cpu, 1),
        "exchanges_per_cpu_s": round(recorded / cpu) if cpu else None,
        "packets_dropped_kernel": counters.get("packets_dropped_kernel", 0),
        "packets_dropped_capture": counters.get("packets_dropped_capture", 0),
        "requests_without_response": counters.get("requests_without_response", 0),
        "exchanges_rejoined": counters.get("exchanges_rejoined", 0),
        "ring_files": counters.get("inputs", 0),
    }


def direct_run(port: int, count_port: int, seconds: int, conns: int) -> dict:
    before = served(count_port)
    t0 = time.monotonic()
    result = co.run_wrk(f"http://127.0.0.1:{port}/bench", seconds, conns)
    wall = time.monotonic() - t0
    after = served(count_port)
    return {"served": after - before, "served_rps": round((after - before) / wall, 1),
            "wrk_rps": result["rps"]}  # fmt: skip


def dumpcap_only_run(port: int, count_port: int, seconds: int, conns: int, work: Path) -> dict:
    """What packet capture itself costs the service: dumpcap writing the same ring, nothing
    dissecting. The off-path figure is the sum of this and dissection's share."""
    ring = work / "dumpcap-only"
    ring.mkdir()
    cap = subprocess.Popen(
        ["dumpcap", "-q", "-i", "lo", "-B", "256", "-f", f"tcp port {port}",
         "-b", "filesize:65536", "-w", str(ring / "r.pcapng")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(1.5)
    try:
        result = direct_run(port, count_port, seconds, conns)
    finally:
        cap.send_signal(signal.SIGTERM)
        cap.wait(60)
        shutil.rmtree(ring, ignore_errors=True)
    return result


def dissection_only(port: int, seconds: int, conns: int, work: Path, env) -> dict:  # noqa: ANN001
    """tshark's and shadowtape's cost alone: a dumpcap file of the same load, imported."""
    pcap = work / "load.pcapng"
    cap = subprocess.Popen(
        ["dumpcap", "-q", "-i", "lo", "-B", "64", "-f", f"tcp port {port}", "-w", str(pcap)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(1.5)
    co.run_wrk(f"http://127.0.0.1:{port}/bench", seconds, conns)
    time.sleep(0.5)
    cap.send_signal(signal.SIGTERM)
    cap.wait(60)
    parts = work / "parts"
    parts.mkdir()
    # files of ~50 MB, as a ring writes them, so each CPU gets a tshark
    subprocess.run(["editcap", "-c", "100000", str(pcap), str(parts / "p.pcapng")], check=True)
    size = pcap.stat().st_size
    pcap.unlink()
    results = {}
    for workers in (1, os.cpu_count() or 1):
        out = work / f"import{workers}"
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [*SHADOWTAPE, "import", *sorted(map(str, parts.iterdir())), "--out", str(out),
             "--port", str(port), "--workers", str(workers)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )  # fmt: skip
        rc, cpu = wait_rusage(proc, 3600)
        wall = time.monotonic() - t0
        if rc != 0:
            raise RuntimeError(f"import failed: {proc.stderr.read()}")  # type: ignore[union-attr]
        n = rows_in(out)
        shutil.rmtree(out, ignore_errors=True)
        results[workers] = {"exchanges": n, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}
    shutil.rmtree(parts, ignore_errors=True)
    one = results[1]
    many = results[max(results)]
    return {
        "dissect_pcap_mb": round(size / 1e6),
        "dissect_exchanges": one["exchanges"],
        "dissect_per_cpu_s": round(one["exchanges"] / one["cpu_s"]),
        "dissect_wall_per_s_1_worker": round(one["exchanges"] / one["wall_s"]),
        "dissect_wall_per_s_all_workers": round(many["exchanges"] / many["wall_s"]),
        "dissect_workers": max(results),
        "dissect_runs": results,
    }


# --- in path: fixed-rate latency -------------------------------------------------------------


async def _fixed_rate(port: int, rate: float, seconds: float, conns: int) -> list[float]:
    """Open loop: request i is due at i/rate; latency counts from then, so a stall shows."""
    lat: list[float] = []
    per_conn = rate / conns
    start = time.perf_counter() + 0.2
    req = f"GET /bench HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()

    async def one(k: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        i = 0
        while True:
            due = start + (i + k / conns) / per_conn
            if due - start > seconds:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
            await reader.readexactly(length)
            lat.append((time.perf_counter() - due) * 1000)
            i += 1
        writer.close()

    await asyncio.gather(*(one(k) for k in range(conns)))
    return lat


def fixed_rate(port: int, rate: float, seconds: float, conns: int = 16) -> dict:
    lat = sorted(asyncio.run(_fixed_rate(port, rate, seconds, conns)))
    return {
        "n": len(lat),
        "p50_ms": round(lat[len(lat) // 2], 3),
        "p99_ms": round(lat[int(len(lat) * 0.99)], 3),
    }


def start_proxy(upstream: str, env, addon_out: Path | None) -> tuple[subprocess.Popen, int]:  # noqa: ANN001
    port = co.free_port()
    cmd = [*co.mitmdump_cmd(), "-q", "--mode", f"reverse:{upstream}@127.0.0.1:{port}",
           "--set", "connection_strategy=lazy"]  # fmt: skip
    if addon_out is not None:
        cmd += ["-s", str(co.ADDON), "--set", f"shadowtape_out={addon_out}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    co.wait_port(port, proc)
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()


def in_path(upstream: str, seconds: int, rounds: int, conns: int, work: Path, env) -> dict:  # noqa: ANN001
    proc, port = start_proxy(upstream, env, None)
    try:
        co.run_wrk(f"http://127.0.0.1:{port}/bench", 1, conns)
        saturated = co.run_wrk(f"http://127.0.0.1:{port}/bench", seconds, conns)["rps"]
    finally:
        stop(proc)
    rate = saturated * 0.5
    bares, addons = [], []
    for i in range(rounds):
        for kind in ("bare", "addon"):
            out = work / f"addon{i}" if kind == "addon" else None
            proc, port = start_proxy(upstream, env, out)
            try:
                fixed_rate(port, rate, 1.0)  # warm up
                result = fixed_rate(port, rate, seconds)
            finally:
                stop(proc)
            (addons if kind == "addon" else bares).append(result)
    bare = {k: median(r[k] for r in bares) for k in ("p50_ms", "p99_ms")}
    addon = {k: median(r[k] for r in addons) for k in ("p50_ms", "p99_ms")}
    return {
        "bare_mitmdump_saturated_rps": round(saturated, 1),
        "fixed_rate_rps": round(rate, 1),
        "bare_p50_ms": bare["p50_ms"],
        "bare_p99_ms": bare["p99_ms"],
        "addon_p50_ms": addon["p50_ms"],
        "addon_p99_ms": addon["p99_ms"],
        "added_p50_ms": round(addon["p50_ms"] - bare["p50_ms"], 3),
        "added_p99_ms": round(addon["p99_ms"] - bare["p99_ms"], 3),
        "in_path_rounds": [{"bare": b, "addon": a} for b, a in zip(bares, addons, strict=True)],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 s runs instead of 10 s")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--skip-in-path", action="store_true", help="off path only")
    args = ap.parse_args()
    for tool in ("wrk", "dumpcap", "tshark", "editcap"):
        if shutil.which(tool) is None:
            sys.exit(f"capture_offpath: {tool} is not installed")
    seconds = 3 if args.quick else 10
    rounds = 2 if args.quick else 3
    env = dict(os.environ)
    env["SHADOWTAPE_KEY"] = co.KEY
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    work = Path(tempfile.mkdtemp(prefix="shadowtape-offpath-bench-"))
    env["HOME"] = str(work / "home")
    load_start = load_average()
    port, count_port = co.free_port(), co.free_port()
    upstream = subprocess.Popen(
        # capture_overhead's upstream, counting on a port the capture filter leaves out
        [sys.executable, "-c", co.UPSTREAM_CODE, str(port), co.BODY_1K.decode(), str(count_port)],
        stdout=subprocess.DEVNULL,
    )
    try:
        co.wait_port(port, upstream)
        co.run_wrk(f"http://127.0.0.1:{port}/bench", 1, args.connections)  # warm up
        direct_before = direct_run(port, count_port, seconds, args.connections)
        offpath = offpath_run(port, count_port, seconds, args.connections, work, env)
        dumpcap_only = dumpcap_only_run(port, count_port, seconds, args.connections, work)
        direct_after = direct_run(port, count_port, seconds, args.connections)
        dissect = dissection_only(port, min(seconds, 5), args.connections, work, env)
        inpath = (
            {}
            if args.skip_in_path
            else in_path(f"http://127.0.0.1:{port}", seconds, rounds, args.connections, work, env)
        )
    finally:
        upstream.kill()
        shutil.rmtree(work, ignore_errors=True)
    direct_rps = (direct_before["served_rps"] + direct_after["served_rps"]) / 2
    ratio = offpath["served_rps"] / direct_rps
    result = {
        "bench": "capture_offpath",
        "quick": args.quick,
        "seconds": seconds,
        "connections": args.connections,
        "cpus": os.cpu_count(),
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "direct_served_rps_before": direct_before["served_rps"],
        "direct_served_rps_after": direct_after["served_rps"],
        "offpath_served_rps": offpath["served_rps"],
        "served_ratio_offpath_vs_direct": round(ratio, 3),
        "dumpcap_only_served_rps": dumpcap_only["served_rps"],
        "served_ratio_dumpcap_only_vs_direct": round(dumpcap_only["served_rps"] / direct_rps, 3),
        "served_ratio_offpath_vs_dumpcap_only": round(
            offpath["served_rps"] / dumpcap_only["served_rps"], 3
        ),
        "offpath_served": offpath["served"],
        "offpath_recorded": offpath["recorded"],
        "offpath_lost": offpath["lost"],
        **{
            f"offpath_{k}": v
            for k, v in offpath.items()
            if k not in ("served", "recorded", "lost", "served_rps")
        },
        **dissect,
        **inpath,
        "peak_rss_mib_bench": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    result["targets_met"] = {
        "lost==0": offpath["lost"] == 0,
        "dissect>=3000/cpu_s": dissect["dissect_per_cpu_s"] >= 3000,
        "served_ratio>=0.95": ratio >= 0.95,
    }
    if inpath:
        result["targets_met"]["added_p99<=1ms"] = inpath["added_p99_ms"] <= 1.0
    print(json.dumps(result))


if __name__ == "__main__":
    main()
