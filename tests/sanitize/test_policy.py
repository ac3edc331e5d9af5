"""Policies: the built-in one, `policy init/check`, and one clear line for every mistake."""

from __future__ import annotations

import pytest

from shadowtape.errors import InputError
from shadowtape.sanitize.policy import (
    ACTIONS,
    PolicyRules,
    default_policy,
    load_policy,
    parse_json_path,
    parse_policy,
)


def test_policy_init_writes_a_policy_that_checks(tmp_path, cli):
    target = tmp_path / "policy.yaml"
    result = cli("policy", "init", str(target))
    assert result.exit_code == 0, result.output
    assert load_policy(target).fingerprint == default_policy().fingerprint
    result = cli("policy", "check", str(target))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"ok: {target}:")
    assert default_policy().fingerprint in result.stdout
    again = cli("policy", "init", str(target))
    assert again.exit_code == 2 and "--force" in again.stderr
    assert cli("policy", "init", str(target), "--force").exit_code == 0
    assert "version: 1" in cli("policy", "init", "-").stdout


BAD_POLICIES = [
    ("bad.yaml", "version: 1\nheaderz:\n  a: keep\n", 2, "unknown key 'headerz'", "allowed:"),
    ("bad.yaml", "headers:\n  a: keep\n  b: scrub\n", 3, "unknown action 'scrub'", "pseudonymize"),
    ("bad.yaml", "json:\n  $.user.email: keep\n  $.items[: drop\n", 3, "bad JSON path", "$..name"),
    ("bad.yaml", "json:\n  user.email: keep\n", 2, "starts with $", "allowed forms"),
    (
        "bad.yaml",
        "paths:\n  - template: /users/{id}\n    params:\n      uid: hash\n",
        4,
        "'uid' is not a placeholder",
        "allowed: id",
    ),
    (
        "bad.yaml",
        "paths:\n  - regex: '^/a/(?P<x>[^/]+'\n    params: {x: hash}\n",
        2,
        "bad regex",
        "",
    ),
    ("bad.yaml", "detect:\n  entities: [EMAIL_ADDRESS, EMAIL]\n", 2, "unknown entity", "PHONE"),
    ("bad.yaml", "undecodable_bodies: pass\n", 1, "undecodable_bodies", "drop, redact, keep"),
    ("bad.yaml", "headers: [a, b\n", 2, "not valid YAML", ""),
    ("bad.toml", '[headers]\nauthorization = "secret"\ncookie = "eat"\n', 3, "unknown action", ""),
    ("bad.toml", 'version = 1\n[cookiez]\na = "keep"\n', 2, "unknown key 'cookiez'", ""),
]


@pytest.mark.parametrize(("name", "text", "line", "what", "allowed"), BAD_POLICIES)
def test_bad_policy_is_one_line_with_file_and_line(tmp_path, cli, name, text, line, what, allowed):
    path = tmp_path / name
    path.write_text(text)
    result = cli("policy", "check", str(path))
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"shadowtape: error: {path}:{line}: ")
    assert what in result.stderr and allowed in result.stderr


def test_bad_policy_stops_sanitize_before_any_output(raw_corpus, tmp_path, cli, test_key):
    bad = tmp_path / "p.yaml"
    bad.write_text("json:\n  $..email: scramble\n")
    result = cli("sanitize", str(raw_corpus.path), str(tmp_path / "out"), "--policy", str(bad))
    assert result.exit_code == 2 and "unknown action 'scramble'" in result.stderr
    assert not (tmp_path / "out").exists()
    missing = cli("policy", "check", str(tmp_path / "absent.yaml"))
    assert missing.exit_code == 2 and "cannot read policy file" in missing.stderr


def test_toml_policy_equals_yaml_policy():
    yaml_text = "headers:\n  authorization: secret\njson:\n  $..email: pseudonymize\n"
    toml_text = '[headers]\nauthorization = "secret"\n[json]\n"$..email" = "pseudonymize"\n'
    a = parse_policy(yaml_text, "a.yaml", "yaml")
    b = parse_policy(toml_text, "b.toml", "toml")
    assert a.fingerprint == b.fingerprint


def test_most_specific_json_rule_wins():
    policy = parse_policy(
        "json:\n  $..email: pseudonymize\n  $.admin.email: keep\n  $.items[*].card: hash\n"
        "  $.items[0].card: redact\n",
        "p.yaml",
    )
    rules = PolicyRules(policy)
    assert rules.json_rule(("admin", "email")).action == "keep"
    assert rules.json_rule(("user", "profile", "email")).action == "pseudonymize"
    assert rules.json_rule(("items", 0, "card")).action == "redact"
    assert rules.json_rule(("items", 5, "card")).action == "hash"
    assert rules.json_rule(("items", 5, "name")) is None


