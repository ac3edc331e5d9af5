"""Matching, sequences, seeded faults and response bytes: the double's logic without sockets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from serve_testkit import rec, write_recording

from shadowtape.errors import InputError
from shadowtape.serve.compare import RequestView, RouteComparer, json_contains
from shadowtape.serve.decide import Decider, Policy
from shadowtape.serve.faults import LatencyModel, injected_fault
from shadowtape.serve.matchers import FaultRates, MatcherSet, load_matchers
from shadowtape.serve.recording import load_recording
from shadowtape.serve.stats import ServeCounters
from shadowtape.serve.wire import render
from shadowtape.sessions import SessionKey

NO_FAULTS = FaultRates()


def view(method: str, path: str, body: object = None, query=(), headers=()) -> RequestView:
    import json

    raw = json.dumps(body).encode() if body is not None else b""
    pairs = list(headers) + ([("Content-Type", "application/json")] if body is not None else [])
    return RequestView.of(method, path, list(query), pairs, raw)


def decider(
    tmp_path: Path,
    records,
    *,
    matchers: MatcherSet | None = None,
    exhausted: str = "repeat-last",
    rates: FaultRates = NO_FAULTS,
    seed: int = 0,
    session_key: str = "header:X-Session",
    miss: str = "404",
) -> Decider:
    write_recording(tmp_path / "rec", records)
    key = SessionKey.parse(session_key)
    recording = load_recording(tmp_path / "rec", matchers or MatcherSet(), key)
    policy = Policy(exhausted, miss, rates, seed, LatencyModel("recorded", 1.0, seed), key)
    return Decider(recording, policy, ServeCounters())


def ask(d: Decider, v: RequestView, session: str | None = None):
    headers = [(n, x) for n, xs in v.headers.items() for x in xs]
    if session is not None:
        headers.append(("X-Session", session))
    return d.decide(v, headers)


# --- scoring ------------------------------------------------------------------------------


def test_json_bodies_compare_structurally_and_score_by_share_of_leaves() -> None:
    comparer = RouteComparer(MatcherSet().defaults)
    a = comparer.compared(view("POST", "/pay", {"amount": 10, "currency": "EUR", "x": [1, 2]}))
    same = comparer.compared(view("POST", "/pay", {"x": [1, 2], "currency": "EUR", "amount": 10.0}))
    one_off = comparer.compared(
        view("POST", "/pay", {"amount": 11, "currency": "EUR", "x": [1, 2]})
    )
    assert a.fingerprint == same.fingerprint  # key order and 10 vs 10.0 do not matter
    assert comparer.score(a, same) == 1.0
    # One of four leaves differs: body distance 1/4, weight 3 of 9 -> 1 - 0.75/9.
    assert comparer.score(a, one_off) == pytest.approx(1 - 0.75 / 9, abs=1e-6)
    assert "body $.amount" in comparer.explain(a, one_off)


def test_json_subset_semantics() -> None:
    assert json_contains({"a": 1, "b": {"c": [1, 2, 3]}}, {"b": {"c": [3]}})
    assert not json_contains({"a": 1}, {"a": 1, "b": 2})
    assert not json_contains({"a": True}, {"a": 1})


def test_ignored_paths_and_params_leave_the_comparison(tmp_path: Path) -> None:
    f = tmp_path / "m.yaml"
    f.write_text("rules:\n  - {body: $.meta, ignore: true}\n  - {query: ts, ignore: true}\n")
    comparer = RouteComparer(load_matchers(f).defaults)
    a = comparer.compared(view("POST", "/x", {"v": 1, "meta": {"at": 1}}, query=[("ts", "1")]))
    b = comparer.compared(view("POST", "/x", {"v": 1, "meta": {"at": 2}}, query=[("ts", "2")]))
    assert a.fingerprint == b.fingerprint


# --- the decision -------------------------------------------------------------------------


def test_session_create_then_read_gets_the_recorded_sequence(tmp_path: Path) -> None:
    records = [
        rec("s1", 0, "GET", "/orders/A", status=404, response={"error": "none yet"}),
        rec("s1", 1, "POST", "/orders", body={"item": 1}, status=201, response={"id": "A"}),
        rec("s1", 2, "GET", "/orders/A", response={"status": "placed"}),
        rec("s1", 3, "POST", "/orders/A/cancel", response={"status": "cancelled"}),
        rec("s1", 4, "GET", "/orders/A", response={"status": "cancelled"}),
        # Another session's answers for the same requests must not leak in.
        rec("s2", 0, "GET", "/orders/A", response={"status": "other"}),
    ]
    d = decider(tmp_path, records)
    flow = [
        ("GET", "/orders/A", None),
        ("POST", "/orders", {"item": 1}),
        ("GET", "/orders/A", None),
        ("POST", "/orders/A/cancel", None),
        ("GET", "/orders/A", None),
        ("GET", "/orders/A", None),  # past the recording: repeat-last
    ]
    got = []
    for method, path, body in flow:
        decision = ask(d, view(method, path, body), session="s1")
        assert decision.scope == "session"
        got.append((decision.exchange.seq, decision.exchange.status))
    assert got == [(0, 404), (1, 201), (2, 200), (3, 200), (4, 200), (4, 200)]
    assert d.counters.exhausted == {"repeat-last": 1}


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("cycle", [0, 1, 2, 0, 1]), ("repeat-last", [0, 1, 2, 2, 2]), ("miss", [0, 1, 2, None, None])],
)
def test_without_a_session_identical_requests_follow_route_order_then_the_policy(
    tmp_path: Path, policy: str, expected: list[int | None]
) -> None:
    records = [rec(f"s{i}", 0, "GET", "/health", response={"n": i}, at_ms=i) for i in range(3)]
    d = decider(tmp_path, records, exhausted=policy)
    got = []
    for _ in range(5):
        decision = ask(d, view("GET", "/health"))
        got.append(int(decision.exchange.session_id[-1]) if decision.exchange else None)
    assert got == expected
    if policy == "miss":
        assert d.counters.missed == {"exhausted": 2}


def test_best_match_prefers_the_same_path_then_the_closest_body(tmp_path: Path) -> None:
    records = [
        rec("a", 0, "GET", "/products/1", response={"id": 1}),
        rec("a", 1, "GET", "/products/2", response={"id": 2}),
        rec("a", 2, "POST", "/charges", body={"amount": 10, "card": "x"}, response={"c": 10}),
        rec("a", 3, "POST", "/charges", body={"amount": 20, "card": "x"}, response={"c": 20}),
    ]
    d = decider(tmp_path, records, session_key="auto")
    assert ask(d, view("GET", "/products/2")).exchange.view.path == "/products/2"
    near = ask(d, view("POST", "/charges", {"amount": 20, "card": "y"}))
    assert near.exchange.rendered.full.endswith(b'{"c": 20}')
    assert 0 < near.score < 1


def test_a_miss_names_the_closest_candidate_and_why(tmp_path: Path) -> None:
    f = tmp_path / "m.yaml"
    f.write_text("routes:\n  POST /charges:\n    rules:\n      - {body: $.currency, exact: true}\n")
    records = [rec("a", 0, "POST", "/charges", body={"amount": 10, "currency": "EUR"})]
    d = decider(tmp_path, records, matchers=load_matchers(f), session_key="auto")
    miss = ask(d, view("POST", "/charges", {"amount": 10, "currency": "USD"}))
    assert miss.outcome == "missed" and miss.miss_kind == "rule"
    assert re.search(
        r"body \$\.currency exact \(.*m\.yaml:4\): USD vs recorded EUR", miss.miss_reason
    )
    assert miss.closest is not None and miss.closest.view.path == "/charges"
    no_route = ask(d, view("GET", "/charges"))
    assert no_route.miss_kind == "no_route"
    assert "nearest route POST /charges (method differs)" in no_route.miss_reason


def test_regex_rules_judge_the_live_value_only(tmp_path: Path) -> None:
    f = tmp_path / "m.yaml"
    f.write_text('rules:\n  - {header: x-tenant, regex: "t-[0-9]+"}\n')
    records = [rec("a", 0, "GET", "/x", headers=[("X-Tenant", "t-1")])]
    d = decider(tmp_path, records, matchers=load_matchers(f), session_key="auto")
    assert ask(d, view("GET", "/x", headers=[("X-Tenant", "t-99")])).outcome == "matched"
    bad = ask(d, view("GET", "/x", headers=[("X-Tenant", "nope")]))
    assert bad.outcome == "missed" and "does not match" in bad.miss_reason


def test_injected_faults_are_a_function_of_seed_route_and_arrival() -> None:
    rates = FaultRates(error=0.1, timeout=0.05, reset=0.05)
    first = [injected_fault(7, rates, "GET /x", i) for i in range(2000)]
    assert first == [injected_fault(7, rates, "GET /x", i) for i in range(2000)]
    assert first != [injected_fault(8, rates, "GET /x", i) for i in range(2000)]
    counts = {k: first.count(k) for k in ("error", "timeout", "reset")}
    for kind, p in (("error", 0.1), ("timeout", 0.05), ("reset", 0.05)):
        mean, sd = 2000 * p, (2000 * p * (1 - p)) ** 0.5
        assert abs(counts[kind] - mean) <= 4 * sd, (kind, counts)


def test_an_injected_fault_uses_up_no_recorded_answer(tmp_path: Path) -> None:
    records = [
        rec("a", 0, "GET", "/x", response={"n": 0}),
        rec("a", 1, "GET", "/x", response={"n": 1}),
    ]
    d = decider(tmp_path, records, rates=FaultRates(error=0.5), seed=3, session_key="auto")
    answered = []
    for _ in range(12):
        decision = ask(d, view("GET", "/x"))
        if decision.outcome == "matched":
            answered.append(decision.exchange.rendered.full.rsplit(b"\r\n", 1)[1])
    assert answered[:2] == [b'{"n": 0}', b'{"n": 1}']
    assert d.counters.injected_faults["error"] + d.counters.matched == 12


def test_distribution_latency_is_a_seeded_sample_of_the_route() -> None:
    model = LatencyModel("distribution", 2.0, seed=5)
    values = [10, 20, 30, 40]
    draws = [model.delay_us(None, values, "GET /x", i) for i in range(50)]
    assert draws == [model.delay_us(None, values, "GET /x", i) for i in range(50)]
    assert set(draws) <= {20, 40, 60, 80} and len(set(draws)) > 1


# --- matcher files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("rules:\n  - {body: $.a, regex: '(['}\n", ":2", "regex '\\(\\[':"),
        ("rules:\n  - {query: page}\n", ":2", "exactly one of exact, regex"),
        (
            "routes:\n  GET /a:\n    rules:\n      - {body: 'a.b', ignore: true}\n",
            ":4",
            "must start with",
        ),
        ("headers: x-tenant\n", ":1", "headers must be a list"),
        ("rule: []\n", ":1", "unknown key 'rule'"),
        ("routes:\n  /a: {}\n", ":2", "METHOD /path"),
        ("routes:\n  GET /a:\n    faults: {error_rate: 2}\n", ":3", "outside 0..1"),
        ("rules: [\n", ":2", "not valid YAML/JSON"),
    ],
)
def test_a_bad_matcher_file_is_one_clear_line_with_file_and_line(
    tmp_path: Path, text: str, where: str, what: str
) -> None:
    f = tmp_path / "matchers.yaml"
    f.write_text(text)
    with pytest.raises(InputError) as err:
        load_matchers(f)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{f}{where}: "), message
    assert re.search(what, message), message


def test_json_matcher_files_with_tabs_load(tmp_path: Path) -> None:
    f = tmp_path / "m.json"
    f.write_text(
        '{\n\t"headers": ["X-Tenant"],\n\t"rules": [{"body": "$.meta", "ignore": true}]\n}'
    )
    m = load_matchers(f)
    assert m.defaults.headers == ("x-tenant",)


# --- bytes on the wire ------------------------------------------------------------------------


def test_recorded_headers_go_out_as_recorded_with_true_framing() -> None:
    headers = [
        ("X-Name", "café ☕"),
        ("content-length", "999"),  # the recorded spelling, the length of what is sent
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        (":status", "200"),  # an HTTP/2 pseudo-header cannot be sent
    ]
    out = render(200, "Fine", headers, b"hello")
    assert out.full == (
        b"HTTP/1.1 200 Fine\r\nX-Name: caf\xc3\xa9 \xe2\x98\x95\r\ncontent-length: 5\r\n"
        b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nhello"
    )
    assert out.dropped_headers == 1
    chunked = render(200, None, [("Transfer-Encoding", "chunked")], b"abc")
    assert chunked.full.endswith(b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert (
        render(204, None, [("Content-Length", "3")], b"").full == b"HTTP/1.1 204 No Content\r\n\r\n"
    )


def test_fault_rates_per_route_come_from_the_matcher_file(tmp_path: Path) -> None:
    f = tmp_path / "m.yaml"
    f.write_text("routes:\n  POST /charges:\n    faults: {reset_rate: 1.0}\n")
    records = [rec("a", 0, "POST", "/charges", body={"n": 1}), rec("a", 1, "GET", "/status")]
    d = decider(tmp_path, records, matchers=load_matchers(f), session_key="auto")
    assert {ask(d, view("POST", "/charges", {"n": 1})).injected_fault for _ in range(5)} == {
        "reset"
    }
    assert {ask(d, view("GET", "/status")).outcome for _ in range(5)} == {"matched"}
    assert d.counters.injected_faults == {"reset": 5}
