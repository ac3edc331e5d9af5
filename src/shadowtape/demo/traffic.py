"""Seeded shopper traffic for the demo shop: sessions of login, browse, create, update.

The plan (who shops, what they look at, what they buy, how long they pause) is a pure function
of the seed; `send_traffic` plays it against a base URL, normally the capture proxy in front of
the production service. Each session is one shopper with their own HTTP client, a session
header the capture proxy groups by, and a bearer token from their own login, so the recording
holds real credentials for capture to tokenize and real minted ids for replay to correlate.

`python -m shadowtape.demo.traffic --base-url URL --requests N --seed S` does the same from a
shell.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import click
import httpx

from shadowtape.demo.data import Person, catalog, person, search_terms
from shadowtape.demo.defaults import DEFAULT_REQUESTS, DEFAULT_SEED

SESSION_HEADER = "X-Session-Id"
USER_AGENT = "shadowtape-demo-shopper/1.0"
CANCEL_SHARE = 0.35  # sessions that end by cancelling their order (a planted 500 on staging)


@dataclass(frozen=True, slots=True)
class Step:
    kind: str
    think_s: float  # pause before sending, as a person reading a page would
    params: tuple[tuple[str, Any], ...] = ()

    def param(self, name: str) -> Any:
        return dict(self.params)[name]


@dataclass(frozen=True, slots=True)
class SessionPlan:
    index: int
    session_id: str
    shopper: Person
    steps: tuple[Step, ...]


def _session_steps(rng: random.Random, shopper: Person) -> list[Step]:
    products = catalog()
    terms = search_terms(products)

    def think() -> float:
        return round(rng.uniform(0.005, 0.04), 4)

    steps = [Step("register", 0.0), Step("login", think())]
    for page in rng.sample(range(1, 5), rng.randint(1, 2)):
        steps.append(Step("list_products", think(), (("page", page),)))
    steps.append(Step("search", think(), (("q", rng.choice(terms)),)))
    viewed = rng.sample(products, rng.randint(1, 3))
    steps += [Step("get_product", think(), (("id", p.id),)) for p in viewed]
    lines = tuple((p.id, rng.randint(1, 3)) for p in viewed)
    steps.append(Step("create_order", think(), (("lines", lines),)))
    steps.append(Step("get_order", think()))
    steps.append(Step("update_phone", think()))
    steps.append(Step("get_user", think()))
    # Cancelling comes last: on staging it fails, and nothing after it may depend on it, or
    # one planted error would cascade into drift that was never planted. Shoppers do not log
    # out: replay's noise pass re-sends reads after their session has ended, and a revoked
    # token would turn those second answers into 401s that teach the diff nothing.
    if rng.random() < CANCEL_SHARE:
        steps.append(Step("cancel_order", think()))
    return steps


def plan_sessions(seed: int, requests: int) -> list[SessionPlan]:
    """Whole sessions until `requests` are planned; the last one is cut to fit exactly."""
    plans: list[SessionPlan] = []
    planned = 0
    index = 0
    while planned < requests:
        rng = random.Random(f"{seed}:session:{index}")
        shopper = person(seed, index)
        steps = _session_steps(rng, shopper)[: requests - planned]
        session_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        plans.append(SessionPlan(index, session_id, shopper, tuple(steps)))
        planned += len(steps)
        index += 1
    return plans


@dataclass
class TrafficSummary:
    sessions: int = 0
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    # Steps not sent because an earlier step of the session failed to give what they need.
    skipped: int = 0
    elapsed_s: float = 0.0

    @property
    def failed(self) -> int:
        """Requests that did not get a 2xx answer, for whatever reason."""
        bad = sum(n for status, n in self.statuses.items() if not 200 <= status < 300)
        return bad + sum(self.transport_errors.values())

    def line(self) -> str:
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items()))
        errors = sum(self.transport_errors.values())
        return (
            f"{self.requests} requests in {self.sessions} sessions "
            f"({statuses or 'no responses'}; {errors} transport errors; "
            f"{self.skipped} steps skipped) in {self.elapsed_s:.1f} s"
        )

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["statuses"] = {str(k): v for k, v in sorted(self.statuses.items())}
        data["transport_errors"] = dict(self.transport_errors)
        return data


class _SessionState:
    def __init__(self) -> None:
        self.user_id: str | None = None
        self.token: str | None = None
        self.order_id: str | None = None


def _request_for(step: Step, shopper: Person, state: _SessionState) -> dict[str, Any] | None:
    """httpx.request arguments for a step, or None when the session lacks what it needs."""
    auth = {"Authorization": f"Bearer {state.token}"} if state.token else None
    kind = step.kind
    if kind == "register":
        return {"method": "POST", "url": "/api/users", "json": shopper.registration()}
    if kind == "login":
        body = {"email": shopper.email, "password": shopper.password}
        return {"method": "POST", "url": "/api/login", "json": body}
    if kind == "list_products":
        return {"method": "GET", "url": "/api/products", "params": {"page": step.param("page")}}
    if kind == "search":
        return {"method": "GET", "url": "/api/products/search", "params": {"q": step.param("q")}}
    if kind == "get_product":
        return {"method": "GET", "url": f"/api/products/{step.param('id')}"}
    if auth is None:
        return None
    if kind == "create_order":
        order = {
            "items": [{"product_id": pid, "quantity": q} for pid, q in step.param("lines")],
            "shipping_address": asdict(shopper.address),
            "card_number": shopper.card_number,
        }
        return {"method": "POST", "url": "/api/orders", "json": order, "headers": auth}
    if kind in ("get_user", "update_phone") and state.user_id is None:
        return None
    if kind == "get_user":
        return {"method": "GET", "url": f"/api/users/{state.user_id}", "headers": auth}
    if kind == "update_phone":
        body = {"phone": shopper.new_phone}
        url = f"/api/users/{state.user_id}"
        return {"method": "PATCH", "url": url, "json": body, "headers": auth}
    if state.order_id is None:
        return None
    if kind == "get_order":
        return {"method": "GET", "url": f"/api/orders/{state.order_id}", "headers": auth}
    if kind == "cancel_order":
        return {"method": "POST", "url": f"/api/orders/{state.order_id}/cancel", "headers": auth}
    raise ValueError(f"unknown step kind {kind!r}")


def _learn(step: Step, response: httpx.Response, state: _SessionState) -> None:
    if not response.is_success or not response.content:
        return
    body = response.json()
    if step.kind == "register":
        state.user_id = body.get("id")
    elif step.kind == "login":
        state.token = body.get("token")
        state.user_id = body.get("user_id", state.user_id)
    elif step.kind == "create_order":
        state.order_id = body.get("id")


async def _run_session(
    base_url: str,
    plan: SessionPlan,
    summary: TrafficSummary,
    sleep: Callable[[float], Any],
    timeout_s: float,
    progress: Callable[[TrafficSummary], None],
) -> None:
    state = _SessionState()
    headers = {SESSION_HEADER: plan.session_id, "User-Agent": USER_AGENT}
    # trust_env=False: a proxy from the environment must not sit between us and loopback.
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, timeout=timeout_s, trust_env=False
    ) as client:
        for step in plan.steps:
            if step.think_s:
                await sleep(step.think_s)
            args = _request_for(step, plan.shopper, state)
            if args is None:
                summary.skipped += 1
                continue
            summary.requests += 1
            try:
                response = await client.request(**args)
            except httpx.HTTPError as exc:
                summary.transport_errors[type(exc).__name__] += 1
                progress(summary)
                continue
            summary.statuses[response.status_code] += 1
            progress(summary)
            _learn(step, response, state)


async def send_traffic(
    base_url: str,
    plans: list[SessionPlan],
    concurrency: int = 8,
    sleep: Callable[[float], Any] = asyncio.sleep,
    timeout_s: float = 30.0,
    progress: Callable[[TrafficSummary], None] = lambda _summary: None,
) -> TrafficSummary:
    """Play the sessions, `concurrency` shoppers at a time; every request is counted and
    `progress` sees the counts after each answer."""
    summary = TrafficSummary(sessions=len(plans))
    slots = asyncio.Semaphore(concurrency)
    started = time.monotonic()

    async def one(plan: SessionPlan) -> None:
        async with slots:
            await _run_session(base_url, plan, summary, sleep, timeout_s, progress)

    await asyncio.gather(*(one(p) for p in plans))
    summary.elapsed_s = time.monotonic() - started
    return summary


def generate(base_url: str, requests: int, seed: int, concurrency: int = 8) -> TrafficSummary:
    return asyncio.run(send_traffic(base_url, plan_sessions(seed, requests), concurrency))


@click.command()
@click.option("--base-url", required=True, help="Where to send: the capture proxy's URL.")
@click.option("--requests", type=click.IntRange(min=1), default=DEFAULT_REQUESTS, show_default=True)
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1), default=8, show_default=True)
def main(base_url: str, requests: int, seed: int, concurrency: int) -> None:
    """Send seeded shopper sessions to the demo shop (normally through `shadowtape capture`).

    Example: python -m shadowtape.demo.traffic --base-url http://127.0.0.1:8080 --requests 300
    """
    summary = generate(base_url, requests, seed, concurrency)
    click.echo(summary.line())
    if summary.failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
