"""`shadowtape import`: HAR edge cases, mitmproxy flow files, bad input, determinism."""

from __future__ import annotations

import base64
import copy
import io
import json
import subprocess
import zlib
from pathlib import Path

import pytest
from mitmproxy.io import FlowWriter
from mitmproxy.test import tflow

from shadowtape.capture.jsonstream import JsonScanner
from shadowtape.schema import dataset_files

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
GZIP_TEXT = '{"name": "Zoë", "n": 1}'


def _entry(url: str, **over) -> dict:
    entry = {
        "startedDateTime": "2024-05-01T10:00:00.123456+00:00",
        "time": 12.5,
        "request": {
            "method": "GET",
            "url": url,
            "httpVersion": "HTTP/1.1",
            "cookies": [{"name": "sid", "value": "SECRETharcookie"}],
            "headers": [
                {"name": "Cookie", "value": "sid=SECRETharcookie"},
                {"name": "Accept", "value": "text/html"},
                {"name": "Accept", "value": "application/json"},
            ],
            "queryString": [],
            "headersSize": -1,
            "bodySize": 0,
        },
        "response": {
            "status": 200,
            "statusText": "OK",
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": [{"name": "Content-Type", "value": "text/plain"}],
            "content": {"size": 2, "mimeType": "text/plain", "text": "hi"},
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": 2,
        },
        "cache": {},
        "timings": {"blocked": -1, "dns": -1, "connect": -1, "send": 1, "wait": 10, "receive": 1.5},
        "_priority": "High",
    }
    for path, value in over.items():
        target = entry
        keys = path.split("__")
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value
    return entry


def edge_case_har() -> dict:
    entries = [
        _entry("https://shop.example/items?b=2&a=1&a=3"),
        # base64 binary response
        _entry(
            "https://shop.example/logo.png",
            response__content={
                "size": len(PNG),
                "mimeType": "image/png",
                "text": base64.b64encode(PNG).decode(),
                "encoding": "base64",
            },
        ),
        # body not saved by the browser (size but no text) -> null; empty body -> b""
        _entry("https://shop.example/big", response__content={"size": 9000, "mimeType": "x/y"}),
        # a redirect chain: two entries, two rows
        _entry(
            "http://shop.example/old",
            response__status=301,
            response__statusText="Moved Permanently",
            response__redirectURL="https://shop.example/new",
            response__headers=[{"name": "Location", "value": "https://shop.example/new"}],
            response__content={"size": 0, "mimeType": ""},
        ),
        _entry("https://shop.example/new"),
        # a POST with form params only, and a Set-Cookie in the answer
        _entry(
            "https://shop.example/login",
            request__method="POST",
            request__postData={
                "mimeType": "application/x-www-form-urlencoded",
                "params": [{"name": "user", "value": "ann"}, {"name": "pw", "value": "x y"}],
            },
            response__headers=[
                {"name": "Set-Cookie", "value": "sid=SECRETminted; Path=/; Secure"},
            ],
        ),
        # no response at all (status 0, the browser's error extension)
        _entry(
            "https://down.example/api",
            response__status=0,
            response__statusText="",
            response__content={"size": 0, "mimeType": ""},
            response___error="net::ERR_CONNECTION_REFUSED",
        ),
        # HTTP/2 pseudo-headers and an encoded JSON body stored decoded
        _entry(
            "https://api.example:8443/v1/me",
            request__httpVersion="h2",
            request__headers=[
                {"name": ":method", "value": "GET"},
                {"name": ":path", "value": "/v1/me"},
                {"name": "authorization", "value": "Bearer SECRETharbearer"},
            ],
            response__headers=[
                {"name": "content-encoding", "value": "gzip"},
                {"name": "content-type", "value": "application/json; charset=utf-8"},
            ],
            response__content={
                "size": 24,
                "mimeType": "application/json; charset=utf-8",
                "text": GZIP_TEXT,
            },
        ),
    ]
    return {
        "log": {
            "version": "1.2",
            "creator": {"name": "WebInspector", "version": "537.36"},
            "pages": [{"id": "page_1", "title": "shop", "startedDateTime": "2024-05-01T10:00Z"}],
            "entries": entries,
        }
    }


