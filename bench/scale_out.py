"""Scale out on Ray: the local engines vs the Ray engines on 1 and 2 workers, same data, same run.

Sanitize: `sanitize_dataset` with the local engine (one process) vs `results_fn=ray_results()`
with 1 and 2 Ray Data actors, on synthetic API traffic full of personal data (the generator of
bench/sanitize_throughput.py); the outputs are checked to be byte-identical. Replay:
`run_replay` vs `run_replay_ray` with 1 and 2 sender actors, `--speed max`, against a minimal
keep-alive HTTP server in its own process (the one of bench/replay_throughput.py).

Ray is started once, before the timed runs, and its start time is reported apart: on a cluster
it is already running. Each timed Ray run includes its fixed costs (actors starting, each
sanitize actor building Presidio), which is what a user waits for; those costs are also
measured alone (a 100-row run) so that the per-row overhead, which is what remains on a large
dataset, is reported too. The target is Ray on one worker at most 15% slower than the local
engine. This machine has 2 cores shared with other
work, so 2-worker figures are indicative; no 16-core machine was available to measure scaling.

    .venv/bin/python bench/scale_out.py            # 40k rows, 30k requests (about 6 minutes)
    .venv/bin/python bench/scale_out.py --quick    # 3k rows, 4k requests
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from shadowtape import schema
from shadowtape.keyed import Key

BENCH = Path(__file__).resolve().parent
KEY = b"bench-key-0123456789abcdef-0123456789"


def _bench_module(name: str) -> ModuleType:
    """A sibling benchmark's generators and server, reused rather than copied."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def make_exchanges(directory: Path, rows: int, row_group_rows: int) -> Path:
    """Synthetic traffic in row groups small enough that two workers both have work."""
    gen = _bench_module("sanitize_throughput")
    people = gen._people(300, seed=11)
    rng = random.Random(7)
    roll = schema.RollPolicy(max_rows=row_group_rows * 4, row_group_rows=row_group_rows)
    with schema.DatasetWriter(directory, roll=roll) as writer:
        for start in range(0, rows, row_group_rows):
            batch = [
                gen._exchange(i, people[rng.randrange(len(people))], rng)
                for i in range(start, min(rows, start + row_group_rows))
            ]
            writer.write_exchanges(batch)
    return directory


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def bench_sanitize(work: Path, rows: int, row_group_rows: int) -> dict[str, object]:
    from shadowtape.sanitize import pipeline
    from shadowtape.sanitize.policy import default_policy
    from shadowtape.sanitize.ray_engine import ray_results

    src = make_exchanges(work / "raw", rows, row_group_rows)
    # One row group of 100 rows: what each engine costs before it scrubs anything (Presidio
    # built, Ray actors started), subtracted to give the per-row (steady state) overhead.
    tiny = make_exchanges(work / "raw-tiny", 100, 100)
    config = pipeline.SanitizeConfig(default_policy(), Key(KEY, "bench"))
    engines = {
        "local": {},
        "ray_1": {"workers": 1, "results_fn": ray_results()},
        "ray_2": {"workers": 2, "results_fn": ray_results()},
    }

    def timed(name: str, data: Path) -> tuple[float, Path]:
        pipeline._SCRUBBERS.clear()  # every run pays for building Presidio once, as a user does
        out = work / f"clean-{name}-{data.name}"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        pipeline.sanitize_dataset(data, out, config, **engines[name])
        return time.perf_counter() - start, out

    timed("ray_1", tiny)  # warm-up: Ray Data's first plan in this driver costs extra, once
    fixed = {name: timed(name, tiny)[0] for name in ("local", "ray_1")}
    runs = {name: timed(name, src) for name in engines}
    local_tree = _tree(runs["local"][1])
    identical = all(_tree(out) == local_tree for _, out in runs.values())
    local_s = runs["local"][0]
    steady = (runs["ray_1"][0] - fixed["ray_1"]) / (local_s - fixed["local"])
    return {
        "sanitize_fixed_local_s": round(fixed["local"], 2),
        "sanitize_fixed_ray_1_s": round(fixed["ray_1"], 2),
        "sanitize_ray_1_overhead_steady_pct": round(100 * (steady - 1), 1),
        "sanitize_rows": rows,
        "sanitize_row_groups": -(-rows // row_group_rows),
        "sanitize_local_rows_per_s": round(rows / local_s, 1),
        "sanitize_ray_1_rows_per_s": round(rows / runs["ray_1"][0], 1),
        "sanitize_ray_2_rows_per_s": round(rows / runs["ray_2"][0], 1),
        "sanitize_ray_1_overhead_pct": round(100 * (runs["ray_1"][0] / local_s - 1), 1),
        "sanitize_ray_2_vs_local": round(local_s / runs["ray_2"][0], 3),
        "sanitize_outputs_identical": identical,
    }


def bench_replay(work: Path, requests: int) -> dict[str, object]:
    from shadowtape.replay import ReplayConfig, run_replay
    from shadowtape.replay.config import Timing
    from shadowtape.replay.ray_engine import run_replay_ray

    kit = _bench_module("replay_throughput")
    ports: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(target=kit._serve, args=(ports,), daemon=True)
    server.start()
    try:
        url = f"http://127.0.0.1:{ports.get(timeout=30)}"
        src = kit.make_dataset(work / "clean", requests, 200, 60.0, "api.example.com")
        runs: dict[str, float] = {}
        sent: dict[str, int] = {}
        for name, senders in (("local", 0), ("ray_1", 1), ("ray_2", 2)):
            config = ReplayConfig(
                str(src),
                url,
                str(work / f"results-{name}"),
                timing=Timing("max"),
                concurrency=32,
                correlate="off",
                allow_unsanitized=True,  # made-up data (replay_throughput.make_dataset)
                handle_signals=False,
            )
            start = time.perf_counter()
            summary = run_replay(config) if not senders else run_replay_ray(config, senders)
            runs[name] = time.perf_counter() - start
            sent[name] = summary.counts.sent
    finally:
        server.terminate()
        server.join(5)
    local_s = runs["local"]
    return {
        "replay_requests": requests,
        "replay_sent": sent,
        "replay_local_requests_per_s": round(sent["local"] / local_s, 1),
        "replay_ray_1_requests_per_s": round(sent["ray_1"] / runs["ray_1"], 1),
        "replay_ray_2_requests_per_s": round(sent["ray_2"] / runs["ray_2"], 1),
        "replay_ray_1_overhead_pct": round(100 * (runs["ray_1"] / local_s - 1), 1),
        "replay_ray_2_vs_local": round(local_s / runs["ray_2"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute or so")
    parser.add_argument("--workdir", type=Path, help="where datasets go [a temp dir]")
    args = parser.parse_args()
    rows, group = (3_000, 500) if args.quick else (40_000, 5_000)
    requests = 4_000 if args.quick else 30_000

    import ray

    figures: dict[str, object] = {
        "bench": "scale_out",
        "quick": args.quick,
        "cpus": os.cpu_count(),
        "peer": "local engine (same stage code, one process)",
    }
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        start = time.perf_counter()
        ray.init(address="local", include_dashboard=False, logging_level="ERROR")
        figures["ray_start_s"] = round(time.perf_counter() - start, 2)
        try:
            figures.update(bench_sanitize(Path(tmp), rows, group))
            figures.update(bench_replay(Path(tmp), requests))
        finally:
            ray.shutdown()
    figures["target_ray_1_overhead_pct_max"] = 15
    figures["scaling_16_core"] = "not run: no device lent (this machine has 2 cores, shared)"
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
