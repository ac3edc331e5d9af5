import json

import pytest

from shadowtape.diff.routes import RouteTable, load_routes
from shadowtape.errors import InputError
from shadowtape.http.routes import infer_template


def test_ids_in_paths_become_placeholders():
    assert (
        infer_template("/users/1234/orders/9f1c2d3e-1111-4222-8333-444455556666")
        == "/users/{id}/orders/{uuid}"
    )
    assert infer_template("/blobs/9f1c2d3e4b5a6978") == "/blobs/{hex}"
    assert infer_template("/days/2026-11-26/x") == "/days/{date}/x"
    assert infer_template("/by-email/a.b@example.org") == "/by-email/{email}"
    assert infer_template("/t/AbC123def456GHI789jkl0") == "/t/{token}"
    assert infer_template("/notifications/settings") == "/notifications/settings"
    assert infer_template("/") == "/"


def test_route_labels_carry_the_method_and_ignore_the_query():
    table = RouteTable()
    assert table.route("get", "/users/7?x=1") == "GET /users/{id}"
    assert table.route("POST", "/users", None) == "POST /users"
    # A route the recording already carries is kept.
    assert table.route("GET", "/u/alice", "GET /u/{name}") == "GET /u/{name}"


def test_explicit_templates_win_most_specific_first(tmp_path):
    f = tmp_path / "routes.txt"
    f.write_text("# ours\nGET /users/{name}\n/users/me   # any method\nGET /shop/{slug}/items\n")
    table = load_routes(f)
    assert table.route("GET", "/users/alice") == "GET /users/{name}"
    assert table.route("DELETE", "/users/me") == "DELETE /users/me"
    assert table.route("GET", "/shop/big-sale/items/") == "GET /shop/{slug}/items"
    assert table.route("GET", "/other/12") == "GET /other/{id}"


def test_openapi_paths_with_a_server_base_path(tmp_path):
    spec = {
        "openapi": "3.0.0",
        "servers": [{"url": "https://api.example.com/v2"}],
        "paths": {"/pets/{petId}": {"get": {}, "delete": {}, "parameters": []}},
    }
    f = tmp_path / "api.json"
    f.write_text(json.dumps(spec))
    table = load_routes(f)
    assert table.route("GET", "/v2/pets/rex") == "GET /v2/pets/{petId}"
    assert table.route("PATCH", "/v2/pets/rex").startswith("PATCH ")


def test_yaml_list_of_templates(tmp_path):
    f = tmp_path / "routes.yaml"
    f.write_text("routes:\n  - 'GET /a/{x}'\n")
    assert load_routes(f).route("GET", "/a/b") == "GET /a/{x}"


@pytest.mark.parametrize(
    "name,text,message",
    [
        ("r.yaml", "routes: [1, 'GET users']", "must start with '/'"),
        ("r.yaml", "a: [unclosed", "not valid YAML"),
        ("r.json", '{"openapi": "3.0.0"}', "without a 'paths'"),
        ("r.yaml", "just: a mapping", "expected an OpenAPI document"),
    ],
)
def test_bad_route_files_name_the_file_and_the_problem(tmp_path, name, text, message):
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(InputError, match=message) as info:
        load_routes(f)
    assert str(f) in str(info.value)


def test_missing_route_file(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        load_routes(tmp_path / "nope.yaml")
