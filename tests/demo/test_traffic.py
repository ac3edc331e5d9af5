"""Seeded shopper traffic: the plan is a pure function of the seed; playing it counts all."""

import asyncio

from shadowtape.demo.data import catalog, person, personal_values
from shadowtape.demo.traffic import plan_sessions, send_traffic


async def _no_wait(_seconds: float) -> None:
    return None


def play(url: str, requests: int, seed: int = 3):
    return asyncio.run(send_traffic(url, plan_sessions(seed, requests), 4, sleep=_no_wait))


def test_same_seed_same_plan_and_exactly_the_requests_asked_for() -> None:
    a, b = plan_sessions(5, 137), plan_sessions(5, 137)
    assert a == b
    assert sum(len(p.steps) for p in a) == 137
    assert plan_sessions(6, 137) != a
    # A session's content does not depend on how many sessions there are.
    assert plan_sessions(5, 500)[0] == a[0]


def test_sessions_log_in_first_and_cancel_only_at_the_end() -> None:
    plans = plan_sessions(11, 600)
    kinds = [[s.kind for s in p.steps] for p in plans[:-1]]  # the last one may be cut short
    assert all(k[:2] == ["register", "login"] for k in kinds)
    assert any(k[-1] == "cancel_order" for k in kinds)
    assert any(k[-1] == "get_user" for k in kinds)
    assert all("cancel_order" not in k[:-1] for k in kinds)


def test_seeded_people_and_catalog_are_stable_and_distinct() -> None:
    assert person(1, 0) == person(1, 0)
    assert person(1, 0) != person(1, 1)
    assert person(1, 0) != person(2, 0)
    assert catalog() == catalog()
    assert all(v for v in personal_values(person(1, 0)))


def test_every_request_is_answered_by_production(v1_service) -> None:
    summary = play(v1_service.url, 90)
    assert summary.requests == 90
    assert summary.failed == 0 and summary.skipped == 0
    assert summary.statuses[201] > 0 and summary.statuses[200] > 0
    assert v1_service.api.requests_served == 90


def test_staging_failures_are_counted_not_hidden(v2_service) -> None:
    plans = plan_sessions(3, 200)
    cancels = sum(p.steps[-1].kind == "cancel_order" for p in plans)
    summary = play(v2_service.url, 200)
    assert summary.statuses[500] == cancels > 0
    assert summary.failed == cancels
    assert f"500: {cancels}" in summary.line()


def test_a_dead_target_is_counted_as_transport_errors() -> None:
    summary = play("http://127.0.0.1:9", 15)
    assert summary.requests + summary.skipped == 15
    assert sum(summary.transport_errors.values()) == summary.requests > 0
    assert summary.skipped > 0  # no login, so the authenticated steps could not be built
