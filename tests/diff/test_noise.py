import pytest

from shadowtape.diff.compare import Difference
from shadowtape.diff.noise import (
    IGNORED,
    NoiseModel,
    NoiseThresholds,
    PinnedRule,
    PinnedRules,
    load_pinned_rules,
    volatile_kind,
)
from shadowtape.errors import InputError
from shadowtape.keyed import Key, Keyed

ROUTE = "GET /x"
NOW = 1_795_000_000_000_000  # µs


def d(location, rec='"a"', stg='"b"', part="body", kind="changed"):
    return Difference(part, location, location, kind, rec, stg)


def feed(model, n, differing, replay_pairs=0, replay_differing=0, volatile=None):
    for i in range(n):
        model.observe_request(ROUTE)
        if i < differing:
            model.observe_differences(ROUTE, [d("$.f")], [volatile])
    for i in range(replay_pairs):
        model.observe_replay_pair(ROUTE, [d("$.f")] if i < replay_differing else [])
    return model.decide(ROUTE, "body", "$.f")


def test_a_field_that_differs_only_against_the_recording_is_drift():
    decision = feed(NoiseModel(), 100, 100, replay_pairs=10, replay_differing=0)
    assert decision.classification == "drift"
    assert (decision.requests_differing, decision.requests, decision.sampled) == (100, 100, 10)


def test_a_field_that_also_differs_between_replays_is_noise_with_the_sample_scaled():
    # 10 sampled pairs all differ: scaled to the route, S' = 100 >= R.
    decision = feed(NoiseModel(), 100, 100, replay_pairs=10, replay_differing=10)
    assert decision.classification == "noise"
    assert decision.replays_differing_scaled == 100
    assert "same request" in decision.reason


def test_thresholds_decide_between():
    # R=60, S'=50: excess 10% of requests but contrast 10/110: noise by default...
    decision = feed(NoiseModel(), 100, 60, replay_pairs=10, replay_differing=5)
    assert decision.classification == "noise" and "below thresholds" in decision.reason
    # ...drift when the user lowers the contrast threshold.
    model = NoiseModel(thresholds=NoiseThresholds(min_request_rate=0.05, min_contrast=0.05))
    assert feed(model, 100, 60, replay_pairs=10, replay_differing=5).classification == "drift"
    # One request in a thousand is under the default 1% rate.
    assert feed(NoiseModel(), 1000, 1).classification == "noise"


def test_without_a_sample_drift_says_the_noise_was_not_measured():
    decision = feed(NoiseModel(), 10, 10)
    assert decision.classification == "drift" and "no noise sample" in decision.reason


def test_a_path_whose_every_difference_is_volatile_is_noise():
    assert feed(NoiseModel(), 10, 10, volatile="uuid").classification == "noise"
    model = NoiseModel()
    for i in range(10):
        model.observe_request(ROUTE)
        model.observe_differences(ROUTE, [d("$.f")], ["uuid" if i else None])
    assert model.decide(ROUTE, "body", "$.f").classification == "drift"


def test_volatile_kinds():
    uuid_a, uuid_b = (
        '"0b7e1f3a-1d2c-4e5f-9a8b-7c6d5e4f3a2b"',
        '"1c8f2a4b-2e3d-4f6a-8b9c-8d7e6f5a4b3c"',
    )
    assert volatile_kind(d("$.id", uuid_a, uuid_b), NOW, NOW) == "uuid"
    assert volatile_kind(d("$.meta.request_id", '"a1"', '"b2"'), NOW, NOW) == "request id"
    assert volatile_kind(d("etag", '"1"', '"2"', part="header"), NOW, NOW).startswith("volatile")
    assert volatile_kind(d("cache-control", "a", "b", part="header"), NOW, NOW) is None
    iso_rec, iso_stg = '"2026-11-18T10:13:20Z"', '"2026-11-18T10:13:21.5+00:00"'
    assert volatile_kind(d("$.at", iso_rec, iso_stg), NOW, NOW + 1_000_000) is not None
    # Epoch seconds and milliseconds near the exchange, too.
    assert volatile_kind(d("$.t", "1795000000.5", "1795000001"), NOW, NOW) is not None
    assert volatile_kind(d("$.t", "1795000000500", "1795000001000"), NOW, NOW) is not None
    # A date far from the exchange is data, not a clock: a changed birthday is drift.
    assert (
        volatile_kind(d("$.born", '"1990-01-01T00:00:00Z"', '"1991-01-01T00:00:00Z"'), NOW, NOW)
        is None
    )
    assert volatile_kind(d("$.n", "1", "2"), NOW, NOW) is None
    assert volatile_kind(d("$.id", uuid_a, None, kind="removed"), NOW, NOW) is None


