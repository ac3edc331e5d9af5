"""Replay sends the recorded request target verbatim; a changed parameter alone is re-encoded."""

import pytest

from shadowtape.errors import InputError
from shadowtape.http.target import query_pairs, split_target
from shadowtape.replay.config import RewriteRule
from shadowtape.replay.correlate import load_rules, parts_of
from shadowtape.replay.h11transport import request_head
from shadowtape.replay.locations import replace_in_request
from shadowtape.replay.sender import TargetMap, build_request

RAW = "/s/a%2Fb?gcrumb=rY3NFD4=&q=a,b&notify_self&delimiter=/&x=%2C"


def _row(target: str | None) -> dict:
    path, query = split_target(target or RAW)
    return {
        "method": "GET",
        "host": "shop.example",
        "path": path,
        "query": query_pairs(query),
        "request_target": target,
        "request_headers": [("Host", "shop.example")],
        "request_body": None,
    }


def test_the_recorded_target_goes_out_byte_for_byte():
    targets = TargetMap("http://127.0.0.1:8000/base")
    req = build_request(parts_of(_row(RAW)), targets)
    assert req.url == "http://127.0.0.1:8000/base" + RAW
    # The HTTP/1.1 transport passes such a URL through to the request line unchanged.
    _, wire_target, _ = request_head(req.method, req.url, req.headers, None)
    assert wire_target == ("/base" + RAW).encode()


def test_without_a_recorded_target_the_pairs_are_spelled_as_before():
    req = build_request(parts_of(_row(None)), TargetMap("http://s"))
    assert req.url == (
        "http://s/s/a%2Fb?gcrumb=rY3NFD4%3D&q=a%2Cb&notify_self=&delimiter=%2F&x=%2C"
    )


def test_a_correlated_query_value_is_the_only_parameter_re_encoded():
    parts = parts_of(_row(RAW))
    assert replace_in_request(parts, "query:q", "a,b", "c d")
    req = build_request(parts, TargetMap("http://s"))
    assert req.url == "http://s/s/a%2Fb?gcrumb=rY3NFD4=&q=c+d&notify_self&delimiter=/&x=%2C"


def test_a_correlated_path_segment_and_a_path_rewrite_keep_the_raw_query():
    parts = parts_of(_row(RAW))
    assert replace_in_request(parts, "path[1]", "s", "t")
    targets = TargetMap("http://s", (RewriteRule("path", "/t/", "/v2/t/"),))
    req = build_request(parts, targets)
    assert req.url == "http://s/v2/t/a%2Fb?gcrumb=rY3NFD4=&q=a,b&notify_self&delimiter=/&x=%2C"


def test_rules_files_spell_json_locations_the_one_way(tmp_path):
    p = tmp_path / "rules.yaml"
    p.write_text(
        "rules:\n  - step: POST /login\n    source: 'json:$[\"token\"]'\n"
        "    targets: ['json:$[\"a-b\"][0]', 'header:authorization']\n"
    )
    (rule,) = load_rules(p)
    assert rule.source == "json:$.token"
    assert rule.targets == ("json:$.a-b[0]", "header:authorization")
    p.write_text(
        "rules:\n  - step: POST /login\n    source: 'json:$.a['\n    targets: ['path[1]']\n"
    )
    with pytest.raises(InputError, match="bad location"):
        load_rules(p)