@pytest.fixture
def har_file(tmp_path: Path) -> Path:
    p = tmp_path / "browser.har"
    p.write_text(json.dumps(edge_case_har(), indent=1), encoding="utf-8")
    return p


def run_import(cmd, env, *args):
    return subprocess.run(
        [*cmd, "import", *map(str, args)], capture_output=True, text=True, env=env, timeout=120
    )


def test_hand_made_har_edge_cases(
    har_file, tmp_path, shadowtape_cmd, capture_env, rows_of, bytes_of, headers_named
):
    out = tmp_path / "raw"
    done = run_import(shadowtape_cmd, capture_env, har_file, "--out", out)
    assert done.returncode == 0, done.stderr
    assert "imported 8 exchanges" in done.stdout
    rows = rows_of(out)
    assert [r["path"] for r in rows] == [
        "/items",
        "/logo.png",
        "/big",
        "/old",
        "/new",
        "/login",
        "/api",
        "/v1/me",
    ]
    items, logo, big, old, new, login, down, me = rows
    assert items["query"] == [("b", "2"), ("a", "1"), ("a", "3")]
    assert items["scheme"] == "https" and items["port"] == 443 and items["host"] == "shop.example"
    assert headers_named(items["request_headers"], "Accept") == ["text/html", "application/json"]
    assert headers_named(items["request_headers"], "Cookie")[0].startswith("sid=stk_")
    assert items["response_body"] == b"hi" and items["request_body"] == b""
    assert items["started_at"] == 1714557600123456
    assert items["request_sent_at"] == items["started_at"] + 1000
    assert items["response_started_at"] == items["request_sent_at"] + 10_000
    assert items["response_ended_at"] == items["response_started_at"] + 1500
    assert logo["response_body"] == PNG
    assert big["response_body"] is None and big["status"] == 200
    assert old["status"] == 301 and headers_named(old["response_headers"], "Location")
    assert old["scheme"] == "http" and old["port"] == 80
    assert new["status"] == 200
    assert login["method"] == "POST" and login["request_body"] == b"user=ann&pw=x+y"
    assert headers_named(login["response_headers"], "Set-Cookie")[0].endswith("; Path=/; Secure")
    assert down["status"] is None and down["error"] == "net::ERR_CONNECTION_REFUSED"
    assert me["port"] == 8443
    assert all(not n.startswith(":") for n, _ in me["request_headers"])
    assert headers_named(me["request_headers"], "authorization")[0].startswith("Bearer stk_")
    assert me["response_body"] == GZIP_TEXT.encode("utf-8")
    assert headers_named(me["response_headers"], "content-encoding") == []
    # The session cookie names the session (auto); the one request without it falls back
    # to the file standing in for the client.
    assert len({r["session_id"] for r in rows[:7]}) == 1
    assert [r["seq"] for r in rows[:7]] == list(range(7))
    assert me["session_id"] != items["session_id"] and me["seq"] == 0
    disk = bytes_of(out)
    for secret in (b"SECRETharcookie", b"SECRETminted", b"SECRETharbearer"):
        assert secret not in disk


def test_import_is_deterministic(har_file, tmp_path, cli):
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert cli("import", har_file, "--out", out).exit_code == 0
    a, b = (dataset_files(o) for o in outs)
    assert [f.name for f in a] == [f.name for f in b]
    assert [f.read_bytes() for f in a] == [f.read_bytes() for f in b]
    again = cli("import", har_file, "--out", outs[0])
    assert again.exit_code == 2 and "already imported here" in again.stderr
    assert dataset_files(outs[0]) == a


