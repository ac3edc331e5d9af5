"""Sanitize throughput: `shadowtape sanitize` vs a naive per-field Presidio pass, same data.

The dataset is synthetic API traffic: a pool of Faker users (seeded) browsing, logging in,
listing orders and paying, with their emails, phones, cards, addresses, IPs and tokens in
headers, cookies, query strings, gzip JSON bodies, form bodies and free text, plus per-request
unique ids and timestamps. The naive pass is what one would write first: Presidio's
AnalyzerEngine + AnonymizerEngine on every string field of every record (bodies decoded to
text), with the same recognizers shadowtape uses, each finding replaced by an entity tag as
Presidio's AnonymizerEngine would (presidio-anonymizer itself is not installed: it pulls a
cryptography that mitmproxy refuses). It is timed on a sample of rows and extrapolated (it is
far too slow for the whole dataset); the JSON line says so. Shadowtape runs with everything
on: the default policy's recognizers, the name lexicon, key vocabularies and value
propagation (two passes).

Each shadowtape run is a fresh process (so its peak RSS is its own): --workers 1 and 2 on the
main dataset, and --workers 2 on a dataset 10x larger (the main one's files repeated) to show
that memory stays flat as data grows.

    python bench/sanitize_throughput.py            # 100k and 1M rows (about 8 minutes)
    python bench/sanitize_throughput.py --quick    # 5k and 20k rows, about a minute
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from shadowtape import schema

BENCH_KEY = "bench-key-0123456789abcdef-0123456789"


@dataclass(frozen=True)
class Person:
    email: str
    phone: str
    name: str
    street: str
    city: str
    card: str
    ip: str
    password: str
    session: str


def _people(n: int, seed: int) -> list[Person]:
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(seed)
    out = []
    for i in range(n):
        out.append(
            Person(
                email=f"{fake.user_name()}{i}@{fake.free_email_domain()}",
                phone=f"+1 {fake.random_element(('415', '212', '646', '312'))}-"
                f"{fake.random_int(200, 999)}-{fake.random_int(0, 9999):04d}",
                name=fake.name(),
                street=fake.street_address(),
                city=fake.city(),
                card=fake.credit_card_number(card_type="visa16"),
                ip=fake.ipv4_public(),
                password=fake.password(length=12),
                session="stk_"
                + "".join(fake.random_choices("abcdefghijklmnopqrstuvwxyz234567", 26)),
            )
        )
    return out


_COMMON_REQ = [
    ("Host", "api.shop.internal"),
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0"),
    ("Accept", "application/json"),
    ("Accept-Encoding", "gzip, br"),
]


def _exchange(i: int, p: Person, rng: random.Random) -> schema.Exchange:
    """One request/response; the kind is drawn so the mix resembles a shop's API traffic."""
    h = f"{rng.getrandbits(128):032x}"
    rid = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"
    ts = f"2026-11-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}Z"
    req_h = [
        *_COMMON_REQ,
        ("X-Request-Id", rid),
        ("X-Forwarded-For", p.ip),
        ("Cookie", f"session={p.session}; theme=dark"),
    ]
    resp_h = [
        ("Content-Type", "application/json"),
        ("Date", "Thu, 26 Nov 2026 06:34:46 GMT"),
        ("Server", "shop/1.4"),
    ]
    kind = rng.random()
    query: list[tuple[str, str]] = []
    req_body = None
    method = "GET"
    if kind < 0.35:
        path = f"/api/orders/{rid}"
        body = {
            "id": rid,
            "created_at": ts,
            "status": "shipped",
            "amount": round(rng.random() * 200, 2),
            "customer": {"name": p.name, "email": p.email},
            "shipping": {"name": p.name, "street": p.street, "city": p.city},
            "items": [
                {"sku": f"SKU-{rng.randint(1000, 9999)}", "qty": rng.randint(1, 3)}
                for _ in range(3)
            ],
        }
    elif kind < 0.6:
        path = "/api/orders"
        query = [("page", str(rng.randint(1, 20))), ("email", p.email), ("sort", "-created_at")]
        body = {
            "items": [
                {"id": f"{rid[:-4]}{k:04d}", "created_at": ts, "total": rng.randint(5, 900)}
                for k in range(5)
            ],
            "next": None,
        }
    elif kind < 0.75:
        path = "/api/me"
        body = {
            "user": {
                "name": p.name,
                "email": p.email,
                "phone": p.phone,
                "address": {"street": p.street, "city": p.city},
            },
            "notes": f"Prefers calls at {p.phone}; billing contact {p.email}.",
            "last_login": ts,
            "login_ip": p.ip,
        }
    elif kind < 0.85:
        method, path = "POST", "/api/payments"
        req_body = json.dumps(
            {
                "card": p.card,
                "amount": rng.randint(100, 90000),
                "currency": "USD",
                "note": f"order {rid}",
            }
        ).encode()
        req_h = [
            *req_h,
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(req_body))),
        ]
        body = {"payment_id": rid, "status": "authorized", "created_at": ts}
    elif kind < 0.92:
        method, path = "POST", "/login"
        req_body = urlencode([("username", p.email), ("password", p.password)]).encode()
        req_h = [*req_h, ("Content-Type", "application/x-www-form-urlencoded")]
        body = {"access_token": p.session, "expires_in": 3600, "user": {"email": p.email}}
    else:
        path = "/api/search"
        query = [
            ("q", rng.choice(("shoes", "red dress", "lamp", "usb cable"))),
            ("page", str(rng.randint(1, 5))),
        ]
        body = {
            "results": [
                {"sku": f"SKU-{rng.randint(1000, 9999)}", "title": "Thing", "price": 9.99}
                for _ in range(4)
            ],
            "took_ms": rng.randint(2, 80),
        }
    raw = json.dumps(body).encode()
    resp_body = gzip.compress(raw, mtime=0) if len(raw) > 300 else raw
    if resp_body is not raw:
        resp_h = [*resp_h, ("Content-Encoding", "gzip")]
    return schema.Exchange(
        id=f"{i:012d}",
        session_id=f"s{hash(p.email) & 0xFFFFFF:06x}",
        seq=i,
        started_at=1_764_000_000_000_000 + i * 1000,
        method=method,
        host="api.shop.internal",
        port=443,
        scheme="https",
        path=path,
        query=query,
        request_headers=req_h,
        request_body=req_body,
        status=200,
        reason="OK",
        response_headers=[*resp_h, ("Content-Length", str(len(resp_body)))],
        response_body=resp_body,
        capture_id="bench",
    )