def test_names_match_case_insensitively_with_wildcards():
    policy = parse_policy(
        "default: keep\nheaders:\n  X-Secret-*: secret\n  '*': detect\nform:\n  csrf*: drop\n",
        "p.yaml",
    )
    rules = PolicyRules(policy)
    assert rules.name_rule("headers", "x-secret-thing").action == "secret"
    assert rules.name_rule("headers", "Accept").action == "detect"
    assert rules.name_rule("form", "CSRFToken").action == "drop"
    assert rules.name_rule("query", "anything").action == "keep"  # the policy default


def test_path_templates_and_regexes():
    policy = parse_policy(
        "paths:\n"
        "  - template: /users/{user_id}/orders/{order_id}\n"
        "    params: {user_id: pseudonymize}\n"
        "  - regex: ^/files/(?P<name>[^/]+)\n"
        "    method: get\n"
        "    params: {name: hash}\n",
        "p.yaml",
    )
    rules = PolicyRules(policy)
    spans = rules.path_params("GET", "/users/123/orders/9")
    assert [(s, e, r.action) for s, e, r in spans] == [(7, 10, "pseudonymize")]
    assert rules.path_params("GET", "/files/report.pdf")[0][2].action == "hash"
    assert rules.path_params("PUT", "/files/report.pdf") == []


def test_json_path_forms():
    assert parse_json_path("$['a b'].c[*]").steps == (("key", "a b"), ("key", "c"), ("any",))
    assert parse_json_path("$..*").steps == (("desc_any",),)
    for bad in ("$", "$.", "$[x]", "$.a..", "a.b"):
        with pytest.raises(ValueError):
            parse_json_path(bad)


def test_default_policy_is_complete():
    policy = default_policy()
    assert policy.default.action == "detect"
    assert policy.undecodable_bodies == "drop"
    rules = PolicyRules(policy)
    for name in ("Authorization", "Cookie", "Set-Cookie", "X-Api-Key"):
        assert rules.name_rule("headers", name).action == "secret"
    for key in ("token", "access_token", "refresh_token", "password", "api_key", "csrf"):
        assert rules.json_rule(("data", key)).action == "secret", key
    assert {r.action for _, r in policy.headers} <= set(ACTIONS)


def test_unknown_top_level_type_is_refused():
    with pytest.raises(InputError, match="a policy is a mapping"):
        parse_policy("- a\n- b\n", "p.yaml")


def test_the_default_policy_detects_all_that_verify_checks() -> None:
    """Sanitize draws its pseudonyms clean of every recognizer verify runs, so verify finds
    nothing on sanitize's output; the default policy must list all of them."""
    from shadowtape.sanitize.detectors import strict_entities

    assert set(strict_entities()) <= set(default_policy().entities)
    assert {"UK_NHS", "UK_NINO", "ABA_ROUTING_NUMBER", "CRYPTO", "MAC_ADDRESS"} <= set(
        strict_entities()
    )


def test_key_words_are_validated_with_file_and_line(tmp_path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("key_words:\n  names:\n    action: detect\n    words: [holder]\n")
    with pytest.raises(InputError, match=r"p.yaml:3: a key_words action cannot be detect"):
        load_policy(bad)
    bad.write_text("key_words:\n  names:\n    action: redact\n    wordz: [holder]\n")
    with pytest.raises(InputError, match=r"p.yaml:4: unknown key 'wordz'"):
        load_policy(bad)
    bad.write_text("propagation:\n  max_literals: 0\n")
    with pytest.raises(InputError, match=r"max_literals must be an integer >= 1"):
        load_policy(bad)


def test_key_words_of_a_policy_extend_what_keys_mean() -> None:
    policy = parse_policy(
        "key_words:\n  pet:\n    action: redact\n    words: [pet, [animal, name]]\n", "p.yaml"
    )
    rules = PolicyRules(policy)
    assert rules.name_rule("query", "petName", "Rex").action == "redact"
    assert rules.name_rule("query", "animal_name", "Rex").action == "redact"
    assert rules.name_rule("query", "animal", "Rex").action == "detect"
    # Leaving key_words out keeps the built-in vocabularies; `key_words: {}` switches off.
    assert (
        PolicyRules(parse_policy("version: 1\n", "p"))
        .name_rule("query", "cardholder", "Jane Roe")
        .rule_id
        == "key_words:person_name"
    )
    off = PolicyRules(parse_policy("key_words: {}\n", "p"))
    assert off.name_rule("query", "cardholder", "Jane Roe").action == "detect"
