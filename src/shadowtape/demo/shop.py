"""The demo's sample shop API as pure logic: a request in, a response out, no sockets.

Two versions of one service. v1 plays production; v2 plays staging with deliberate drift
(`PLANTED_DRIFT`), so the demo has something real to find. Both versions also carry the kind of
volatility every real API has (a timestamp, a request id, a nonce, fresh tokens and ids on
every login and create), which the diff stage must recognise as noise rather than drift.

The shop has a dependency it calls over HTTP, a payment provider (payments.py): an order is
charged when placed and refunded when cancelled, through a `PaymentsClient` (in-process by
default; `services.py` gives the shop an HTTP one), so the demo can record the shop's outbound
calls and stand a `shadowtape serve` double in for the provider.

Personal data in responses is only ever echoed from what the same session sent (registration,
profile updates, shipping addresses). That is what makes a sanitized replay comparable: the
recorded request and response carry the same pseudonym for a value, staging echoes the
pseudonym it was sent, and the two responses agree.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from shadowtape.demo.data import Product, catalog

VERSIONS = ("v1", "v2")
PAGE_SIZE = 12
TOKEN_TTL_S = 3600


@dataclass(frozen=True, slots=True)
class PlantedDrift:
    """One difference v2 has on purpose; what the report must find and nothing else."""

    route: str  # method and path template
    kind: str  # removed | added | type_changed | status | latency
    location: str  # JSON path, or "status" / "latency"
    what: str


PLANTED_DRIFT: tuple[PlantedDrift, ...] = (
    PlantedDrift("GET /api/users/{uuid}", "removed", "$.phone", "renamed to phone_number"),
    PlantedDrift("GET /api/users/{uuid}", "added", "$.phone_number", "renamed from phone"),
    PlantedDrift("GET /api/users/{uuid}", "added", "$.loyalty_tier", "a new field"),
    PlantedDrift("GET /api/orders/{uuid}", "type_changed", "$.total", "a number became a string"),
    PlantedDrift("POST /api/orders/{uuid}/cancel", "status", "status", "200 became 500"),
    PlantedDrift("GET /api/products/search", "latency", "latency", "twice as slow"),
)

# Search is the one route with real work behind it; v2 "forgot an index". Long enough to stand
# out from the tens of milliseconds a loaded 2-core machine adds to every request, short
# enough to keep the demo quick (one search per session).
SEARCH_DELAY_S = {"v1": 0.1, "v2": 0.2}


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""


@dataclass(slots=True)
class Response:
    status: int
    body: Any = None  # JSON-serialisable, or None for an empty body
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes:
        if self.body is None:
            return b""
        return json.dumps(self.body, separators=(",", ":")).encode()


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_object(body: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object, or the 400 that says why not."""
    try:
        data = json.loads(body or b"null")
    except ValueError:
        raise HttpError(400, "request body is not JSON") from None
    if not isinstance(data, dict):
        raise HttpError(400, "request body must be a JSON object")
    return data


class PaymentsUnavailable(Exception):
    """The payment provider could not be reached or gave no readable answer."""


class PaymentsClient(Protocol):
    """How the shop calls its payment provider: (status, JSON body) for a POST."""

    def post(
        self, path: str, body: dict[str, Any] | None, session: str | None
    ) -> tuple[int, Any]: ...


# Personal fields are kept as whatever JSON was sent and echoed back unchanged: a sanitized
# replay may send a redaction marker where production got an object, and staging must echo it
# like production echoed the original, not reject it.
@dataclass(slots=True)
class User:
    id: str
    name: str
    email: str
    phone: Any
    date_of_birth: Any
    address: Any
    password_digest: str


@dataclass(slots=True)
class Order:
    id: str
    user_id: str
    items: list[dict[str, Any]]
    total: float
    shipping_address: Any
    status: str = "placed"
    payment_status: str = "unpaid"
    charge_id: str | None = None  # the provider's, never shown to the shopper


_Handler = Callable[["ShopAPI", Request, "re.Match[str]"], Response]
_ROUTES: list[tuple[str, re.Pattern[str], _Handler]] = []


def _route(method: str, pattern: str) -> Callable[[_Handler], _Handler]:
    def register(fn: _Handler) -> _Handler:
        _ROUTES.append((method, re.compile(f"^{pattern}$"), fn))
        return fn

    return register


