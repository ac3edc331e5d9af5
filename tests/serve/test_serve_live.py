"""The double for real: `shadowtape serve` in its own process, real clients, real replay."""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import time
from fractions import Fraction
from pathlib import Path

import httpx
import pytest
from serve_testkit import (
    raw_exchange,
    rec,
    shadowtape,
    start_serve,
    timed_gets,
    write_recording,
)
from tls_testkit import self_signed

from shadowtape import schema
from shadowtape.http.headers import decode

pytestmark = pytest.mark.timeout(240)


def rows(path: Path) -> list[dict]:
    return [r for b in schema.iter_batches(path) for r in schema.batch_to_rows(b)]


def shop_recording() -> list:
    """Three shoppers' sessions: reads, a create-then-read flow, a cancel, a 404 and a 500."""
    out = []
    for s in ("alice", "bob", "carol"):
        order = f"ord-{s}"
        out += [
            rec(s, 0, "GET", "/api/products", query=[("page", "1")], response={"items": [1, 2]}),
            rec(s, 1, "GET", f"/api/orders/{order}", status=404, response={"error": "no order"}),
            rec(
                s,
                2,
                "POST",
                "/api/orders",
                body={"items": [{"id": 1, "qty": 2}], "note": f"for {s}"},
                status=201,
                response={"id": order, "status": "placed", "total": 19.5},
                response_headers=[("Content-Type", "application/json"), ("X-Shop", "café ☕")],
            ),
            rec(s, 3, "GET", f"/api/orders/{order}", response={"id": order, "status": "placed"}),
            rec(s, 4, "POST", f"/api/orders/{order}/cancel", response={"status": "cancelled"}),
            rec(s, 5, "GET", f"/api/orders/{order}", response={"id": order, "status": "cancelled"}),
        ]
    out.append(rec("dave", 0, "GET", "/api/report", status=500, response={"error": "boom"}))
    return out