def _broken(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        (
            "malformed.har",
            lambda good: good.replace('"entries"', '"entries" "oops"', 1),
            "not valid JSON at line",
        ),
        (
            "version.har",
            lambda good: good.replace('"version": "1.2"', '"version": "0.9"'),
            "HAR version '0.9' is not supported",
        ),
        ("truncated.har", lambda good: good[: len(good) // 2], "ends early"),
        ("nothar.har", lambda good: '{"hello": [1, 2]}', "no log.entries; not a HAR file"),
    ],
)
def test_bad_har_files_give_one_line_exit_2_and_no_output(
    name, make, message, har_file, tmp_path, cli
):
    bad = _broken(tmp_path, name, make(har_file.read_text()))
    out = tmp_path / "raw"
    # The good file first: its rows must not survive the failure of the second.
    done = cli("import", har_file, bad, "--out", out)
    assert done.exit_code == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"shadowtape: error: {bad}") and message in lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_bad_entry_fails_by_default_and_is_skipped_on_request(tmp_path, cli, rows_of):
    har = edge_case_har()
    bad = copy.deepcopy(har["log"]["entries"][0])
    del bad["request"]["url"]
    har["log"]["entries"].insert(2, bad)
    har["log"]["entries"].insert(4, {"request": "not an object"})
    p = tmp_path / "some-bad.har"
    p.write_text(json.dumps(har))
    out = tmp_path / "raw"
    done = cli("import", p, "--out", out)
    assert done.exit_code == 2
    assert done.stderr.strip() == (
        f"shadowtape: error: {p}: entry 2: request.url is missing; fix it or pass --on-error skip"
    )
    assert not out.exists() or not any(out.iterdir())
    done = cli("import", p, "--out", out, "--on-error", "skip")
    assert done.exit_code == 0, done.stderr
    assert "imported 8 exchanges" in done.stdout and "2 bad entries" in done.stdout
    assert f"{p}: entry 2: request.url is missing" in done.stderr
    assert f"{p}: entry 4: request is missing or not an object" in done.stderr
    assert len(rows_of(out)) == 8


def test_mitmproxy_flow_files(tmp_path, cli, rows_of, bytes_of):
    path = tmp_path / "flows.mitm"
    flows = [tflow.tflow(resp=True), tflow.tflow(err=True), tflow.ttcpflow()]
    flows[0].request.headers["Authorization"] = "Bearer SECRETflowbearer"
    flows[0].request.content = b"\x00\xffbody"
    with open(path, "wb") as fh:
        writer = FlowWriter(fh)
        for f in flows:
            writer.add(f)
    out = tmp_path / "raw"
    done = cli("import", path, "--out", out)
    assert done.exit_code == 0, done.stderr
    assert "imported 2 exchanges" in done.stdout and "1 non-HTTP flows" in done.stdout
    ok, err = rows_of(out)
    assert ok["status"] == 200 and ok["request_body"] == b"\x00\xffbody"
    assert err["status"] is None and err["error"] == "error"
    assert b"SECRETflowbearer" not in bytes_of(out)

    truncated = tmp_path / "cut.mitm"
    truncated.write_bytes(path.read_bytes()[:-40])
    done = cli("import", truncated, "--out", tmp_path / "cut")
    assert done.exit_code == 2
    (line,) = done.stderr.strip().splitlines()
    assert f"{truncated}: flow 2 is unreadable" in line


def test_missing_input_file(tmp_path, cli):
    done = cli("import", tmp_path / "nope.har", "--out", tmp_path / "o")
    assert done.exit_code == 2
    assert "nope.har" in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_json_scanner_reads_entries_across_any_chunk_boundary(chunk):
    doc = {
        "log": {
            "version": "1.2",
            "entries": [{"n": i, "s": "é" * i, "f": 1.5e3} for i in range(30)],
            "tail": [1, {"x": None}],
        }
    }
    scanner = JsonScanner(io.StringIO(json.dumps(doc)), "mem", chunk_chars=chunk)
    got = []

    def on_log(key):
        if key == "entries":
            yield from scanner.array_items()
        else:
            scanner.value()

    def on_top(key):
        yield from scanner.object_items(on_log)

    got = list(scanner.object_items(on_top))
    scanner.at_end()
    assert got == doc["log"]["entries"]


