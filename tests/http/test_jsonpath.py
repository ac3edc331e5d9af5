"""One JSON-path grammar: spelling, parsing, normalising, exact match and covering."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shadowtape.http import jsonpath


def test_normalise_replaces_indices_and_keys_with_wildcards():
    assert jsonpath.normalise("$.items[3].price") == "$.items[*].price"
    assert jsonpath.normalise("$.items[id=7].tags[0]") == "$.items[*].tags[*]"
    assert jsonpath.normalise("$") == "$"


def test_keys_that_are_not_identifiers_are_quoted_and_survive_normalising():
    step = jsonpath.key_step("a.b[0]")
    assert step == '["a.b[0]"]'
    assert jsonpath.normalise("$" + step + "[2]") == '$["a.b[0]"][*]'
    assert jsonpath.key_step("content-type") == ".content-type"
    assert jsonpath.key_step("1abc") == '["1abc"]'
    assert jsonpath.key_step("é") == '["é"]'
    assert jsonpath.keyed_step("id", 42) == "[id=42]"
    assert jsonpath.keyed_step("sku", "a b") == '[sku="a b"]'


def test_a_malformed_path_is_an_error_not_a_silent_non_match():
    with pytest.raises(ValueError, match="must start with"):
        jsonpath.parse("items.price")
    with pytest.raises(ValueError, match="cannot read"):
        jsonpath.parse("$.items[3")
    for bad in ("$.", "$[x]", "$.a..", "$..", "$['a'", '$["a"x]', "$[=1]", "$ .a"):
        with pytest.raises(ValueError, match="cannot read"):
            jsonpath.parse(bad)


def test_every_pattern_form():
    assert jsonpath.parse("$['a b'].c[*]") == (("key", "a b"), ("key", "c"), ("any",))
    assert jsonpath.parse("$..*") == (("desc_any",),)
    assert jsonpath.parse('$..email..["x y"].*[2][id="a]b"].@type.$ref') == (
        ("desc", "email"),
        ("desc", "x y"),
        ("any",),
        ("index", 2),
        ("keyed", "id", '"a]b"'),
        ("key", "@type"),
        ("key", "$ref"),
    )
    assert jsonpath.parse("$") == ()
    assert jsonpath.canonical("$['a']['b-c'][\"d e\"]") == '$.a.b-c["d e"]'


_keys = st.text(max_size=6)
_steps = st.lists(
    st.one_of(
        _keys.map(lambda k: ("key", k)),
        st.integers(0, 99).map(lambda i: ("index", i)),
        st.just(("any",)),
        _keys.map(lambda k: ("desc", k)),
        st.just(("desc_any",)),
    ),
    max_size=6,
)


@given(_steps)
def test_spelling_parses_back_to_the_same_steps(steps):
    assert jsonpath.parse(jsonpath.spell(steps)) == tuple(steps)


def test_exact_matching_as_sanitize_rules_need_it():
    assert jsonpath.matches("$..email", ("user", "profile", "email"))
    assert jsonpath.matches("$..email", ("email",))
    assert not jsonpath.matches("$..email", ("email", "x"))
    assert jsonpath.matches("$.items[*].card", ("items", 5, "card"))
    assert jsonpath.matches("$.items[0].card", ("items", 0, "card"))
    assert not jsonpath.matches("$.items[0].card", ("items", 1, "card"))
    assert jsonpath.matches("$.*", (3,))  # `.*` is any step, as `[*]` is
    assert jsonpath.matches("$[*]", ("k",))
    assert jsonpath.matches("$..*", ("a", 1, "b"))
    assert not jsonpath.matches("$..*", ())
    assert not jsonpath.matches("$.a", ())
    assert not jsonpath.matches("$.a", ("a", "b"))
    assert jsonpath.matches("$.items[id=7].x", "$.items[id=7].x")
    assert not jsonpath.matches("$.items[id=7].x", "$.items[id=8].x")


def test_covering_as_diffs_pinned_rules_need_it():
    assert jsonpath.covers("$.meta", "$.meta.generated_at")
    assert jsonpath.covers("$.meta.generated_at", "$.meta.generated_at")
    assert jsonpath.covers(jsonpath.normalise("$.items[0].price"), "$.items[*].price")
    assert jsonpath.covers("$.*.id", "$.user.id")
    assert jsonpath.covers("$..generated_at", "$.a[*].generated_at.x")
    assert not jsonpath.covers("$.meta", "$.metadata")
    assert not jsonpath.covers("$.meta.x", "$.meta")
    assert not jsonpath.covers("$.*.id", "$.items[*].id")
    assert jsonpath.covers((("key", "a"),), ("a", 0))