def make_dataset(directory: Path, rows: int, people: list[Person], seed: int = 7) -> None:
    rng = random.Random(seed)
    # Row groups are the unit of parallel work; 5k rows gives --workers 2 something to share
    # even in --quick.
    roll = schema.RollPolicy(max_rows=50_000, row_group_rows=5_000)
    with schema.DatasetWriter(directory, roll=roll) as writer:
        chunk: list[schema.Exchange] = []
        for i in range(rows):
            chunk.append(_exchange(i, people[rng.randrange(len(people))], rng))
            if len(chunk) == 5_000:
                writer.write_exchanges(chunk)
                chunk = []
        if chunk:
            writer.write_exchanges(chunk)


def repeat_dataset(src: Path, dst: Path, times: int) -> None:
    """A dataset `times` as large made of copies of `src`'s files: it checks that memory
    stays flat as data grows (its speed is flattered by warm caches, and is labelled so)."""
    dst.mkdir(parents=True)
    for n in range(times):
        for f in schema.dataset_files(src):
            shutil.copyfile(f, dst / f"{f.stem}-copy{n:03d}.parquet")


# --- timed runs ---------------------------------------------------------------------------


def run_sanitize_here(src: str, dst: str, workers: int) -> dict:
    """Inside a fresh process: one sanitize run, timed, with this process's peak RSS."""
    from shadowtape.keyed import Key
    from shadowtape.sanitize.pipeline import SanitizeConfig, sanitize_dataset
    from shadowtape.sanitize.policy import default_policy

    config = SanitizeConfig(default_policy(), Key(BENCH_KEY.encode(), "bench"))
    start = time.perf_counter()
    result = sanitize_dataset(src, dst, config, workers=workers)
    seconds = time.perf_counter() - start
    counts = result.manifest.counts
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return {
        # CPU time of the run and its workers: on a shared machine, wall time says little
        # about scaling; CPU per row says whether more workers add overhead.
        "cpu_seconds": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
        "rows": result.rows,
        "seconds": seconds,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "literals_learned": counts.get("propagation|learned", 0),
        "literals_applied": counts.get("propagation|applied", 0),
        "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def run_sanitize(src: Path, dst: Path, workers: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "_run", str(src), str(dst), str(workers)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def naive_rows_per_s(src: Path, sample: int) -> tuple[float, float]:
    """Presidio on every string field of every record: the pass shadowtape is compared to.
    Returns (rows per second of wall time, CPU seconds per row)."""
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry

    from shadowtape.sanitize.detectors import build_recognizers, nlp_engine
    from shadowtape.sanitize.policy import default_policy

    entities = list(default_policy().entities)
    registry = RecognizerRegistry(supported_languages=["en"])
    for _, r in build_recognizers(entities):
        registry.add_recognizer(r)
    analyzer = AnalyzerEngine(registry=registry, nlp_engine=nlp_engine(None))
    rows = []
    for ex in schema.iter_exchanges(src):
        rows.append(ex)
        if len(rows) >= sample:
            break

    def fields(ex: schema.Exchange) -> list[str]:
        out = [ex.path or "", ex.error or ""]
        out += [v for _, v in ex.query]
        out += [v for _, v in ex.request_headers + ex.response_headers]
        for side in ("request", "response"):
            body = getattr(ex, f"{side}_body")
            if body:
                headers = dict((n.lower(), v) for n, v in getattr(ex, f"{side}_headers"))
                if headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                out.append(body.decode("utf-8", "replace"))
        return [f for f in out if f]

    def anonymize(text: str, results: list) -> str:
        # AnonymizerEngine's default operator: each finding becomes <ENTITY_TYPE>.
        for r in sorted(results, key=lambda r: r.start, reverse=True):
            text = text[: r.start] + f"<{r.entity_type}>" + text[r.end :]
        return text

    start, cpu = time.perf_counter(), time.process_time()
    for ex in rows:
        for text in fields(ex):
            results = analyzer.analyze(
                text=text, language="en", entities=entities, score_threshold=0.4
            )
            anonymize(text, results)
    return len(rows) / (time.perf_counter() - start), (time.process_time() - cpu) / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute or two")
    parser.add_argument("--rows", type=int, help="main dataset size [100k; quick 10k]")
    parser.add_argument("--big-rows", type=int, help="size for the RSS check [1M; quick 100k]")
    parser.add_argument(
        "--naive-sample", type=int, help="rows the naive pass runs [2000; quick 300]"
    )
    parser.add_argument(
        "--people", type=int, help="distinct users in the traffic [2000; quick 300]"
    )
    parser.add_argument("--workdir", type=Path, help="where datasets go [a temp dir]")
    args = parser.parse_args()
    rows = args.rows or (5_000 if args.quick else 100_000)
    big = args.big_rows or (20_000 if args.quick else 1_000_000)
    sample = args.naive_sample or (150 if args.quick else 1_000)
    args.people = args.people or (300 if args.quick else 2_000)

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        people = _people(args.people, seed=11)
        make_dataset(work / "main", rows, people)
        repeat_dataset(work / "main", work / "big", max(1, big // rows))
        w1 = run_sanitize(work / "main", work / "out1", 1)
        w2 = run_sanitize(work / "main", work / "out2", 2)
        w2_big = run_sanitize(work / "big", work / "out3", 2)
        naive, naive_cpu_per_row = naive_rows_per_s(work / "main", sample)

    ours1 = w1["rows"] / w1["seconds"]
    ours2 = w2["rows"] / w2["seconds"]
    big_rows = w2_big["rows"]
    print(
        json.dumps(
            {
                "bench": "sanitize_throughput",
                "rows": rows,
                "distinct_users": args.people,
                "shadowtape_w1_rows_per_s": round(ours1, 1),
                "shadowtape_w2_rows_per_s": round(ours2, 1),
                "naive_presidio_rows_per_s": round(naive, 2),
                "naive_sampled_rows": sample,
                "naive_extrapolated": True,
                "ratio_w1_vs_naive": round(ours1 / naive, 1),
                # CPU time per row, ours (workers included) against the naive pass: what a
                # core does, whatever else the shared machine was running meanwhile.
                "ratio_per_core_vs_naive": round(
                    naive_cpu_per_row / (w1["cpu_seconds"] / w1["rows"]), 1
                ),
                "naive_cpu_ms_per_row": round(1000 * naive_cpu_per_row, 2),
                "scaling_w2_vs_w1": round(ours2 / ours1, 2),
                "cpu_ms_per_row_w1": round(1000 * w1["cpu_seconds"] / w1["rows"], 3),
                "cpu_ms_per_row_w2": round(1000 * w2["cpu_seconds"] / w2["rows"], 3),
                f"rss_mb_w1_main_at_{rows}": round(w1["rss_mb"], 1),
                f"rss_mb_w2_main_at_{rows}": round(w2["rss_mb"], 1),
                f"rss_mb_w2_worker_at_{rows}": round(w2["worker_rss_mb"], 1),
                f"rss_mb_w2_main_at_{big_rows}": round(w2_big["rss_mb"], 1),
                "literals_learned": w1["literals_learned"],
                "literals_applied": w1["literals_applied"],
                f"literals_learned_at_{big_rows}": w2_big["literals_learned"],
                f"rss_mb_w2_worker_at_{big_rows}": round(w2_big["worker_rss_mb"], 1),
                f"w2_rows_per_s_at_{big_rows}": round(big_rows / w2_big["seconds"], 1),
                "big_dataset": f"the {rows}-row dataset repeated {big_rows // rows}x",
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "_run":
        print(json.dumps(run_sanitize_here(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
    else:
        main()
