"""The shop API's logic, request in and response out: sessions, auth, planted drift, noise."""

import json
import uuid

import pytest

from shadowtape.demo.data import person
from shadowtape.demo.shop import _ROUTES, PLANTED_DRIFT, SEARCH_DELAY_S, Request, Response, ShopAPI


def call(api: ShopAPI, method: str, path: str, body=None, token=None, **query) -> Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    raw = json.dumps(body).encode() if body is not None else b""
    return api.handle(Request(method, path, {k: str(v) for k, v in query.items()}, headers, raw))


def signed_in(api: ShopAPI, index: int = 0) -> tuple[str, str]:
    shopper = person(1, index)
    created = call(api, "POST", "/api/users", shopper.registration())
    assert created.status == 201
    login = call(api, "POST", "/api/login", {"email": shopper.email, "password": shopper.password})
    assert login.status == 200
    return created.body["id"], login.body["token"]


def place_order(api: ShopAPI, token: str) -> dict:
    order = {"items": [{"product_id": 1001, "quantity": 2}], "card_number": "4111111111111111"}
    response = call(api, "POST", "/api/orders", order, token)
    assert response.status == 201
    return response.body


@pytest.fixture
def api() -> ShopAPI:
    return ShopAPI("v1", clock=lambda: 1_800_000_000.0, sleep=lambda _s: None)


def test_every_login_mints_a_fresh_token_and_both_work(api: ShopAPI) -> None:
    user_id, first = signed_in(api)
    shopper = person(1, 0)
    again = call(api, "POST", "/api/login", {"email": shopper.email, "password": shopper.password})
    assert again.body["token"] != first
    for token in (first, again.body["token"]):
        assert call(api, "GET", f"/api/users/{user_id}", token=token).status == 200


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_service_accepts_only_tokens_it_issued(version: str) -> None:
    api, other = ShopAPI(version), ShopAPI(version, seed=99)
    user_id, token = signed_in(api)
    assert call(api, "GET", f"/api/users/{user_id}", token=token).status == 200
    _, foreign = signed_in(other)
    assert call(api, "GET", f"/api/users/{user_id}", token=foreign).status == 401
    assert call(api, "GET", f"/api/users/{user_id}").status == 401


def test_logout_revokes_the_token(api: ShopAPI) -> None:
    user_id, token = signed_in(api)
    assert call(api, "POST", "/api/logout", token=token).status == 204
    assert call(api, "GET", f"/api/users/{user_id}", token=token).status == 401


def test_wrong_password_and_other_peoples_data_are_refused(api: ShopAPI) -> None:
    mine, token = signed_in(api, 0)
    theirs, their_token = signed_in(api, 1)
    bad = call(api, "POST", "/api/login", {"email": person(1, 0).email, "password": "nope"})
    assert bad.status == 401
    assert call(api, "GET", f"/api/users/{theirs}", token=token).status == 403
    order = place_order(api, their_token)
    assert call(api, "GET", f"/api/orders/{order['id']}", token=token).status == 404
    assert call(api, "GET", f"/api/users/{mine}", token=token).status == 200


def test_personal_values_are_echoed_exactly_as_sent(api: ShopAPI) -> None:
    # A sanitized replay sends markers and pseudonyms; staging must echo them like production
    # echoed the originals, so recorded and staging responses agree.
    registration = {
        "name": "Pseudo Nym",
        "email": "p@example.invalid",
        "password": "stk_abc",
        "address": "[REDACTED]",
        "date_of_birth": "[REDACTED]",
        "phone": "+1 555-010-0000",
    }
    created = call(api, "POST", "/api/users", registration)
    assert created.status == 201
    for key in ("name", "email", "address", "date_of_birth", "phone"):
        assert created.body[key] == registration[key]
    assert "password" not in json.dumps(created.body)


def test_v2_has_exactly_the_planted_drift() -> None:
    v1, v2 = ShopAPI("v1", sleep=lambda _s: None), ShopAPI("v2", sleep=lambda _s: None)
    seen = {}
    for api in (v1, v2):
        user_id, token = signed_in(api)
        order = place_order(api, token)
        seen[api.version] = {
            "user": call(api, "GET", f"/api/users/{user_id}", token=token),
            "order": call(api, "GET", f"/api/orders/{order['id']}", token=token),
            "cancel": call(api, "POST", f"/api/orders/{order['id']}/cancel", token=token),
            "patch": call(api, "PATCH", f"/api/users/{user_id}", {"phone": "1"}, token=token),
        }
    old, new = seen["v1"], seen["v2"]
    assert set(new["user"].body) - set(old["user"].body) == {"phone_number", "loyalty_tier"}
    assert set(old["user"].body) - set(new["user"].body) == {"phone"}
    assert isinstance(old["order"].body["total"], float)
    assert new["order"].body["total"] == f"{old['order'].body['total']:.2f}"
    assert (old["cancel"].status, new["cancel"].status) == (200, 500)
    # Everything else keeps its shape: the update route is not renamed, only the GET.
    assert set(old["patch"].body) == set(new["patch"].body)


def test_planted_drift_names_routes_the_shop_serves() -> None:
    for drift in PLANTED_DRIFT:
        method, template = drift.route.split(" ")
        path = template.replace("{uuid}", str(uuid.uuid4()))
        assert any(m == method and p.match(path) for m, p, _ in _ROUTES), drift


def test_search_is_slower_on_v2_through_the_injected_sleep() -> None:
    waited: dict[str, list[float]] = {"v1": [], "v2": []}
    for version in ("v1", "v2"):
        api = ShopAPI(version, sleep=waited[version].append)
        response = call(api, "GET", "/api/products/search", q="lamp")
        assert response.status == 200 and response.body["count"] > 0
    assert waited == {"v1": [SEARCH_DELAY_S["v1"]], "v2": [SEARCH_DELAY_S["v2"]]}
    assert SEARCH_DELAY_S["v2"] >= 2 * SEARCH_DELAY_S["v1"]


def test_reads_carry_volatile_fields_that_change_on_every_call(api: ShopAPI) -> None:
    first = call(api, "GET", "/api/products/1001")
    second = call(api, "GET", "/api/products/1001")
    assert first.body["meta"]["request_id"] != second.body["meta"]["request_id"]
    assert first.body["meta"]["nonce"] != second.body["meta"]["nonce"]
    assert first.body["meta"]["generated_at"].startswith("2027-01-15T08:00:00")
    del first.body["meta"], second.body["meta"]
    assert first.body == second.body


def test_products_are_the_same_in_both_versions() -> None:
    v1, v2 = ShopAPI("v1"), ShopAPI("v2")
    for page in (1, 2, 5):
        a, b = (call(api, "GET", "/api/products", page=page).body for api in (v1, v2))
        assert a["items"] == b["items"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/nowhere", None, 404),
        ("DELETE", "/api/products", None, 405),
        ("GET", "/api/products/9999", None, 404),
        ("GET", "/api/products/search", None, 400),
        ("POST", "/api/users", {"email": "x@y.z"}, 422),
        ("POST", "/api/login", None, 400),
    ],
)
def test_bad_requests_get_json_errors(api: ShopAPI, method, path, body, status) -> None:
    if method == "POST" and body is None:
        response = api.handle(Request(method, path, body=b"{not json"))
    else:
        response = call(api, method, path, body)
    assert response.status == status
    assert response.body["error"]


def test_unknown_version_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown version"):
        ShopAPI("v3")
