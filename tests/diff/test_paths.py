import pytest

from shadowtape.diff import paths


def test_normalise_replaces_indices_and_keys_with_wildcards():
    assert paths.normalise("$.items[3].price") == "$.items[*].price"
    assert paths.normalise("$.items[id=7].tags[0]") == "$.items[*].tags[*]"
    assert paths.normalise("$") == "$"


def test_keys_that_are_not_identifiers_are_quoted_and_survive_normalising():
    step = paths.key_step("a.b[0]")
    assert step == '["a.b[0]"]'
    assert paths.normalise("$" + step + "[2]") == '$["a.b[0]"][*]'
    assert paths.key_step("content-type") == ".content-type"
    assert paths.key_step("1abc") == '["1abc"]'


def test_a_malformed_path_is_an_error_not_a_silent_non_match():
    with pytest.raises(ValueError, match="must start with"):
        paths.split("items.price")
    with pytest.raises(ValueError, match="cannot read"):
        paths.split("$.items[3")


def test_rules_cover_the_path_its_subtree_and_wildcards():
    assert paths.matches("$.meta", "$.meta.generated_at")
    assert paths.matches("$.meta.generated_at", "$.meta.generated_at")
    assert paths.matches("$.items[0].price", "$.items[*].price")
    assert paths.matches("$.*.id", "$.user.id")
    assert not paths.matches("$.meta", "$.metadata")
    assert not paths.matches("$.meta.x", "$.meta")
    assert not paths.matches("$.*.id", "$.items[*].id")
