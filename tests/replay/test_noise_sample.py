"""--noise-sample: each chosen GET is sent a second time right after its first send, inside
its session, so both answers come from the same session state (a later logout cannot turn
the second answer into a 401)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from replay_testkit import exchange, write_dataset

from shadowtape.keyed import Key, Keyed
from shadowtape.replay import ReplayConfig, run_replay
from shadowtape.replay.config import Timing
from shadowtape.replay.plan import NoiseSampler
from shadowtape.schema import batch_to_rows, iter_batches

KEYED = Keyed(Key(b"noise-sample-test-key-0123456789", "test"))
SESSIONS = 5


def _sessions() -> list:
    """Login, create an order, read it, read the catalogue, read the order again, log out.
    Every read needs the session's token, which the logout at the end revokes."""
    records = []
    for s in range(SESSIONS):
        sid = f"sess{s}"
        token = KEYED.secret(f"raw-token-{s}")
        order = str(5_000_000_000 + s)
        auth = [("Authorization", f"Bearer {token}")]
        t = s * 100
        records += [
            exchange(
                sid,
                0,
                t,
                "POST",
                "/login",
                body=b'{"user": "u1"}',
                response_body=json.dumps({"token": token, "user": "u1"}).encode(),
            ),
            exchange(
                sid,
                1,
                t + 10,
                "POST",
                "/orders",
                headers=auth,
                body=b'{"item": "book"}',
                status=201,
                response_headers=[("Location", f"/orders/{order}")],
                response_body=json.dumps({"id": order}).encode(),
            ),
            exchange(sid, 2, t + 20, "GET", f"/orders/{order}", headers=auth),
            exchange(sid, 3, t + 30, "GET", f"/catalog/{s}", headers=auth),
            exchange(sid, 4, t + 40, "GET", f"/orders/{order}", query=[("v", "2")], headers=auth),
            exchange(sid, 5, t + 50, "POST", "/logout", headers=auth, body=b"{}"),
        ]
    return records


def _run(src: Path, out: Path, url: str, **kw: Any):
    kw.setdefault("timing", Timing("max"))
    return run_replay(
        ReplayConfig(
            str(src),
            url,
            str(out),
            allow_writes=True,
            correlate="auto",
            concurrency=4,
            seed=3,
            handle_signals=False,
            **kw,
        )
    )


def _rows(out: Path) -> list[dict[str, Any]]:
    return [r for b in iter_batches(out, "results") for r in batch_to_rows(b)]


def test_second_send_follows_its_first_inside_the_session(tmp_path: Path, staging) -> None:
    src = write_dataset(tmp_path / "in", _sessions())
    n = 6
    summary = _run(src, tmp_path / "out", staging.url, noise_sample=n)
    assert summary.status == "complete"
    rows = _rows(tmp_path / "out")
    first = {r["id"]: r for r in rows if r["replay_pass"] == 1}
    second = [r for r in rows if r["replay_pass"] == 2]
    assert len(first) == SESSIONS * 6 and len(second) == n
    assert all(r["staging_status"] in (200, 201) for r in first.values())
    # Pass 2 came before the session's logout: no 401, the same answer as pass 1.
    assert all(r["staging_status"] == 200 for r in second)
    for r in second:
        twin = first[r["id"]]
        assert r["method"] == "GET" and r["replay_id"] != twin["replay_id"]
        assert r["trace_id"] == twin["trace_id"] and r["span_id"] != twin["span_id"]
        assert r["substitutions"] == twin["substitutions"] and r["substitutions"]
        assert r["staging_body"] == twin["staging_body"]
        for col in ("session_id", "seq", "path", "query", "request_headers", "response_body"):
            assert r[col] == twin[col]
    # Spread over the steps: both order reads and the catalogue are sampled.
    assert {r["path"].split("/")[1] for r in second} == {"orders", "catalog"}

    # What staging received, per session, in order: each second send comes right after its
    # twin and before the session's next step, with the same (substituted) request.
    pass_of = {r["replay_id"]: r for r in rows}
    for sid, got in staging.by_session().items():
        seen = [pass_of[g.header("x-shadowtape-replay-id")] for g in got]
        expected: list[tuple[int, int]] = []
        for r in sorted((r for r in first.values() if r["session_id"] == sid), key=_seq):
            expected.append((r["seq"], 1))
            if any(x["id"] == r["id"] for x in second):
                expected.append((r["seq"], 2))
        assert [(r["seq"], r["replay_pass"]) for r in seen] == expected, sid
        for before, after, g_before, g_after in zip(seen, seen[1:], got, got[1:], strict=False):
            if after["replay_pass"] == 2:
                assert before["id"] == after["id"]
                assert g_after.path == g_before.path
                assert g_after.header("authorization") == g_before.header("authorization")
        assert seen[-1]["path"] == "/logout"

    # The second sends are counted apart and change nothing of the main pass.
    c = summary.counts
    assert c.sent == SESSIONS * 6 and c.noise_sent == n and c.noise_rows == n
    assert c.noise_failed == 0 and c.noise_not_sent == 0 and c.rows == SESSIONS * 6 + n
    assert c.status_classes == {"2xx": SESSIONS * 6}
    plain = _run(src, tmp_path / "plain", staging.url, noise_sample=0)
    assert c.substitutions == plain.counts.substitutions and c.misses == plain.counts.misses == {}
    assert summary.lateness_p99_us >= 0 and plain.counts.noise_rows == 0


def _seq(row: dict[str, Any]) -> int:
    return row["seq"]


def test_sample_is_chosen_before_dispatch_and_seeded(tmp_path: Path, staging) -> None:
    src = write_dataset(tmp_path / "in", _sessions())
    a = _run(src, tmp_path / "a", staging.url, noise_sample=4)
    b = _run(src, tmp_path / "b", staging.url, noise_sample=4)
    ids_a = {r["id"] for r in _rows(tmp_path / "a") if r["replay_pass"] == 2}
    ids_b = {r["id"] for r in _rows(tmp_path / "b") if r["replay_pass"] == 2}
    assert ids_a == ids_b and len(ids_a) == 4
    assert a.counts.noise_sent == b.counts.noise_sent == 4
    # A chosen request that is never sent (here: past --limit) gets no twin, and says so.
    limited = _run(src, tmp_path / "c", staging.url, noise_sample=SESSIONS * 3, limit=8)
    c = limited.counts
    assert c.noise_sent + c.noise_not_sent == SESSIONS * 3 and c.noise_not_sent > 0
    assert c.noise_rows == c.noise_sent


def test_noise_sampler_spreads_over_steps_and_ignores_writes() -> None:
    sampler = NoiseSampler(4, seed=1)
    for i in range(100):
        sampler.offer(f"a{i}", "GET", "GET /a/{id}")
    sampler.offer("b0", "GET", "GET /b")
    sampler.offer("w0", "POST", "POST /w")
    chosen = sampler.selected()
    assert len(chosen) == 4 and "b0" in chosen and "w0" not in chosen
    assert NoiseSampler(4, seed=1).selected() == frozenset()
