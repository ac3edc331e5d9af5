"""One route-template grammar: placeholders, matching, specificity, inference."""

import re

import pytest

from shadowtape.http import routes


def test_a_placeholder_is_one_segment_or_part_of_one():
    t = routes.parse_route("GET /users/{id}/files/{name}.pdf")
    assert t.method == "GET" and t.placeholders == ("id", "name")
    assert t.matches("get", "/users/7/files/report.pdf")
    assert t.matches("GET", "/users/7/files/report.pdf/")  # one trailing slash
    assert not t.matches("GET", "/users/7/x/files/report.pdf")
    assert not t.matches("GET", "/users//files/report.pdf")  # never an empty segment
    assert not t.matches("POST", "/users/7/files/report.pdf")
    assert t.spans("/users/42/files/r.pdf") == [("id", 7, 9), ("name", 16, 17)]
    assert t.spans("/nope") is None


def test_placeholder_names_are_anything_but_braces_and_slashes():
    t = routes.compile_path("/pets/{pet-id}/{pet.kind}/{id}/{id}")
    assert t.placeholders == ("pet-id", "pet.kind", "id", "id")
    spans = t.spans("/pets/rex/dog/1/2")
    assert [name for name, _, _ in spans] == ["pet-id", "pet.kind", "id", "id"]
    assert [("/pets/rex/dog/1/2")[s:e] for _, s, e in spans] == ["rex", "dog", "1", "2"]
    # Not placeholders: empty braces, braces around a slash.
    literal = routes.compile_path("/a/{}/{x/y}")
    assert literal.placeholders == () and literal.matches(None, "/a/{}/{x/y}")


def test_identifier_placeholders_name_their_own_regex_groups():
    regex, names = routes.template_regex("/users/{user_id}/orders/{order_id}")
    assert regex == r"^/users/(?P<user_id>[^/]+)/orders/(?P<order_id>[^/]+)/?$"
    assert names == ("user_id", "order_id")
    assert routes.group_name("id") == "id"
    assert routes.group_name("pet-id").startswith("_ph")
    assert routes.group_name("id", 1) != routes.group_name("id")
    assert routes.group_name("_ph1") != "_ph1"  # our prefix is never taken as is
    assert re.compile(routes.template_regex("/{a b}/{é}")[0]).match("/x/y")


def test_base_path_and_bad_templates():
    assert routes.parse_route("/pets/{id}", "/v2/").path == "/v2/pets/{id}"
    assert routes.parse_route("/x").method is None
    for bad in ("GET users", "users/{id}", ""):
        with pytest.raises(ValueError, match="must start with '/'"):
            routes.parse_route(bad)


def test_most_specific_first():
    ts = [routes.parse_route(t) for t in ("/users/{id}", "GET /users/{id}", "/users/me")]
    assert [(t.method, t.path) for t in routes.most_specific_first(ts)] == [
        (None, "/users/me"),
        ("GET", "/users/{id}"),
        (None, "/users/{id}"),
    ]
    assert routes.route_label("get", "/a/{id}") == "GET /a/{id}"
    assert routes.route_label(None, "") == "GET /"


def test_inference_names_the_kind_of_id():
    assert (
        routes.infer_template("/users/1234/orders/9f1c2d3e-1111-4222-8333-444455556666")
        == "/users/{id}/orders/{uuid}"
    )
    assert routes.infer_template("/blobs/9f1c2d3e4b5a6978") == "/blobs/{hex}"
    assert routes.infer_template("/days/2026-11-26/x") == "/days/{date}/x"
    assert routes.infer_template("/by-email/a.b@example.org") == "/by-email/{email}"
    assert routes.infer_template("/t/AbC123def456GHI789jkl0") == "/t/{token}"
    assert routes.infer_template("/t/stk_abcdefghijklmnopqrstuvwxyz") == "/t/{token}"
    assert routes.infer_template("/o/ord_8f3k2a91") == "/o/{id}"
    assert routes.infer_template("/notifications/settings/v2/logo.png") == (
        "/notifications/settings/v2/logo.png"
    )
    assert routes.infer_template("/") == "/"
    assert routes.infer_template(None) == "/"
    assert routes.infer_template("/a/-3") == "/a/{id}"


def test_folded_inference_says_id_for_every_kind():
    path = "/u/0b0c9c4e-5f3a-4c11-9a3e-2f7b8a1d2c3e/orders/4000000001/t/stk_abcdefghijklmnop2345"
    assert routes.infer_template(path, fold=True) == "/u/{id}/orders/{id}/t/{id}"
