"""Diff throughput: shadowtape's comparison vs deepdiff's DeepDiff on the same response pairs.

Builds N recorded/staging pairs of ~2 KB JSON bodies (5% with planted drift; the other 95%
equal in content but serialised differently, so no byte-equality shortcut applies: recorded
as Python's json.dumps spells it, staging compact as most servers send it), then in the same
run:
  * shadowtape core: compare_responses on every pair (JSON parsing included), one thread.
    Equal documents whose shorter body is the compact spelling of the longer one cost one
    parse instead of two, which this data allows for the staging side; the core is therefore
    also timed on a sample re-spelt so that neither side is compact (both bodies parsed);
  * shadowtape pipeline: `run_diff` over a results dataset of the same pairs (Parquet read,
    routes, noise model, diff dataset written), one process;
  * deepdiff: json.loads + DeepDiff on each pair of a sample (it is slow), extrapolated.
Both must flag exactly the same exchanges (checked on deepdiff's sample, and shadowtape's full
set against the planted ground truth). Prints one JSON line.

    python bench/diff_throughput.py            # 100k pairs, deepdiff on 5k (a few minutes)
    python bench/diff_throughput.py --quick    # 10k pairs, deepdiff on 500 (< 60 s)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from deepdiff import DeepDiff

from shadowtape import schema
from shadowtape.diff.compare import CompareOptions, Response, compare_responses
from shadowtape.diff.pipeline import run_diff

JSON_HEADERS = [("content-type", "application/json")]
ROUTES = ["/orders/{}", "/users/{}/cart", "/invoices/{}", "/shipments/{}"]


def make_doc(rng: random.Random, i: int) -> dict:
    return {
        "id": i,
        "status": rng.choice(["open", "paid", "shipped"]),
        "customer": {
            "id": rng.randrange(10**6),
            "name": f"Customer {rng.randrange(10**4)}",
            "email": f"c{rng.randrange(10**6)}@example.test",
            "tier": rng.choice(["gold", "silver", "basic"]),
        },
        "items": [
            {
                "sku": f"SKU-{rng.randrange(10**5):05d}",
                "name": f"Item {k}",
                "price": round(rng.uniform(1, 200), 2),
                "qty": rng.randrange(1, 5),
                "tags": rng.sample(["red", "blue", "big", "small", "new", "sale"], 2),
            }
            for k in range(18)
        ],
        "total": round(rng.uniform(10, 2000), 2),
        "currency": "EUR",
        "flags": {"gift": rng.random() < 0.2, "express": rng.random() < 0.3},
    }


def plant_drift(doc: dict, variant: int) -> dict:
    doc = json.loads(json.dumps(doc))
    if variant == 0:
        doc["items"][3]["price"] = round(doc["items"][3]["price"] + 1.0, 2)
    elif variant == 1:
        doc["state"] = doc.pop("status")
    elif variant == 2:
        doc["total"] = str(doc["total"])
    else:
        doc["coupon"] = "WINTER"
    return doc


def make_pairs(n: int, seed: int = 7) -> tuple[list[tuple[bytes, bytes]], set[int]]:
    rng = random.Random(seed)
    pairs = []
    drifted = set()
    for i in range(n):
        doc = make_doc(rng, i)
        staging = doc
        if i % 20 == 0:
            staging = plant_drift(doc, (i // 20) % 4)
            drifted.add(i)
        pairs.append(
            (json.dumps(doc).encode(), json.dumps(staging, separators=(",", ":")).encode())
        )
    return pairs, drifted


def clock() -> float:
    """CPU seconds of this process: other jobs on a shared machine do not count against it,
    which is what "pairs/s on one core" asks for. Wall time is reported beside it."""
    return time.process_time()


def bench_core(pairs: list[tuple[bytes, bytes]]) -> tuple[float, set[int]]:
    options = CompareOptions()
    flagged = set()
    start = clock()
    for i, (a, b) in enumerate(pairs):
        result = compare_responses(
            Response(200, JSON_HEADERS, a), Response(200, JSON_HEADERS, b), options
        )
        if result.diffs:
            flagged.add(i)
    return clock() - start, flagged


def respell(pairs: list[tuple[bytes, bytes]], sample: list[int]) -> list[tuple[bytes, bytes]]:
    """The sampled pairs with staging indented, so no side is compact and both are parsed."""
    return [(pairs[i][0], json.dumps(json.loads(pairs[i][1]), indent=1).encode()) for i in sample]


def bench_deepdiff(pairs: list[tuple[bytes, bytes]], sample: list[int]) -> tuple[float, set[int]]:
    flagged = set()
    start = clock()
    for i in sample:
        a, b = pairs[i]
        if DeepDiff(json.loads(a), json.loads(b)):
            flagged.add(i)
    return clock() - start, flagged


def write_results(pairs: list[tuple[bytes, bytes]], directory: Path) -> Path:
    out = directory / "results"
    t0 = 1_795_000_000_000_000
    with schema.DatasetWriter(out, schema.KIND_RESULTS) as writer:
        for lo in range(0, len(pairs), 10_000):
            rows = []
            for i in range(lo, min(lo + 10_000, len(pairs))):
                a, b = pairs[i]
                ts = t0 + i * 1000
                rows.append({
                    "id": f"ex-{i:08d}", "session_id": "s", "seq": i, "started_at": ts,
                    "response_ended_at": ts + 800, "method": "GET",
                    "path": ROUTES[i % len(ROUTES)].format(i), "status": 200,
                    "response_headers": JSON_HEADERS, "response_body": a,
                    "outcome": "sent", "replay_pass": 1, "sent_at": ts, "done_at": ts + 900,
                    "staging_status": 200, "staging_headers": JSON_HEADERS, "staging_body": b,
                })  # fmt: skip
            writer.write_rows(rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k pairs, deepdiff on 500")
    parser.add_argument("--pairs", type=int)
    parser.add_argument("--deepdiff-sample", type=int)
    args = parser.parse_args()
    n = args.pairs or (10_000 if args.quick else 100_000)
    sample_n = min(n, args.deepdiff_sample or (500 if args.quick else 5_000))

    rounds = 3 if args.quick else 2  # best of: other jobs on the machine only ever slow a run
    pairs, planted = make_pairs(n)
    body_bytes = sum(len(a) for a, _ in pairs) / n
    core_s, core_flagged = min(bench_core(pairs) for _ in range(rounds))
    sample = sorted(random.Random(11).sample(range(n), sample_n))
    both_sample = sorted(random.Random(13).sample(range(n), min(n, 10_000)))
    respelt = respell(pairs, both_sample)
    both_s, both_flagged = min(bench_core(respelt) for _ in range(rounds))
    dd_s, dd_flagged = bench_deepdiff(pairs, sample)

    with tempfile.TemporaryDirectory() as tmp:
        results = write_results(pairs, Path(tmp))
        pipe_s = pipe_wall = float("inf")
        for _ in range(rounds):
            start, wall = clock(), time.perf_counter()
            summary = run_diff(results)
            pipe_s = min(pipe_s, clock() - start)
            pipe_wall = min(pipe_wall, time.perf_counter() - wall)
        drift_ids = set()
        for batch in schema.iter_batches(
            summary.out, schema.KIND_DIFFS, columns=["exchange_id", "classification"]
        ):
            for ex, cls in zip(
                batch.column("exchange_id").to_pylist(),
                batch.column("classification").to_pylist(),
                strict=True,
            ):
                if cls == "drift":
                    drift_ids.add(int(ex[3:]))

    core_rate = n / core_s
    dd_rate = sample_n / dd_s
    figures = {
        "bench": "diff_throughput",
        "pairs": n,
        "avg_body_bytes": round(body_bytes),
        "drifted_pairs": len(planted),
        "shadowtape_core_pairs_per_s": round(core_rate),
        "shadowtape_pipeline_pairs_per_s": round(n / pipe_s),
        "shadowtape_core_both_parsed_pairs_per_s": round(len(respelt) / both_s),
        "both_parsed_sampled_pairs": len(respelt),
        "deepdiff_pairs_per_s": round(dd_rate),
        "deepdiff_sampled_pairs": sample_n,
        "deepdiff_extrapolated_s_for_all": round(n / dd_rate, 1),
        "ratio_core_vs_deepdiff": round(core_rate / dd_rate, 1),
        "ratio_pipeline_vs_deepdiff": round((n / pipe_s) / dd_rate, 1),
        "shadowtape_pipeline_wall_pairs_per_s": round(n / pipe_wall),
        "timing": "cpu seconds of this process (process_time); wall given for the pipeline",
        "same_drifted_set_on_sample": core_flagged & set(sample) == dd_flagged,
        "core_matches_planted": core_flagged == planted,
        "core_both_parsed_matches_planted": {both_sample[j] for j in both_flagged}
        == planted & set(both_sample),
        "pipeline_drift_matches_planted": drift_ids == planted,
        "best_of_rounds": rounds,
        "one_thread": True,
        "python": sys.version.split()[0],
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
