"""Format-preserving, keyed, location-independent pseudonyms."""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
from collections import Counter

import pytest

from shadowtape.keyed import Key, Keyed, is_token, looks_like_jwt
from shadowtape.sanitize.pipeline import SanitizeConfig, scrubber_for
from shadowtape.sanitize.policy import default_policy, parse_policy
from shadowtape.sanitize.pseudonyms import Pseudonymizer, luhn_valid

KEY = Key(b"shadowtape-test-key-0123456789abcdef", "test")
OTHER = Key(b"a-completely-different-key-0987654321", "other")


@pytest.fixture(scope="module")
def scrubber():
    return scrubber_for(SanitizeConfig(default_policy(), KEY))


def test_formats(scrubber):
    p = scrubber.pseudonymize
    email = p("Jane.Doe@example.com")
    assert re.fullmatch(r"[a-z2-7]{10}@[a-z2-7]{8}\.example\.invalid", email)
    card = p("4111 1111 1111 1111")
    assert re.fullmatch(r"\d{4} \d{4} \d{4} \d{4}", card) and luhn_valid(card.replace(" ", ""))
    assert p("4111111111111111") == card.replace(" ", "")
    u = uuid.UUID(p("0b6f5f8e-3c1d-4d8e-9f00-1234567890ab"))
    assert u.version == 8 and u.variant == uuid.RFC_4122
    assert re.fullmatch(r"[1-9]\d{7}", p("70012345"))
    assert p("-42").startswith("-") and len(p("-42")) == 3
    phone = p("+1 (415) 555-2671")
    assert re.fullmatch(r"\+1 \(\d{3}\) \d{3}-\d{4}", phone) and phone != "+1 (415) 555-2671"
    assert re.fullmatch(r"666-\d{2}-\d{4}", p("078-05-1120"))
    iban = p("DE89370400440532013000")
    assert iban.startswith("DE00") and len(iban) == 22
    assert ipaddress.ip_address(p("203.0.113.9")) in ipaddress.ip_network("240.0.0.0/4")
    assert ipaddress.ip_address(p("2a00:1450::1")) in ipaddress.ip_network("2001:db8::/32")
    name = p("Jane O'Neil")
    assert re.fullmatch(r"[A-Z][a-z]{3} [A-Z]'[A-Z][a-z]{3}", name)
    # Word by word, so a part of a name gets the part of the full name's pseudonym.
    assert p("Jane") == name.split()[0] and p("JANE O'NEIL") == name.upper()


def test_jwts_stay_well_formed_with_scrubbed_claims(scrubber):
    raw = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJqYW5lQGV4YW1wbGUuY29tIiwiZXhwIjoxOTAwMDAwMDAwfQ.c2ln"
    out = scrubber.pseudonymize(raw)
    assert looks_like_jwt(out) and is_token(out)
    assert out == Keyed(KEY).secret(raw) == scrubber.secret(raw)
    assert "jane" not in out
    assert scrubber.secret(f"Bearer {raw}") == f"Bearer {out}"
    assert scrubber.pseudonymize(out) == out  # idempotent: a second pass keeps our tokens


def test_deterministic_and_keyed():
    a1 = Pseudonymizer(Keyed(KEY))
    a2 = Pseudonymizer(Keyed(Key(KEY.secret, "again")))
    b = Pseudonymizer(Keyed(OTHER))
    for value in ("jane@example.com", "70012345", "4111111111111111", "Jane Doe", "10.0.0.1"):
        assert a1.auto(value) == a2.auto(value)
        assert a1.auto(value) != b.auto(value)


def test_detected_and_ruled_values_get_the_same_pseudonym(scrubber):
    """A value gets one pseudonym whether a rule names it or a detector finds it."""
    counts: Counter[str] = Counter()
    for value in ("jane@example.com", "4111111111111111", "+1 415-555-2671", "10.1.2.3"):
        assert scrubber.detect(value, "x", counts) == scrubber.pseudonymize(value), value
    assert scrubber.detect("mail jane@example.com now", "x", counts) == (
        f"mail {scrubber.pseudonymize('jane@example.com')} now"
    )


def test_location_independence_across_path_query_header_and_body():
    policy = parse_policy(
        "headers:\n  x-user-id: pseudonymize\n  '*': keep\n"
        "query:\n  user: pseudonymize\n"
        "json:\n  $..user_id: pseudonymize\n"
        "paths:\n  - template: /users/{user_id}/orders\n    params: {user_id: pseudonymize}\n",
        "p.yaml",
    )
    scrubber = scrubber_for(SanitizeConfig(policy, KEY))
    body = json.dumps({"order": {"user_id": 70012345, "ref": "70012345"}}).encode()
    row = {
        "method": "GET",
        "path": "/users/70012345/orders",
        "query": [{"name": "user", "value": "70012345"}],
        "request_headers": [
            {"name": "X-User-Id", "value": "70012345"},
            {"name": "Content-Type", "value": "application/json"},
            {"name": "Content-Length", "value": str(len(body))},
        ],
        "request_body": body,
        "response_headers": [],
        "response_body": None,
        "error": None,
    }
    out = scrubber.exchange(row, Counter())
    pseudonym = scrubber.pseudonymize("70012345")
    assert pseudonym != "70012345" and len(pseudonym) == 8
    assert out["path"] == f"/users/{pseudonym}/orders"
    assert out["query"] == [{"name": "user", "value": pseudonym}]
    assert out["request_headers"][0]["value"] == pseudonym
    doc = json.loads(out["request_body"])
    assert doc["order"]["user_id"] == int(pseudonym)  # an integer stays an integer
    assert doc["order"]["ref"] == "70012345"  # no rule names it, no detector flags it
    assert out["request_headers"][2]["value"] == str(len(out["request_body"]))


def test_every_action(scrubber):
    policy = parse_policy(
        "default: keep\nredact_marker: '<gone>'\n"
        "json:\n  $.a: keep\n  $.b: drop\n  $.c: redact\n  $.d: pseudonymize\n"
        "  $.e: hash\n  $.f: secret\n  $.g: detect\n  $.h: drop\n",
        "p.yaml",
    )
    s = scrubber_for(SanitizeConfig(policy, KEY))
    doc = {
        "a": "jane@example.com",
        "b": "x",
        "c": {"deep": ["y", 1]},
        "d": "jane@example.com",
        "e": "jane@example.com",
        "f": "hunter2",
        "g": "write jane@example.com",
        "h": [1, 2],
    }
    counts: Counter[str] = Counter()
    out = json.loads(s.json_text(json.dumps(doc), "request_body", counts))
    assert out["a"] == "jane@example.com"
    assert "b" not in out and "h" not in out
    assert out["c"] == {"deep": ["<gone>", "<gone>"]}
    assert out["d"] == s.pseudonymize("jane@example.com")
    assert out["e"] == Keyed(KEY).hash_hex("jane@example.com")
    assert out["f"] == Keyed(KEY).secret("hunter2")
    assert out["g"] == f"write {s.pseudonymize('jane@example.com')}"
    assert counts["rules|json:$.f"] == 1 and counts["detected|EMAIL_ADDRESS|request_body"] == 1
