"""The shop's dependency, as pure logic: a small payment provider the shop calls over HTTP.

It charges an order's card when the order is placed and refunds the charge when the order is
cancelled, after a provider-like delay. The shop authenticates with an API key (a credential
for capture to tokenize) and passes its `X-Session-Id` along, so the provider's recordings
group into the shop's sessions and `shadowtape serve` can stand in for it session by session.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from shadowtape.demo.shop import HttpError, Request, Response, json_object

# The demo's API key, known to both sides; a real shop would read it from a secret store.
DEMO_API_KEY = "sk_demo_4f6b1c2a9e8d7f30b5a4c1d2"
# A provider's typical answer time, kept short so the demo stays quick.
CHARGE_DELAY_S = (0.015, 0.035)
REFUND_DELAY_S = (0.008, 0.02)
_CARD = re.compile(r"^\d{12,19}$")
_REFUND = re.compile(r"^/v1/charges/(?P<id>ch_[0-9a-f]+)/refund$")


class PaymentsAPI:
    """One running provider. Thread-safe; the random generator, clock and sleep are inputs."""

    version = "payments"

    def __init__(
        self,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        api_key: str = DEMO_API_KEY,
    ) -> None:
        self._rng = random.Random(f"{seed}:payments")
        self._clock = clock
        self._sleep = sleep
        self._api_key = api_key
        self._lock = threading.Lock()
        self.charges: dict[str, dict[str, Any]] = {}
        self.requests_served = 0

    def handle(self, req: Request) -> Response:
        with self._lock:
            self.requests_served += 1
        try:
            self._authorize(req)
            if req.method == "POST" and req.path == "/v1/charges":
                return self._charge(req)
            refund = _REFUND.match(req.path)
            if req.method == "POST" and refund:
                return self._refund(refund["id"])
            raise HttpError(404, f"no route for {req.method} {req.path}")
        except HttpError as exc:
            return Response(exc.status, {"error": exc.message})

    def _authorize(self, req: Request) -> None:
        if req.headers.get("authorization") != f"Bearer {self._api_key}":
            raise HttpError(401, "invalid API key")

    def _delay(self, bounds: tuple[float, float]) -> None:
        with self._lock:
            delay = self._rng.uniform(*bounds)
        self._sleep(delay)

    def _charge(self, req: Request) -> Response:
        data = json_object(req.body)
        amount = data.get("amount")
        card = str(data.get("card_number", "")).replace(" ", "")
        if not isinstance(amount, int | float) or amount <= 0 or not _CARD.match(card):
            raise HttpError(422, "a charge needs a positive amount and a card_number")
        self._delay(CHARGE_DELAY_S)
        with self._lock:
            charge = {
                "id": f"ch_{self._rng.getrandbits(96):024x}",
                "status": "captured",
                "amount": amount,
                "currency": data.get("currency", "USD"),
                "order_id": data.get("order_id"),
                "created_at": datetime.fromtimestamp(self._clock(), UTC).isoformat(
                    timespec="seconds"
                ),
            }
            self.charges[charge["id"]] = charge
        return Response(201, charge)

    def _refund(self, charge_id: str) -> Response:
        with self._lock:
            charge = self.charges.get(charge_id)
        if charge is None:
            raise HttpError(404, f"no charge {charge_id}")
        self._delay(REFUND_DELAY_S)
        with self._lock:
            charge["status"] = "refunded"
            refund = {
                "id": f"re_{self._rng.getrandbits(96):024x}",
                "charge_id": charge_id,
                "amount": charge["amount"],
                "status": "refunded",
            }
        return Response(200, refund)


class LocalPayments:
    """The provider called in-process, through the same requests the HTTP client sends."""

    def __init__(self, api: PaymentsAPI, api_key: str = DEMO_API_KEY) -> None:
        self.api = api
        self.api_key = api_key

    def post(self, path: str, body: dict[str, Any] | None, session: str | None) -> tuple[int, Any]:
        headers = {"authorization": f"Bearer {self.api_key}", "content-type": "application/json"}
        if session:
            headers["x-session-id"] = session
        raw = json.dumps(body).encode() if body is not None else b""
        response = self.api.handle(Request("POST", path, headers=headers, body=raw))
        return response.status, response.body