def test_recorded_credential_token_is_noise():
    # Capture and sanitize replace a server-minted credential by a keyed token; staging mints
    # its own, so the two can never match.
    token = Keyed(Key(b"k" * 32, "test")).secret("session-abc")
    assert volatile_kind(d("$.token", f'"{token}"', '"fresh-xyz"'), NOW, NOW) == "credential token"
    assert volatile_kind(d("$.token", '"session-abc"', '"fresh-xyz"'), NOW, NOW) is None


def test_pinned_rules_file(tmp_path):
    f = tmp_path / "ignore.yaml"
    f.write_text(
        "ignore: $.meta.generated_at\n"
        "noise:\n  - header: etag\n  - {path: '$.items[0].price', route: 'GET /x'}\n"
        "drift: [status]\n"
    )
    rules = load_pinned_rules(f)
    assert rules.find(ROUTE, "body", "$.meta.generated_at").classification == "ignored"
    assert rules.find(ROUTE, "body", "$.meta.generated_at.sub") is not None
    assert rules.find(ROUTE, "header", "etag").classification == "noise"
    assert rules.find(ROUTE, "body", "$.items[*].price").classification == "noise"
    assert rules.find("GET /y", "body", "$.items[*].price") is None
    assert rules.find(ROUTE, "status", "status").classification == "drift"
    model = NoiseModel(pinned=rules)
    for _ in range(3):
        model.observe_request(ROUTE)
        model.observe_differences(ROUTE, [d("$.meta.generated_at")], [None])
    decision = model.decide(ROUTE, "body", "$.meta.generated_at")
    assert decision.classification == "ignored" and "pinned" in decision.reason


@pytest.mark.parametrize(
    "text,message",
    [
        ("ignore: ['$.a[']\n", "cannot read"),
        ("skip: [$.a]\n", "expected a mapping"),
        ("ignore:\n  - {route: 'GET /x'}\n", "names no path"),
        ("ignore: [\n", "not valid YAML"),
    ],
)
def test_bad_pinned_rules_are_one_clear_error(tmp_path, text, message):
    f = tmp_path / "ignore.yaml"
    f.write_text(text)
    with pytest.raises(InputError, match=message):
        load_pinned_rules(f)


def test_empty_rules():
    assert PinnedRules().find(ROUTE, "body", "$.a") is None


def test_pinned_rules_cover_the_path_its_subtree_and_wildcards():
    def covers(rule: str, location: str) -> bool:
        return PinnedRule(IGNORED, rule).covers(ROUTE, "body", location)

    assert covers("$.meta", "$.meta.generated_at")
    assert covers("$.meta.generated_at", "$.meta.generated_at")
    assert covers("$.items[0].price", "$.items[*].price")
    assert covers("$.*.id", "$.user.id")
    assert covers("$..generated_at", "$.a[*].generated_at")  # one grammar: `..` works here too
    assert not covers("$.meta", "$.metadata")
    assert not covers("$.meta.x", "$.meta")
    assert not covers("$.*.id", "$.items[*].id")
    assert not covers("$.x[", "$.x")
