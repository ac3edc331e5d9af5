"""Server-minted values (a login token, a created order id) carried into later requests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from replay_testkit import shop_sessions, write_dataset

from shadowtape.errors import InputError
from shadowtape.replay import ReplayConfig, run_replay
from shadowtape.replay.config import Timing
from shadowtape.replay.correlate import (
    CorrelationRule,
    correlate_dataset,
    dump_rules,
    learn_rules,
    load_rules,
)
from shadowtape.replay.locations import replace_in_request, request_values
from shadowtape.replay.sender import RequestParts
from shadowtape.replay.substitute import Correlator, SessionBindings
from shadowtape.schema import batch_to_rows, iter_batches


def _run(src: Path, out: Path, url: str, **kw: Any):
    kw.setdefault("timing", Timing("max"))
    kw.setdefault("allow_writes", True)
    return run_replay(ReplayConfig(str(src), url, str(out), handle_signals=False, **kw))


def _rows(out: Path) -> list[dict[str, Any]]:
    return [r for b in iter_batches(out, "results") for r in batch_to_rows(b)]


def test_without_correlation_later_requests_fail(tmp_path: Path, staging) -> None:
    src = write_dataset(tmp_path / "in", shop_sessions())
    _run(src, tmp_path / "out", staging.url, correlate="off")
    statuses = sorted(r["staging_status"] for r in _rows(tmp_path / "out") if r["seq"] > 0)
    assert set(statuses) == {401}


def test_auto_correlation_makes_every_request_succeed(tmp_path: Path, staging) -> None:
    src = write_dataset(tmp_path / "in", shop_sessions())
    summary = _run(src, tmp_path / "out", staging.url, correlate="auto")
    rows = sorted(_rows(tmp_path / "out"), key=lambda r: (r["session_id"], r["seq"]))
    assert [r["staging_status"] for r in rows] == [200, 201, 200, 200] * 3
    # Each later request says which substitutions it got.
    get = rows[2]
    assert {s["outcome"] for s in get["substitutions"]} == {"substituted"}
    assert {s["location"] for s in get["substitutions"]} == {"header:authorization", "path[2]"}
    assert summary.counts.misses == {}
    assert sum(summary.counts.substitutions.values()) == 3 * (1 + 2 + 2)
    # Staging saw its own values, never the recorded ones.
    for got in staging.received:
        auth = got.header("authorization")
        assert auth is None or auth[7:] in staging.tokens


def test_learned_rules_round_trip_through_yaml(tmp_path: Path, staging) -> None:
    src = write_dataset(tmp_path / "in", shop_sessions())
    rules = correlate_dataset(str(src), tmp_path / "rules.yaml")
    by_source = {(r.step, r.source): r for r in rules}
    token = by_source[("POST /login", "json:$.token")]
    assert token.targets == ("header:authorization",) and token.support == 3
    assert any(r.step == "POST /orders" and "path[2]" in r.targets for r in rules)
    assert load_rules(tmp_path / "rules.yaml") == rules
    text = (tmp_path / "rules.yaml").read_text()
    assert "stk_" not in text  # rules hold locations, never values
    _run(src, tmp_path / "out", staging.url, correlate=str(tmp_path / "rules.yaml"))
    assert {r["staging_status"] for r in _rows(tmp_path / "out")} <= {200, 201}


def test_misses_are_counted_and_can_stop_the_session(tmp_path: Path, staging) -> None:
    src = write_dataset(tmp_path / "in", shop_sessions(2))
    rules = learn_rules(r for b in iter_batches(src) for r in batch_to_rows(b))
    dump_rules(rules, tmp_path / "rules.yaml")
    # Writes not allowed: login and order creation are skipped, so no staging values exist.
    summary = _run(
        src,
        tmp_path / "a",
        staging.url,
        allow_writes=False,
        correlate=str(tmp_path / "rules.yaml"),
    )
    assert sum(summary.counts.misses.values()) == 2 * 2 * 2  # 2 sessions x 2 GETs x 2 values
    assert summary.counts.sent == 4  # send-recorded: sent anyway
    summary = _run(
        src,
        tmp_path / "b",
        staging.url,
        allow_writes=False,
        on_miss="skip-session",
        correlate=str(tmp_path / "rules.yaml"),
    )
    rows = _rows(tmp_path / "b")
    assert summary.counts.sent == 0
    assert summary.counts.sessions_skipped_on_miss == 2
    assert sorted(r["skip_reason"] for r in rows if r["method"] == "GET") == [
        "correlation_miss",
        "correlation_miss",
        "session_aborted",
        "session_aborted",
    ]
    missed = next(r for r in rows if r["skip_reason"] == "correlation_miss")
    assert {s["outcome"] for s in missed["substitutions"]} == {"miss"}


def test_bad_rules_file_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text('rules:\n- step: GET /x\n  source: nowhere\n  targets: ["path[1]"]\n')
    with pytest.raises(InputError, match="rule 1: bad location 'nowhere'"):
        load_rules(bad)
    bad.write_text("rules: [\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_rules(bad)


def test_substitution_keeps_the_rest_of_the_request() -> None:
    parts = RequestParts(
        "POST",
        "h",
        "/carts/abc123/items",
        [("order", "991"), ("page", "2")],
        [("Cookie", "sid=s-991; theme=dark"), ("If-Match", 'W/"etag-991"')],
        b'{"order": {"id": 991, "note": "keep  spacing"}, "ids": ["991"]}',
    )
    assert replace_in_request(parts, "path[2]", "abc123", "zz9")
    assert replace_in_request(parts, "query:order", "991", "5")
    assert replace_in_request(parts, "cookie:sid", "s-991", "s-5")
    assert replace_in_request(parts, "header:if-match", "etag-991", "etag-5")
    assert replace_in_request(parts, "json:$.order.id", "991", "5")
    assert parts.path == "/carts/zz9/items"
    assert parts.query == [("order", "5"), ("page", "2")]
    assert parts.headers == [("Cookie", "sid=s-5; theme=dark"), ("If-Match", 'W/"etag-5"')]
    assert parts.body == b'{"order": {"id": 5, "note": "keep  spacing"}, "ids": ["991"]}'
    form = RequestParts(
        "POST",
        "h",
        "/f",
        [],
        [("Content-Type", "application/x-www-form-urlencoded")],
        b"csrf=tok-1&x=2",
    )
    assert ("form:csrf", "tok-1") in list(request_values(form))
    assert (
        replace_in_request(form, "form:csrf", "tok-1", "tok-2") and form.body == b"csrf=tok-2&x=2"
    )


def test_correlator_binds_staging_values_per_session() -> None:
    rule = CorrelationRule("r1", "POST /login", "set-cookie:sid", ("cookie:sid",), 2)
    corr = Correlator([rule])
    bindings = SessionBindings()
    corr.learn(
        bindings,
        "POST /login",
        [("Set-Cookie", "sid=rec-123; Path=/")],
        None,
        [("Set-Cookie", "sid=stg-456; HttpOnly")],
        b"",
    )
    parts = RequestParts("GET", "h", "/", [], [("Cookie", "sid=rec-123")], None)
    subs = corr.apply(bindings, parts)
    assert [s.outcome for s in subs] == ["substituted"]
    assert parts.headers == [("Cookie", "sid=stg-456")]
    other = SessionBindings()
    corr.learn(other, "POST /login", [("Set-Cookie", "sid=rec-123")], None, None, None)
    parts = RequestParts("GET", "h", "/", [], [("Cookie", "sid=rec-123")], None)
    assert [s.outcome for s in corr.apply(other, parts)] == ["miss"]
    assert parts.headers == [("Cookie", "sid=rec-123")]
