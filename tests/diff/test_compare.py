import json

from shadowtape.diff.compare import (
    CompareOptions,
    Response,
    compare_bodies,
    compare_headers,
    compare_json,
    compare_responses,
    compare_text,
)

OPTS = CompareOptions()
JSON_T = "application/json"


def rows(diffs):
    return {(d.part, d.location, d.raw_location, d.kind, d.recorded, d.staging) for d in diffs}


def body(a, b, opts=OPTS):
    return compare_bodies(json.dumps(a).encode(), JSON_T, json.dumps(b).encode(), JSON_T, opts)


def test_equal_json_with_other_spacing_and_key_order_has_no_differences():
    a = b'{"a": 1, "b": [1, 2, {"c": null}]}'
    b = b'{"b":[1,2,{"c":null}],"a":1}'
    assert compare_bodies(a, JSON_T, b, JSON_T, OPTS) == []


def test_every_json_difference_kind_at_its_path():
    a = {"name": "x", "n": 1, "flag": True, "obj": {"k": 1}, "arr": [1, 2, 3], "gone": 0}
    b = {
        "name": "y",
        "n": "1",
        "flag": 1,
        "obj": {"k": 1, "new": [1]},
        "arr": [1, 2],
        "added": None,
    }
    found = rows(body(a, b))
    assert found == {
        ("body", "$.name", "$.name", "changed", '"x"', '"y"'),
        ("body", "$.n", "$.n", "type_changed", "1", '"1"'),
        # Python says True == 1; JSON says boolean vs number.
        ("body", "$.flag", "$.flag", "type_changed", "true", "1"),
        ("body", "$.obj.new", "$.obj.new", "added", None, "[1]"),
        ("body", "$.arr", "$.arr", "length", "3", "2"),
        ("body", "$.arr[*]", "$.arr[2]", "removed", "3", None),
        ("body", "$.gone", "$.gone", "removed", "0", None),
        ("body", "$.added", "$.added", "added", None, "null"),
    }


def test_numbers_compare_as_numbers():
    assert body({"a": 1}, {"a": 1.0}) == []


def test_array_elements_are_normalised_to_one_path():
    a = {"items": [{"price": 1}, {"price": 2}, {"price": 3}]}
    b = {"items": [{"price": 1}, {"price": 5}, {"price": 6}]}
    found = body(a, b)
    assert {d.location for d in found} == {"$.items[*].price"}
    assert [d.raw_location for d in found] == ["$.items[1].price", "$.items[2].price"]


def test_a_reordered_array_is_one_row():
    found = body({"tags": ["a", "b", "c"]}, {"tags": ["c", "a", "b"]})
    assert [(d.location, d.kind) for d in found] == [("$.tags", "reordered")]


def test_arrays_by_key_field_ignore_order_and_name_elements_by_key():
    a = {"items": [{"id": 1, "p": 1}, {"id": 2, "p": 2}, {"id": 3, "p": 3}]}
    b = {"items": [{"id": 3, "p": 3}, {"id": 2, "p": 9}, {"id": 4, "p": 4}]}
    found = rows(body(a, b, CompareOptions(key_fields=("id",))))
    assert found == {
        ("body", "$.items[*].p", "$.items[id=2].p", "changed", "2", "9"),
        ("body", "$.items[*]", "$.items[id=1]", "removed", '{"id":1,"p":1}', None),
        ("body", "$.items[*]", "$.items[id=4]", "added", None, '{"id":4,"p":4}'),
    }


def test_key_field_falls_back_to_position_when_keys_repeat():
    a = {"items": [{"id": 1, "p": 1}, {"id": 1, "p": 2}]}
    b = {"items": [{"id": 1, "p": 1}, {"id": 1, "p": 3}]}
    found = body(a, b, CompareOptions(key_fields=("id",)))
    assert [d.raw_location for d in found] == ["$.items[1].p"]


def test_long_values_are_cut():
    found = body({"a": "x" * 500}, {"a": "y" * 500}, CompareOptions(value_limit=20))
    assert len(found[0].recorded) == 20 and found[0].recorded.endswith("…")