def test_a_dataset_replayed_against_its_own_double_gets_every_recorded_answer(
    tmp_path: Path,
) -> None:
    recorded = shop_recording()
    dataset = write_recording(tmp_path / "clean", recorded)
    double = start_serve(
        str(dataset), "--listen", "127.0.0.1:0", "--session-key", "header:X-Session",
        "--served", str(tmp_path / "served"),
    )  # fmt: skip
    try:
        done = shadowtape(
            "replay", str(dataset), "--target", double.url, "--out", str(tmp_path / "results"),
            "--speed", "max", "--allow-writes", "--concurrency", "4",
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        stats = httpx.get(f"{double.url}/__shadowtape/stats", trust_env=False).json()
    finally:
        code, out = double.stop()
    assert code == 0, out
    results = [r for r in rows(tmp_path / "results") if r["replay_pass"] == 1]
    assert len(results) == len(recorded)
    for r in results:
        assert r["outcome"] == "sent", r
        assert (r["staging_status"], r["staging_body"]) == (r["status"], r["response_body"]), r
        if r["response_headers"] and ("X-Shop", "café ☕") in r["response_headers"]:
            assert ("X-Shop", "café ☕") in r["staging_headers"]
    assert stats["requests"] == stats["matched"] == len(recorded)
    assert stats["matched_by_session"] == len(recorded) and stats["missed"] == 0
    served = rows(tmp_path / "served")
    assert len(served) == len(recorded)
    assert {r["outcome"] for r in served} == {"matched"}
    assert {r["matched_exchange_id"] for r in served} == {e.id for e in recorded}
    assert f"{len(recorded)} requests, {len(recorded)} matched" in out


def _lognormal_recording(n: int, seed: int) -> list:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        route = ("/api/fast", "/api/slow")[i % 2]
        # Hundreds of milliseconds: a loaded 2-core machine adds up to tens of ms of scheduling
        # noise to any timing (its run queue), which must stay small against the spread.
        median = 150.0 if route == "/api/fast" else 400.0
        latency = rng.lognormvariate(math.log(median), 0.5)
        out.append(
            rec(
                "x",
                i,
                "GET",
                route,
                query=[("i", str(i))],
                response={"i": i},
                latency_ms=latency,
                at_ms=i * 5,
            )  # fmt: skip
        )
    return out


def test_latency_follows_the_recording(tmp_path: Path) -> None:
    recorded = _lognormal_recording(80, seed=3)
    dataset = write_recording(tmp_path / "clean", recorded)
    double = start_serve(str(dataset), "--listen", "127.0.0.1:0", "--latency", "recorded")

    targets = [f"{e.path}?i={i}" for i, e in enumerate(recorded)]
    try:
        answers = asyncio.run(timed_gets(double.url, targets, concurrency=8))
    finally:
        double.stop()
    assert [json.loads(a.body) for a in answers] == [{"i": i} for i in range(len(recorded))]
    served = {i: a.seconds * 1000 for i, a in enumerate(answers)}
    want = {i: (e.response_ended_at - e.started_at) / 1000 for i, e in enumerate(recorded)}
    # Never early: the answer is due a recorded latency after the request's first byte.
    assert all(served[i] >= want[i] for i in want), [
        (want[i], served[i]) for i in want if served[i] < want[i]
    ]
    for route in ("/api/fast", "/api/slow"):
        ids = [i for i, e in enumerate(recorded) if e.path == route]
        d = ks_distance([want[i] for i in ids], [served[i] for i in ids])
        assert d <= Fraction(1, 10), (route, float(d))


def ks_distance(a: list[float], b: list[float]) -> Fraction:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two CDFs, exact
    (4/40 is 0.1, not 0.1 plus a rounding error)."""
    points = sorted(set(a) | set(b))
    return max(
        abs(Fraction(sum(x <= p for x in a), len(a)) - Fraction(sum(x <= p for x in b), len(b)))
        for p in points
    )


def _fault_run(url: str, n: int, hold_s: float) -> list[str]:
    """What a patient client saw, request by request: an answer, the injected 503, a reset
    (ECONNRESET at once), or a connection held unanswered for the whole --hold and closed."""
    outcomes = []
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as c:
        for _ in range(n):
            started = time.monotonic()
            try:
                r = c.get("/api/thing")
            except httpx.ReadError:
                outcomes.append("reset")
            except httpx.RemoteProtocolError:
                held = time.monotonic() - started >= hold_s
                outcomes.append("timeout" if held else "closed early")
            else:
                outcomes.append("error" if r.status_code == 503 else "ok")
    return outcomes


def test_injected_faults_appear_at_the_seeded_rates_and_repeat_with_the_seed(
    tmp_path: Path,
) -> None:
    dataset = write_recording(
        tmp_path / "clean", [rec("x", i, "GET", "/api/thing", response={"n": i}) for i in range(3)]
    )
    n, rates = 200, {"error": 0.2, "timeout": 0.1, "reset": 0.1}
    runs = []
    for attempt in range(2):
        served = tmp_path / f"served-{attempt}"
        double = start_serve(
            str(dataset), "--listen", "127.0.0.1:0", "--latency", "none", "--exhausted", "cycle",
            "--error-rate", "0.2", "--timeout-rate", "0.1", "--reset-rate", "0.1",
            "--seed", "11", "--hold", "0.3", "--served", str(served),
        )  # fmt: skip
        try:
            outcomes = _fault_run(double.url, n, hold_s=0.3)
        finally:
            code, out = double.stop()
        assert code == 0, out
        logged = {r["route_arrival"]: r["injected_fault"] for r in rows(served)}
        assert len(logged) == n
        runs.append((outcomes, logged))
    (first, first_log), (second, second_log) = runs
    assert first == second and first_log == second_log
    for kind, p in rates.items():
        count = first.count(kind)
        mean, sd = n * p, math.sqrt(n * p * (1 - p))
        assert abs(count - mean) <= 4 * sd, (kind, count, mean)
        # What the client saw is what the double says it did, request by request.
        assert [i for i, o in enumerate(first) if o == kind] == sorted(
            i for i, f in first_log.items() if f == kind
        )


def test_recorded_failures_are_reproduced_as_they_happened(tmp_path: Path) -> None:
    dataset = write_recording(
        tmp_path / "clean",
        [
            rec("x", 0, "GET", "/reset", status=None, error="Connection reset by peer"),
            rec("x", 1, "GET", "/slow", status=None, error="TimeoutError: read timed out"),
            rec("x", 2, "GET", "/boom", status=500, response={"error": "recorded boom"}),
        ],
    )
    double = start_serve(str(dataset), "--listen", "127.0.0.1:0", "--hold", "5")
    try:
        timeout = httpx.Timeout(5, read=1.0)
        with httpx.Client(base_url=double.url, trust_env=False, timeout=timeout) as c:
            with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
                c.get("/reset")
            started = time.monotonic()
            with pytest.raises(httpx.ReadTimeout):
                c.get("/slow")
            assert time.monotonic() - started >= 1.0
            boom = c.get("/boom")
            assert boom.status_code == 500 and boom.json() == {"error": "recorded boom"}
            stats = c.get("/__shadowtape/stats").json()
    finally:
        code, out = double.stop()
    assert code == 0, out
    assert stats["recorded_faults"] == {"reset": 1, "timeout": 1}
    assert "recorded failures reset 1, timeout 1" in out


def test_misses_go_to_the_fallback_are_recorded_and_the_double_grows(
    tmp_path: Path, upstream, test_key: str
) -> None:
    dataset = write_recording(tmp_path / "clean", [rec("x", 0, "GET", "/known", response={"k": 1})])
    grown = tmp_path / "grown"
    double = start_serve(
        str(dataset), "--listen", "127.0.0.1:0", "--fallback", upstream.url,
        "--record", str(grown), "--served", str(tmp_path / "served"),
    )  # fmt: skip
    try:
        with httpx.Client(base_url=double.url, trust_env=False) as c:
            assert c.get("/known").json() == {"k": 1}
            r = c.get(
                "/unknown", params={"api_key": "raw-api-key"},
                headers={"Authorization": "Bearer raw-bearer-secret"},
            )  # fmt: skip
            assert r.status_code == 200 and r.json() == {"real": True, "path": "/unknown"}
    finally:
        code, out = double.stop()
    assert code == 0, out
    assert [p for _, p, _, _ in upstream.received] == ["/unknown?api_key=raw-api-key"]
    assert "1 forwarded (1 recorded)" in out
    assert re.search(r"miss GET /unknown \[GET /unknown\]: no recording for GET /unknown", out)
    served = rows(tmp_path / "served")
    miss = next(r for r in served if r["path"] == "/unknown")
    assert miss["outcome"] == "fallback" and miss["closest_exchange_id"] is not None
    recorded = rows(grown)
    assert len(recorded) == 1 and schema.dataset_metadata(grown)[schema.META_SANITIZED] == "false"
    row = recorded[0]
    text = json.dumps(row, default=str)
    for secret in ("raw-api-key", "raw-bearer-secret", "real-session-secret"):
        assert secret not in text
    assert re.fullmatch(r"Bearer stk_[a-z2-7]{26}", dict(row["request_headers"])["Authorization"])
    assert row["status"] == 200 and json.loads(row["response_body"])["real"] is True
    # Served next time, the recorded miss is an answer.
    again = start_serve(str(grown), "--listen", "127.0.0.1:0", "--allow-unsanitized")
    try:
        r = httpx.get(f"{again.url}/unknown", params={"api_key": "x"}, trust_env=False)
        assert r.status_code == 200 and r.json()["real"] is True
    finally:
        again.stop()


def test_the_double_refuses_unsanitized_data_and_bad_options_in_one_line(tmp_path: Path) -> None:
    raw = write_recording(tmp_path / "raw", [rec("x", 0, "GET", "/a")], sanitized=False)
    done = shadowtape("serve", str(raw), "--listen", "127.0.0.1:0")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (error,) = [line for line in done.stderr.splitlines() if line.startswith("shadowtape: error")]
    assert "not sanitized" in error and "--allow-unsanitized" in error
    # Flagged sanitized is not enough: the files must be the ones sanitize's manifest lists.
    copied = write_recording(tmp_path / "copied", [rec("x", 0, "GET", "/a")])
    (copied / "_manifest.json").unlink()
    done = shadowtape("serve", str(copied), "--listen", "127.0.0.1:0")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "no _manifest.json" in done.stderr and "--allow-unsanitized" in done.stderr
    clean = write_recording(tmp_path / "clean", [rec("x", 0, "GET", "/a")])
    bad = tmp_path / "matchers.yaml"
    bad.write_text("routes:\n  GET /a:\n    rules:\n      - {query: page, regex: '('}\n")
    done = shadowtape("serve", str(clean), "--matchers", str(bad))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert re.fullmatch(
        rf"shadowtape: error: {re.escape(str(bad))}:4: regex '\(': .*; fix the pattern\n",
        done.stderr,
    )
    done = shadowtape("serve", str(clean), "--fallback", "http://payments.example.com")
    assert done.returncode == 2 and "--allow-host payments.example.com" in done.stderr


def test_endpoints_counters_and_a_sigterm_that_loses_nothing(tmp_path: Path) -> None:
    dataset = write_recording(
        tmp_path / "clean", [rec("x", i, "GET", f"/items/{i}", response={"i": i}) for i in range(5)]
    )
    served = tmp_path / "served"
    double = start_serve(
        str(dataset), "--listen", "127.0.0.1:0", "--latency", "none", "--served", str(served)
    )
    try:
        with httpx.Client(base_url=double.url, trust_env=False) as c:
            health = c.get("/__shadowtape/health").json()
            for i in range(50):
                c.get(f"/items/{i % 7}")
            stats = c.get("/__shadowtape/stats").json()
    finally:
        code, out = double.stop(sig=15)
    assert code == 0, out
    assert health["status"] == "ok" and health["exchanges"] == 5
    assert stats["requests"] == 50
    # /items/5 and /items/6 are not recorded: the closest exchange of the route answers them,
    # and the score says how close it was.
    assert stats["matched"] == 50 and stats["missed"] == 0
    assert stats["exact_matches"] == sum(1 for i in range(50) if i % 7 < 5)
    assert stats["routes"]["GET /items/{id}"]["requests"] == 50
    logged = rows(served)
    assert len(logged) == 50 and sorted(r["route_arrival"] for r in logged) == list(range(50))
    assert "served log: 50 rows" in out and "0 dropped, 0 not written" in out


def test_header_bytes_and_reason_phrase_go_out_as_recorded(tmp_path: Path) -> None:
    odd = decode(b"\xff\xfe latin-1 \xe9")  # not UTF-8: kept as raw bytes by schema v2
    record = rec(
        "x", 0, "GET", "/h", response={"ok": 1},
        response_headers=[
            ("x-Lower-Case", "café ☕"), ("X-Raw", odd), ("Content-Type", "application/json"),
        ],
    )  # fmt: skip
    record.reason = "Très Bien"
    dataset = write_recording(tmp_path / "clean", [record])
    served = tmp_path / "served"
    double = start_serve(str(dataset), "--listen", "127.0.0.1:0", "--served", str(served))
    try:
        answer = raw_exchange(double.url, b"GET /h HTTP/1.1\r\nHost: x\r\nX-In: \xff\r\n\r\n")
        head = raw_exchange(double.url, b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        double.stop()
    assert answer.startswith(
        "HTTP/1.1 200 Très Bien\r\nx-Lower-Case: café ☕\r\n".encode()
        + b"X-Raw: \xff\xfe latin-1 \xe9\r\n"
    )
    assert answer.endswith(b'\r\n\r\n{"ok": 1}')
    assert head == answer[: -len(b'{"ok": 1}')]
    logged = rows(served)
    assert ("X-In", decode(b"\xff")) in logged[0]["request_headers"]  # the bytes as they came


def test_tls_with_a_certificate_and_key(tmp_path: Path) -> None:
    certfile, keyfile = self_signed(tmp_path)
    dataset = write_recording(tmp_path / "clean", [rec("x", 0, "GET", "/a", response={"tls": 1})])
    double = start_serve(
        str(dataset), "--listen", "127.0.0.1:0", "--certfile", str(certfile),
        "--keyfile", str(keyfile),
    )  # fmt: skip
    try:
        assert double.url.startswith("https://")
        r = httpx.get(f"{double.url}/a", verify=False, trust_env=False)
    finally:
        double.stop()
    assert r.status_code == 200 and r.json() == {"tls": 1}


def test_telemetry_and_the_audit_record(tmp_path: Path, otlp) -> None:
    import os

    dataset = write_recording(tmp_path / "clean", [rec("x", 0, "GET", "/a", response={"a": 1})])
    log = tmp_path / "audit.jsonl"
    env = {**os.environ, "SHADOWTAPE_AUDIT_LOG": str(log)}
    double = start_serve(
        str(dataset), "--listen", "127.0.0.1:0", "--otlp-endpoint", otlp.url, env=env
    )
    trace, parent = "ab" * 16, "cd" * 8
    try:
        with httpx.Client(base_url=double.url, trust_env=False) as c:
            assert (
                c.get("/a", headers={"traceparent": f"00-{trace}-{parent}-01"}).status_code == 200
            )
            assert c.get("/nope").status_code == 404
    finally:
        code, out = double.stop()
    assert code == 0, out
    assert f"telemetry: 2 spans to {otlp.url}: 2 exported, 0 failed, 0 dropped" in out
    spans = {s.name: s for s in otlp.spans}
    assert set(spans) == {"GET /a", "GET /nope"}
    joined = spans["GET /a"]
    assert (joined.trace_id.hex(), joined.parent_span_id.hex()) == (trace, parent)
    assert joined.kind == 2  # SPAN_KIND_SERVER
    attrs = {kv.key: kv.value for kv in spans["GET /nope"].attributes}
    assert attrs["shadowtape.serve.outcome"].string_value == "missed"
    (record,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert record["command"] == "serve" and record["exit_code"] == 0
    assert record["target"] == double.url
    assert record["inputs"][0]["path"] == str(dataset)
    assert record["counts"]["requests"] == 2 and record["counts"]["missed"] == 1
