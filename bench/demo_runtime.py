"""How long `shadowtape demo` takes, against the issue's budget of one minute on two cores.

The peer is the budget itself (the issue names no other tool): the figure that matters is
`ratio` = median demo seconds / 60. Each step's share is timed from when its header line
appears in the transcript, so a slow stage stands out. Not a test: figures vary with load.

    python bench/demo_runtime.py            # 3 runs of the demo's default request count
    python bench/demo_runtime.py --quick    # 1 run of 150 requests (< 60 s)
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shadowtape.demo.defaults import DEFAULT_REQUESTS

BUDGET_S = 60.0
_HEADER = re.compile(r"^\[(\d+)/\d+\] ")
_STEP_NAMES = [
    "payments", "capture-payments", "services", "capture", "traffic", "stop", "sanitize",
    "verify", "double", "staging", "replay", "diff", "report",
]  # fmt: skip


def run_once(requests: int) -> tuple[float, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        argv = [
            sys.executable, "-m", "shadowtape", "--no-config", "demo",
            "--workdir", str(Path(tmp) / "w"), "--requests", str(requests),
        ]  # fmt: skip
        started = time.monotonic()
        marks: list[tuple[int, float]] = []
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            match = _HEADER.match(line)
            if match:
                marks.append((int(match.group(1)), time.monotonic()))
        code = proc.wait()
        total = time.monotonic() - started
    if code != 0:
        raise SystemExit(f"demo exited with {code}; run it by hand to see why")
    steps = {}
    ends = [t for _, t in marks[1:]] + [started + total]
    for (number, start), end in zip(marks, ends, strict=True):
        steps[_STEP_NAMES[number - 1]] = round(end - start, 2)
    return total, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short run")
    parser.add_argument("--runs", type=int)
    parser.add_argument("--requests", type=int)
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    requests = args.requests or (150 if args.quick else DEFAULT_REQUESTS)
    totals, last_steps = [], {}
    for _ in range(runs):
        total, last_steps = run_once(requests)
        totals.append(total)
    median = statistics.median(totals)
    print(
        json.dumps(
            {
                "bench": "demo_runtime",
                "requests": requests,
                "runs": runs,
                "demo_s_median": round(median, 2),
                "demo_s_runs": [round(t, 2) for t in totals],
                "budget_s": BUDGET_S,
                "ratio": round(median / BUDGET_S, 3),
                "steps_s_last_run": last_steps,
            }
        )
    )


if __name__ == "__main__":
    main()