def test_text_is_compared_line_by_line():
    found = compare_text("a\nb\nc\nd\n", "a\nB\nc\nd\ne\n", OPTS)
    assert [(d.location, d.kind, d.recorded, d.staging) for d in found] == [
        ("line 2", "changed", "b", "B"),
        ("line 5", "added", None, "e"),
    ]
    assert compare_text("a\r\nb", "a\nb", OPTS)[0].location == "line endings"


def test_binary_is_compared_by_digest_and_size():
    (d,) = compare_bodies(b"\x00\x01", "image/png", b"\x00\x02\x03", "image/png", OPTS)
    assert d.location == "bytes" and d.kind == "changed"
    assert d.recorded.endswith("(2 bytes)") and d.staging.endswith("(3 bytes)")
    assert d.recorded.startswith("sha256:")


def test_json_against_html_is_a_type_change_of_the_body():
    (d,) = compare_bodies(b'{"a":1}', JSON_T, b"<html>oops</html>", "text/html", OPTS)
    assert (d.location, d.kind, d.recorded) == ("body", "type_changed", "json")
    assert d.staging.startswith("text")


def test_empty_against_present_body():
    (d,) = compare_bodies(b"", JSON_T, b'{"a":1}', JSON_T, OPTS)
    assert (d.location, d.kind, d.recorded) == ("body", "added", None)


def test_headers_compare_only_the_chosen_set_and_normalise_what_should_be():
    rec = [
        ("Content-Type", "application/json; charset=UTF-8"),
        ("Date", "x"),
        ("Location", "https://prod.example/a?b=1"),
        ("Vary", "Accept"),
    ]
    stg = [
        ("content-type", "application/json;charset=utf-8"),
        ("Date", "y"),
        ("location", "http://staging:8000/a?b=1"),
        ("Cache-Control", "no-store"),
    ]
    found = rows(compare_headers(rec, stg, OPTS))
    assert found == {
        ("header", "cache-control", "cache-control", "added", None, "no-store"),
        ("header", "vary", "vary", "removed", "Accept", None),
    }


def test_a_status_change_is_reported_alone():
    rec = Response(200, [("content-type", JSON_T)], b'{"a":1}')
    stg = Response(500, [("content-type", "text/plain")], b"boom")
    result = compare_responses(rec, stg, OPTS)
    assert rows(result.diffs) == {("status", "status", "status", "changed", "200", "500")}
    assert result.body_skipped == "status differs"


def test_truncated_bodies_are_not_compared_and_say_why():
    rec = Response(200, [], b'{"a":1', truncated=True)
    stg = Response(200, [], b'{"a":2}')
    result = compare_responses(rec, stg, OPTS)
    assert result.diffs == [] and result.body_skipped == "body truncated"


def test_a_304_has_no_body_to_compare():
    # A browser HAR's 304 holds the cached copy; staging's 304 has no body: not drift.
    rec = Response(304, [("content-type", "text/html")], b"<html>cached copy</html>")
    stg = Response(304, [("content-type", "text/html")], b"")
    result = compare_responses(rec, stg, OPTS)
    assert result.diffs == [] and result.body_skipped == "status has no body"
    # Headers of a 304 are still compared.
    stg = Response(304, [("content-type", "text/plain")], b"")
    assert [d.location for d in compare_responses(rec, stg, OPTS).diffs] == ["content-type"]


def test_differences_past_the_cap_are_counted_in_one_row():
    a = {f"k{i}": i for i in range(10)}
    b = {f"k{i}": i + 1 for i in range(10)}
    rec = Response(200, [], json.dumps(a).encode())
    stg = Response(200, [], json.dumps(b).encode())
    result = compare_responses(rec, stg, CompareOptions(max_diffs=4))
    assert len(result.diffs) == 5
    assert result.diffs[-1].kind == "more"
    assert result.diffs[-1].recorded == "6 more differences not listed"


def test_compare_json_accepts_parsed_values():
    assert compare_json([1, 2], [1, 2], OPTS) == []