class ShopAPI:
    """One running shop. Thread-safe: the HTTP server calls `handle` from many threads.

    The random generator, clock and sleep are inputs so tests can pin ids and skip the delay.
    """

    def __init__(
        self,
        version: str = "v1",
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        payments: PaymentsClient | None = None,
    ) -> None:
        if version not in VERSIONS:
            raise ValueError(f"unknown version {version!r}; expected one of {VERSIONS}")
        self.version = version
        # Each version mints from its own stream, so staging never hands out production's ids
        # by coincidence and correlation is really exercised.
        self._rng = random.Random(f"{seed}:{version}")
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self.products: dict[int, Product] = {p.id: p for p in catalog()}
        self.users: dict[str, User] = {}
        self.users_by_email: dict[str, str] = {}
        self.tokens: dict[str, tuple[str, float]] = {}
        self.orders: dict[str, Order] = {}
        self.requests_served = 0
        if payments is None:
            # In-process by default, so the shop's logic runs (and is tested) on its own.
            from shadowtape.demo.payments import LocalPayments, PaymentsAPI

            payments = LocalPayments(PaymentsAPI(seed, clock, sleep))
        self.payments = payments

    # --- plumbing ---------------------------------------------------------------------

    def handle(self, req: Request) -> Response:
        with self._lock:
            self.requests_served += 1
        for method, pattern, fn in _ROUTES:
            match = pattern.match(req.path)
            if match and method == req.method:
                try:
                    return fn(self, req, match)
                except HttpError as exc:
                    return self._error(exc.status, exc.message)
        if any(pattern.match(req.path) for _, pattern, _ in _ROUTES):
            return self._error(405, f"{req.method} not allowed on {req.path}")
        return self._error(404, f"no route for {req.method} {req.path}")

    def _uuid(self) -> str:
        with self._lock:
            return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _meta(self, nonce: bool = False) -> dict[str, str]:
        meta = {
            "generated_at": datetime.fromtimestamp(self._clock(), UTC).isoformat(
                timespec="milliseconds"
            ),
            "request_id": self._uuid(),
        }
        if nonce:
            # Reads carry a cache-busting nonce: different on every call, even for the same
            # request, which is exactly what a second staging replay reveals as noise.
            with self._lock:
                meta["nonce"] = f"{self._rng.getrandbits(64):016x}"
        return meta

    def _ok(self, body: dict[str, Any], status: int = 200, read: bool = False) -> Response:
        return Response(status, {**body, "meta": self._meta(nonce=read)})

    def _error(self, status: int, message: str) -> Response:
        return Response(status, {"error": message, "meta": self._meta()})

    @staticmethod
    def _json(req: Request) -> dict[str, Any]:
        return json_object(req.body)

    def _pay(self, req: Request, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        """A call to the provider, the shopper's session passed along; 502 when it fails."""
        try:
            status, answer = self.payments.post(path, body, req.headers.get("x-session-id"))
        except PaymentsUnavailable as exc:
            raise HttpError(502, f"payment provider unavailable ({exc})") from None
        if not 200 <= status < 300 or not isinstance(answer, dict):
            raise HttpError(502, f"payment provider answered {status}")
        return answer

    def _user_for(self, req: Request) -> User:
        auth = req.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HttpError(401, "missing bearer token")
        with self._lock:
            entry = self.tokens.get(token)
        if entry is None or entry[1] < self._clock():
            raise HttpError(401, "unknown or expired token")
        return self.users[entry[0]]

    def _own_user(self, req: Request, user_id: str) -> User:
        user = self._user_for(req)
        if user.id != user_id:
            raise HttpError(404 if user_id not in self.users else 403, "not your account")
        return user

    def _own_order(self, req: Request, order_id: str) -> Order:
        user = self._user_for(req)
        order = self.orders.get(order_id)
        if order is None or order.user_id != user.id:
            raise HttpError(404, f"no order {order_id}")
        return order

    @staticmethod
    def _digest(password: str) -> str:
        return hashlib.sha256(password.encode()).hexdigest()

    @staticmethod
    def _user_view(user: User) -> dict[str, Any]:
        return {
            "id": user.id,
            "name": user.name,
            "email": user.email,
            "phone": user.phone,
            "date_of_birth": user.date_of_birth,
            "address": user.address,
        }

    @staticmethod
    def _order_view(order: Order) -> dict[str, Any]:
        view = asdict(order)
        del view["charge_id"]
        view["currency"] = "USD"
        return view

    # --- routes -----------------------------------------------------------------------

    @_route("POST", r"/api/users")
    def register(self, req: Request, _: re.Match[str]) -> Response:
        data = self._json(req)
        missing = [k for k in ("name", "email", "password") if not data.get(k)]
        if missing:
            raise HttpError(422, f"missing {', '.join(missing)}")
        with self._lock:
            if data["email"] in self.users_by_email:
                raise HttpError(409, "email already registered")
        user = User(
            id=self._uuid(),
            name=str(data["name"]),
            email=str(data["email"]),
            phone=data.get("phone"),
            date_of_birth=data.get("date_of_birth"),
            address=data.get("address"),
            password_digest=self._digest(str(data["password"])),
        )
        with self._lock:
            self.users[user.id] = user
            self.users_by_email[user.email] = user.id
        return self._ok(self._user_view(user), status=201)

    @_route("POST", r"/api/login")
    def login(self, req: Request, _: re.Match[str]) -> Response:
        data = self._json(req)
        with self._lock:
            user_id = self.users_by_email.get(str(data.get("email")))
        user = self.users.get(user_id or "")
        if user is None or user.password_digest != self._digest(str(data.get("password"))):
            raise HttpError(401, "wrong email or password")
        # A fresh token on every login: a replay that sends the recorded one gets a 401.
        with self._lock:
            token = f"{self._rng.getrandbits(192):048x}"
            self.tokens[token] = (user.id, self._clock() + TOKEN_TTL_S)
        body = {"token": token, "token_type": "Bearer", "expires_in": TOKEN_TTL_S}
        return self._ok({**body, "user_id": user.id})

    @_route("POST", r"/api/logout")
    def logout(self, req: Request, _: re.Match[str]) -> Response:
        self._user_for(req)
        token = req.headers["authorization"].partition(" ")[2]
        with self._lock:
            self.tokens.pop(token, None)
        return Response(204)

    @_route("GET", r"/api/products")
    def list_products(self, req: Request, _: re.Match[str]) -> Response:
        try:
            page = max(1, int(req.query.get("page", "1")))
        except ValueError:
            raise HttpError(400, "page must be an integer") from None
        items = list(self.products.values())
        start = (page - 1) * PAGE_SIZE
        body = {
            "items": [p.as_json() for p in items[start : start + PAGE_SIZE]],
            "page": page,
            "per_page": PAGE_SIZE,
            "total": len(items),
        }
        return self._ok(body, read=True)

    @_route("GET", r"/api/products/search")
    def search_products(self, req: Request, _: re.Match[str]) -> Response:
        q = req.query.get("q", "").strip().lower()
        if not q:
            raise HttpError(400, "missing query parameter q")
        self._sleep(SEARCH_DELAY_S[self.version])
        hits = [p.as_json() for p in self.products.values() if q in p.title.lower()]
        return self._ok({"query": q, "count": len(hits), "items": hits}, read=True)

    @_route("GET", r"/api/products/(?P<id>\d+)")
    def get_product(self, req: Request, m: re.Match[str]) -> Response:
        product = self.products.get(int(m["id"]))
        if product is None:
            raise HttpError(404, f"no product {m['id']}")
        return self._ok(product.as_json(), read=True)

    @_route("POST", r"/api/orders")
    def create_order(self, req: Request, _: re.Match[str]) -> Response:
        user = self._user_for(req)
        data = self._json(req)
        items = []
        for line in data.get("items") or []:
            product = self.products.get(int(line.get("product_id", -1)))
            if product is None:
                raise HttpError(422, f"no product {line.get('product_id')}")
            quantity = int(line.get("quantity", 1))
            items.append(
                {
                    "product_id": product.id,
                    "title": product.title,
                    "quantity": quantity,
                    "unit_price": product.price,
                }
            )
        if not items or not data.get("card_number"):
            raise HttpError(422, "an order needs items and a card_number")
        total = round(sum(i["unit_price"] * i["quantity"] for i in items), 2)
        order = Order(
            id=self._uuid(),
            user_id=user.id,
            items=items,
            total=total,
            shipping_address=data.get("shipping_address"),
        )
        charge = self._pay(
            req,
            "/v1/charges",
            {
                "amount": total,
                "currency": "USD",
                "card_number": data["card_number"],
                "order_id": order.id,
            },
        )
        order.charge_id, order.payment_status = charge.get("id"), str(charge.get("status"))
        with self._lock:
            self.orders[order.id] = order
        return self._ok(self._order_view(order), status=201)

    @_route("GET", r"/api/orders/(?P<id>[0-9a-f-]+)")
    def get_order(self, req: Request, m: re.Match[str]) -> Response:
        view = self._order_view(self._own_order(req, m["id"]))
        if self.version == "v2":
            view["total"] = f"{view['total']:.2f}"
        return self._ok(view, read=True)

    @_route("POST", r"/api/orders/(?P<id>[0-9a-f-]+)/cancel")
    def cancel_order(self, req: Request, m: re.Match[str]) -> Response:
        order = self._own_order(req, m["id"])
        if self.version == "v2":
            raise HttpError(500, "internal error while cancelling the order")
        refund = self._pay(req, f"/v1/charges/{order.charge_id}/refund", None)
        order.status, order.payment_status = "cancelled", str(refund.get("status"))
        return self._ok(self._order_view(order))

    @_route("GET", r"/api/users/(?P<id>[0-9a-f-]+)")
    def get_user(self, req: Request, m: re.Match[str]) -> Response:
        view = self._user_view(self._own_user(req, m["id"]))
        if self.version == "v2":
            view["phone_number"] = view.pop("phone")
            view["loyalty_tier"] = "bronze"
        return self._ok(view, read=True)

    @_route("PATCH", r"/api/users/(?P<id>[0-9a-f-]+)")
    def update_user(self, req: Request, m: re.Match[str]) -> Response:
        user = self._own_user(req, m["id"])
        data = self._json(req)
        with self._lock:
            if "phone" in data:
                user.phone = data["phone"]
            if "address" in data:
                user.address = data["address"]
        return self._ok(self._user_view(user))