def test_key_from_another_variable_or_a_file_gives_the_same_tokens(
    har_file, tmp_path, cli, monkeypatch, rows_of
):
    from shadowtape.capture.writer import META_KEY_FINGERPRINT
    from shadowtape.schema import dataset_metadata

    key_file = tmp_path / "team.key"
    key_file.write_text("team-key-0123456789abcdef-xyz\n")
    monkeypatch.setenv("TEAM_KEY", "team-key-0123456789abcdef-xyz")
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("import", har_file, "--out", a, "--key-file", key_file).exit_code == 0
    assert cli("import", har_file, "--out", b, "--key-env", "TEAM_KEY").exit_code == 0
    assert [r["request_headers"] for r in rows_of(a)] == [r["request_headers"] for r in rows_of(b)]
    assert dataset_metadata(a)[META_KEY_FINGERPRINT] == dataset_metadata(b)[META_KEY_FINGERPRINT]
    result = cli("import", har_file, "--out", tmp_path / "c", "--key-env", "NOPE_KEY")
    assert result.exit_code == 2 and "NOPE_KEY" in result.stderr


def test_zhar_as_mitmproxy_writes_it(har_file, tmp_path, cli, rows_of):
    zhar = tmp_path / "browser.zhar"
    zhar.write_bytes(zlib.compress(har_file.read_bytes(), 9))
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    assert cli("import", har_file, "--out", plain).exit_code == 0
    done = cli("import", zhar, "--out", packed)
    assert done.exit_code == 0, done.stderr
    strip = ("id", "session_id", "capture_id")
    assert [{k: v for k, v in r.items() if k not in strip} for r in rows_of(packed)] == [
        {k: v for k, v in r.items() if k not in strip} for r in rows_of(plain)
    ]
    cut = tmp_path / "cut.zhar"
    cut.write_bytes(zhar.read_bytes()[:200])
    done = cli("import", cut, "--out", tmp_path / "cut")
    assert done.exit_code == 2 and len(done.stderr.strip().splitlines()) == 1


def test_har_keeps_the_raw_request_target(tmp_path, cli, rows_of, bytes_of):
    raw_url = (
        "https://shop.example/s/a%2Fb?gcrumb=rY3NFD4=&q=a,b&notify_self&d=/&api_key=SECRETq#frag"
    )
    listed = _entry("https://shop.example/listed")
    listed["request"]["queryString"] = [{"name": "a b", "value": "c/d"}]
    har = {
        "log": {
            "version": "1.2",
            "creator": {"name": "test", "version": "1"},
            "entries": [_entry(raw_url), listed],
        }
    }
    p = tmp_path / "raw-target.har"
    p.write_text(json.dumps(har))
    out = tmp_path / "raw"
    done = cli("import", p, "--out", out)
    assert done.exit_code == 0, done.stderr
    spelled, from_list = rows_of(out)
    target = spelled["request_target"]
    assert target.startswith("/s/a%2Fb?gcrumb=rY3NFD4=&q=a,b&notify_self&d=/&api_key=stk_")
    assert "#" not in target
    assert spelled["path"] == "/s/a%2Fb"
    assert [n for n, _ in spelled["query"]] == ["gcrumb", "q", "notify_self", "d", "api_key"]
    assert spelled["query"][-1][1] == target.rpartition("=")[2]
    # A writer that listed the query only in queryString: the target is spelled from it.
    assert from_list["request_target"] == "/listed?a+b=c%2Fd"
    assert b"SECRETq" not in bytes_of(out)
