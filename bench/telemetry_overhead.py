"""Replay throughput with OpenTelemetry off vs the code before telemetry (main), and on.

Peers, in the same run, alternating rounds against the same loopback server and dataset
(replay_throughput.py's): `before` is `git archive main` (the replay without any telemetry
code), `off` is this checkout with no endpoint configured, `on` exports to a loopback OTLP
sink that answers 200. Prints ONE JSON line with, for each, the median requests/s and the
median CPU time of the replay process per request (user + system, from rusage: far less
sensitive than throughput to other load on a shared machine), and the ratios off/before
(the cost of telemetry when off: should be ~1.0) and on/off.

    .venv/bin/python bench/telemetry_overhead.py [--requests N] [--rounds R] [--base REF]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import replay_throughput  # noqa: E402
from replay_throughput import _serve, make_dataset, run_replay  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _sink() -> str:
    class Sink(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def _export_base(ref: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "src"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--base", default="main", help="git ref without telemetry [main]")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shadowtape-bench-otel-"))
    ports: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(target=_serve, args=(ports,), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{ports.get(timeout=30)}"
    sink = _sink()
    base_src = _export_base(args.base, work)
    ds = make_dataset(work / "ds", args.requests, 200, 60.0, "127.0.0.1")
    common = ("--speed", "max", "--concurrency", str(args.concurrency))
    rps: dict[str, list[float]] = {"before": [], "off": [], "on": []}
    cpu: dict[str, list[float]] = {"before": [], "off": [], "on": []}
    saved = os.environ.get("PYTHONPATH")
    try:
        for _ in range(args.rounds):
            os.environ["PYTHONPATH"] = str(base_src)
            rps["before"].append(run_replay(ds, url, work / "out-before", *common)["rps"])
            cpu["before"].append(replay_throughput.LAST_CPU_S / args.requests * 1e6)
            if saved is None:
                os.environ.pop("PYTHONPATH")
            else:
                os.environ["PYTHONPATH"] = saved
            rps["off"].append(run_replay(ds, url, work / "out-off", *common)["rps"])
            cpu["off"].append(replay_throughput.LAST_CPU_S / args.requests * 1e6)
            on = run_replay(ds, url, work / "out-on", *common, "--otlp-endpoint", sink)
            rps["on"].append(on["rps"])
            cpu["on"].append(replay_throughput.LAST_CPU_S / args.requests * 1e6)
    finally:
        server.terminate()
    med = {k: statistics.median(v) for k, v in rps.items()}
    us = {k: statistics.median(v) for k, v in cpu.items()}
    print(
        json.dumps(
            {
                "bench": "telemetry_overhead",
                "requests": args.requests,
                "rounds": args.rounds,
                "before_rps": round(med["before"]),
                "off_rps": round(med["off"]),
                "on_rps": round(med["on"]),
                "off_vs_before": round(med["off"] / med["before"], 3),
                "on_vs_off": round(med["on"] / med["off"], 3),
                "before_cpu_us_per_request": round(us["before"], 1),
                "off_cpu_us_per_request": round(us["off"], 1),
                "on_cpu_us_per_request": round(us["on"], 1),
                "cpu_off_vs_before": round(us["off"] / us["before"], 3),
                "cpu_on_vs_off": round(us["on"] / us["off"], 3),
                "all_rps": {k: [round(x) for x in v] for k, v in rps.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
