"""Bodies: encodings undone and redone, framing fixed, undecodable content fail-closed."""

from __future__ import annotations

import gzip
import json
import zlib
from collections import Counter

import brotli
import pytest

from shadowtape.keyed import Key
from shadowtape.sanitize import bodies
from shadowtape.sanitize.pipeline import SanitizeConfig, scrubber_for
from shadowtape.sanitize.policy import parse_policy

KEY = Key(b"shadowtape-test-key-0123456789abcdef", "test")
DOC = json.dumps({"email": "jane@example.com", "n": 1}).encode()


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize(
    ("coding", "data"),
    [
        ("gzip", gzip.compress(DOC)),
        ("deflate", zlib.compress(DOC)),
        ("deflate", _raw_deflate(DOC)),  # raw deflate, common in the wild
        ("br", brotli.compress(DOC)),
    ],
)
def test_decode_encodings(coding, data):
    assert bodies.decode_content(data, [coding]) == DOC
    assert bodies.decode_content(bodies.encode_content(DOC, [coding]), [coding]) == DOC


def test_bad_or_unknown_encodings_are_undecodable():
    with pytest.raises(bodies.Undecodable):
        bodies.decode_content(b"not gzip", ["gzip"])
    with pytest.raises(bodies.Undecodable):
        bodies.decode_content(DOC, ["zstd"])
    assert bodies.split_encodings("gzip, identity, br") == ["gzip", "br"]


def _scrubber(extra: str = ""):
    return scrubber_for(SanitizeConfig(parse_policy(extra or "version: 1\n", "p.yaml"), KEY))


def _headers(**values: str) -> list[dict[str, str]]:
    return [{"name": k.replace("_", "-"), "value": v} for k, v in values.items()]


def _row(body: bytes, **headers: str) -> dict:
    return {
        "method": "POST",
        "path": "/x",
        "query": None,
        "request_headers": _headers(**headers, Content_Length=str(len(body))),
        "request_body": body,
        "response_headers": None,
        "response_body": None,
        "error": None,
    }


def test_gzip_json_is_rewritten_and_reencoded():
    s = _scrubber()
    counts: Counter[str] = Counter()
    body = gzip.compress(DOC)
    out = s.exchange(_row(body, Content_Type="application/json", Content_Encoding="gzip"), counts)
    new = out["request_body"]
    doc = json.loads(gzip.decompress(new))
    assert doc["email"].endswith(".invalid") and doc["n"] == 1
    heads = {h["name"]: h["value"] for h in out["request_headers"]}
    assert heads["Content-Encoding"] == "gzip"
    assert heads["Content-Length"] == str(len(new))
    assert counts["bodies|rewritten|request_body"] == 1


def test_unchanged_body_keeps_its_bytes():
    s = _scrubber()
    body = b'{ "status" : "ok" }'
    out = s.exchange(_row(body, Content_Type="application/json"), Counter())
    assert out["request_body"] is body


@pytest.mark.parametrize(
    ("body", "content_type", "encoding"),
    [
        (b"\x89PNG\r\n\x1a\njane@example.com", "image/png", None),
        (b'{"email": "jane@example.com", ', "application/json", None),
        (b"\x1f\x8b broken gzip", "application/json", "gzip"),
        ("jané@example.com".encode("utf-16"), "text/plain", None),
    ],
)
def test_undecodable_bodies_fail_closed(body, content_type, encoding):
    headers = {"Content_Type": content_type}
    if encoding:
        headers["Content_Encoding"] = encoding
    counts: Counter[str] = Counter()
    out = _scrubber().exchange(_row(body, **headers), counts)
    assert out["request_body"] is None
    heads = {h["name"]: h["value"] for h in out["request_headers"]}
    assert heads["Content-Length"] == "0" and "Content-Encoding" not in heads
    assert counts["bodies|undecodable|request_body"] == 1
    assert counts["bodies|dropped|request_body"] == 1


def test_undecodable_policy_redact_and_keep():
    png = b"\x89PNG\r\n\x1a\n\x00\x01"
    counts: Counter[str] = Counter()
    redacting = _scrubber("undecodable_bodies: redact\nredact_marker: GONE\n")
    out = redacting.exchange(_row(png, Content_Type="image/png"), counts)
    assert out["request_body"] == b"GONE"
    assert {h["name"]: h["value"] for h in out["request_headers"]}["Content-Length"] == "4"
    keeping = _scrubber("undecodable_bodies: keep\n")
    out = keeping.exchange(_row(png, Content_Type="image/png"), counts)
    assert out["request_body"] == png
    assert counts["bodies|redacted|request_body"] == 1
    assert counts["bodies|kept_unscanned|request_body"] == 1


def test_form_and_text_bodies():
    s = _scrubber("form:\n  password: secret\n")
    form = b"user=jane%40example.com&password=hunter2&n=1"
    out = s.exchange(_row(form, Content_Type="application/x-www-form-urlencoded"), Counter())
    fields = dict(bodies.parse_form(out["request_body"].decode()))
    assert fields["user"].endswith(".invalid") and fields["password"].startswith("stk_")
    assert fields["n"] == "1"
    text = b"Dear customer, call +1 415-555-2671."
    out = s.exchange(_row(text, Content_Type="text/plain; charset=utf-8"), Counter())
    assert b"415-555-2671" not in out["request_body"] and out["request_body"].startswith(b"Dear")
