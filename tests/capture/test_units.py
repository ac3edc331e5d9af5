"""The capture stage's logic without sockets: credentials, sessions, conversion, the addon
driven through mitmproxy's own test context, the writer's rolling, and inspect."""

from __future__ import annotations

import gzip
import json
import time

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow

from shadowtape.capture.addon import ShadowtapeCapture
from shadowtape.capture.credentials import CredentialScrubber, is_secret_query
from shadowtape.capture.flow_to_exchange import flow_to_exchange
from shadowtape.capture.inspection import format_report, inspect_dataset, route_of
from shadowtape.capture.sessions import SessionKey, SessionTracker, sample_keeps
from shadowtape.capture.writer import (
    CaptureCounters,
    CaptureWriter,
    ExchangeSink,
    WriterSettings,
)
from shadowtape.errors import InputError
from shadowtape.keyed import Key, Keyed, looks_like_jwt
from shadowtape.schema import DatasetWriter, Exchange, iter_exchanges, read_files

KEY = Key(b"unit-test-key-0123456789abcdef", "test")
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ."
    "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)


@pytest.fixture
def scrubber() -> CredentialScrubber:
    return CredentialScrubber(Keyed(KEY), ["X-Session-Secret"])


def test_credential_headers_are_tokenized_keeping_their_shape(scrubber):
    k = Keyed(KEY)
    out = scrubber.headers(
        [
            ("Authorization", "Bearer abc123"),
            ("proxy-authorization", "Basic dXNlcjpwdw=="),
            ("Cookie", 'sid=abc123; theme="dark"; flag'),
            ("Set-Cookie", "sid=abc123; Path=/; Expires=Wed, 21 Oct 2026 07:28:00 GMT; HttpOnly"),
            ("X-API-Key", "k-1"),
            ("Api-Key", "k-2"),
            ("X-Auth-Token", "t-3"),
            ("x-session-secret", "s-4"),
            ("Accept", "text/html"),
            ("Authorization", JWT),
        ]
    )
    token = k.secret("abc123")
    assert out[0] == ("Authorization", f"Bearer {token}")
    assert out[1] == ("proxy-authorization", f"Basic {k.secret('dXNlcjpwdw==')}")
    assert out[2] == ("Cookie", f'sid={token}; theme="{k.secret("dark")}"; {k.secret("flag")}')
    assert out[3] == (
        "Set-Cookie",
        f"sid={token}; Path=/; Expires=Wed, 21 Oct 2026 07:28:00 GMT; HttpOnly",
    )
    assert [v for _, v in out[4:8]] == [k.secret(v) for v in ("k-1", "k-2", "t-3", "s-4")]
    assert out[8] == ("Accept", "text/html")
    assert looks_like_jwt(out[9][1]) and out[9][1] != JWT


def test_secret_query_parameters(scrubber):
    k = Keyed(KEY)
    out = scrubber.query(
        [("q", "shoes"), ("access_token", "abc123"), ("API_KEY", "z"), ("page", "2"), ("token", "")]
    )
    assert out == [
        ("q", "shoes"),
        ("access_token", k.secret("abc123")),
        ("API_KEY", k.secret("z")),
        ("page", "2"),
        ("token", ""),
    ]
    assert is_secret_query("X-Amz-Signature") and not is_secret_query("tokens")


def test_session_key_parsing():
    assert SessionKey.parse("cookie:sid") == SessionKey("cookie", "sid")
    assert SessionKey.parse("header:X-User") == SessionKey("header", "X-User")
    assert SessionKey.parse("client") == SessionKey("client")
    for bad in ("cookie:", "weird", "client:x", "header"):
        with pytest.raises(InputError):
            SessionKey.parse(bad)


def test_sessions_by_cookie_header_and_client_gap():
    keyed = Keyed(KEY)
    t = SessionTracker(keyed, SessionKey.parse("cookie:sid"), gap_seconds=10)
    a1 = t.assign([("Cookie", "sid=A; x=1")], "10.0.0.1", 0)
    b1 = t.assign([("Cookie", "sid=B")], "10.0.0.1", 1)
    a2 = t.assign([("Cookie", "x=2; sid=A")], "10.0.0.2", 2)
    assert a1[0] == a2[0] != b1[0]
    assert (a1[1], a2[1], b1[1]) == (0, 1, 0)
    # No cookie: client address + gap; a long silence starts a new session.
    c1 = t.assign([], "10.0.0.9", 0)
    c2 = t.assign([], "10.0.0.9", 5_000_000)
    c3 = t.assign([], "10.0.0.9", 30_000_000)
    assert c1[0] == c2[0] != c3[0] and (c1[1], c2[1], c3[1]) == (0, 1, 0)
    assert "10.0.0.9" not in c1[0] and len(c1[0]) == 32
    h = SessionTracker(keyed, SessionKey.parse("header:X-User"))
    assert h.assign([("x-user", "u1")], None, 0)[0] == h.assign([("X-User", "u1")], "b", 9)[0]
    # Same key, same traffic: same ids (imports are reproducible).
    again = SessionTracker(keyed, SessionKey.parse("cookie:sid"), gap_seconds=10)
    assert again.assign([("Cookie", "sid=A")], "z", 0)[0] == a1[0]


def test_sampling_is_per_session_and_near_the_fraction():
    ids = [f"{i:032x}" for i in range(4000)]
    kept = [s for s in ids if sample_keeps(s, 0.25, seed=3)]
    assert 800 < len(kept) < 1200
    assert kept == [s for s in ids if sample_keeps(s, 0.25, seed=3)]
    assert kept != [s for s in ids if sample_keeps(s, 0.25, seed=4)]
    assert all(sample_keeps(s, 1.0, 0) for s in ids[:10])
    assert not any(sample_keeps(s, 0.0, 0) for s in ids[:10])


def test_flow_conversion_bodies_truncation_and_encoding(scrubber):
    f = tflow.tflow(resp=True)
    f.request.path = "/p/q?x=1&x=2&y="
    f.request.content = b"\x00" * 50
    f.response.headers["Content-Encoding"] = "gzip"
    f.response.raw_content = gzip.compress(b"hello world")
    f.response.headers["Content-Length"] = str(len(f.response.raw_content))
    ex = flow_to_exchange(
        f, exchange_id="i", session_id="s", seq=3, capture_id="c", scrubber=scrubber, max_body=10
    ).exchange
    assert (ex.path, ex.query) == ("/p/q", [("x", "1"), ("x", "2"), ("y", "")])
    assert ex.request_body == b"\x00" * 10 and ex.request_body_truncated
    assert ex.request_body_size == 50
    assert ex.response_body == b"hello worl" and ex.response_body_size == 11
    names = [n.lower() for n, _ in ex.response_headers]
    assert "content-encoding" not in names
    assert ("content-length", "11") in [(n.lower(), v) for n, v in ex.response_headers]
    assert ex.started_at == round(f.request.timestamp_start * 1_000_000)

    bad = tflow.tflow(resp=True)
    bad.response.headers["Content-Encoding"] = "gzip"
    bad.response.raw_content = b"not gzip at all"
    ex = flow_to_exchange(
        bad, exchange_id="i", session_id="s", seq=0, capture_id="c", scrubber=scrubber
    ).exchange
    assert ex.response_body == b"not gzip at all"
    assert ("content-encoding", "gzip") in [(n.lower(), v) for n, v in ex.response_headers]
    assert ex.response_body_undecodable is True and ex.request_body_undecodable is False

    streamed = tflow.tflow(resp=True)
    streamed.response.stream = True
    streamed.response.raw_content = None
    converted = flow_to_exchange(
        streamed, exchange_id="i", session_id="s", seq=0, capture_id="c", scrubber=scrubber
    )
    assert converted.streamed_bodies == 1 and converted.exchange.response_body is None


def _flow(path: str, cookie: str | None = None) -> tflow.http.HTTPFlow:
    f = tflow.tflow(resp=True)
    f.request.path = path
    if cookie:
        f.request.headers["Cookie"] = cookie
    return f


def test_addon_in_mitmproxys_test_context(tmp_path, monkeypatch):
    monkeypatch.setenv("SHADOWTAPE_KEY", KEY.secret.decode())
    addon = ShadowtapeCapture()
    with taddons.context(addon) as tctx:
        tctx.configure(
            addon,
            shadowtape_out=str(tmp_path / "raw"),
            shadowtape_filter_path="^/api",
            shadowtape_session_key="cookie:sid",
            shadowtape_sample="0.5",
            shadowtape_roll_interval="0",
        )
        flows = [_flow(f"/api/{i}", f"sid=user{i % 8}") for i in range(40)]
        flows += [_flow("/static/app.js")]
        errored = tflow.tflow(err=True)
        errored.request.path = "/api/err"
        errored.request.headers["Cookie"] = "sid=user0"
        flows.append(errored)
        for f in flows:
            addon.requestheaders(f)
        for f in flows:
            if f.response is not None:
                addon.response(f)
            # An error after a response is still one row.
            addon.error(f)
        addon.done()
    writer = addon.finished[0]
    c = writer.counters
    assert c.skipped_filter == 1
    assert c.recorded + c.skipped_sample == 41
    assert sum(i.num_rows for i in read_files(tmp_path / "raw")) == c.recorded
    assert 0 < c.recorded < 41


def test_addon_rejects_bad_options(tmp_path, monkeypatch):
    monkeypatch.delenv("SHADOWTAPE_KEY", raising=False)
    addon = ShadowtapeCapture()
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError, match="no key"):
            tctx.configure(addon, shadowtape_out=str(tmp_path))
        monkeypatch.setenv("SHADOWTAPE_KEY", KEY.secret.decode())
        with pytest.raises(exceptions.OptionsError, match="sample fraction"):
            tctx.configure(addon, shadowtape_out=str(tmp_path), shadowtape_sample="2")
        with pytest.raises(exceptions.OptionsError, match="regular expression"):
            tctx.configure(addon, shadowtape_out=str(tmp_path), shadowtape_filter_host="[")


def test_addon_without_out_dir_records_nothing(tmp_path):
    addon = ShadowtapeCapture()
    with taddons.context(addon):
        f = tflow.tflow(resp=True)
        addon.requestheaders(f)
        addon.response(f)
    assert addon.writer is None and not addon.finished


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _ex(i: int, body: bytes = b"") -> Exchange:
    return Exchange(
        id=f"id{i}",
        session_id="s",
        seq=i,
        started_at=i,
        method="GET",
        response_body=body,
        status=None if i % 5 == 0 else 200,
        error="refused" if i % 5 == 0 else None,
    )


def test_sink_rolls_by_interval_from_first_row_and_by_size(tmp_path):
    clock = FakeClock()
    counters = CaptureCounters()
    sink = ExchangeSink(
        WriterSettings(
            tmp_path / "t",
            "cid",
            {"shadowtape.sanitized": "false"},
            roll_seconds=5.0,
            roll_bytes=64 * 1024,
        ),
        counters,
        clock,
    )
    assert not sink.due()
    clock.now += 1000  # idle time before the first row does not count
    sink.write([_ex(1)])
    assert not sink.due()
    clock.now += 5
    assert sink.due()
    first = sink.finalize_file()
    assert first is not None and not sink.due()
    meta = read_files(first)[0].metadata
    assert meta["shadowtape.capture.recorded"] == "1"
    for i in range(10):
        sink.write([_ex(i, b"z" * 10_000)])
    assert len(sink.files) >= 2  # rolled on size without waiting for the clock
    sink.close()
    last = read_files(sink.files[-1])[0].metadata
    assert last["shadowtape.capture.recorded"] == "11"
    assert last["shadowtape.capture.errors"] == "2"  # ids 0 and 5


def test_writer_thread_finalizes_on_the_roll_interval(tmp_path):
    sink = ExchangeSink(WriterSettings(tmp_path, "cid", {}, roll_seconds=0.05), CaptureCounters())
    writer = CaptureWriter(sink, queue_size=100).start()
    for i in range(5):
        assert writer.offer(_ex(i))
    deadline = time.monotonic() + 30
    while not sink.files and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sink.files, "the open file was not finalized on its interval"
    writer.close(timeout=30)
    assert sum(i.num_rows for i in read_files(tmp_path)) == 5


def test_inspect_counts_and_text(tmp_path):
    sink = ExchangeSink(
        WriterSettings(tmp_path, "cid", {"shadowtape.capture_id": "cid"}),
        CaptureCounters(dropped_queue_full=4),
    )
    rows = [_ex(i) for i in range(10)]
    for r in rows:
        r.path = f"/orders/{r.seq}"
        r.host = "api.example"
    rows[0].response_body_truncated = True
    sink.write(rows)
    sink.close()
    report = inspect_dataset(tmp_path)
    assert report.rows == 10 and report.sessions == 1
    assert report.status_mix == {"2xx": 8, "no response": 2}
    assert report.top_routes == [("GET /orders/{id}", 10)]
    assert report.truncated_bodies == 1 and report.error_rows == 2
    assert report.capture_counters["dropped_queue_full"] == 4
    text = format_report(report)
    assert "dropped (queue full) 4" in text and "10 exchanges in 1 files" in text
    assert json.loads(json.dumps(report.to_json()))["top_hosts"] == [
        {"host": "api.example", "count": 10}
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no finalized files" in format_report(inspect_dataset(empty))
    assert route_of("GET", "/u/550e8400-e29b-41d4-a716-446655440000/x") == "GET /u/{id}/x"


def test_a_flow_that_cannot_be_converted_is_counted_not_raised(tmp_path, monkeypatch):
    import shadowtape.capture.addon as addon_module

    def broken(*_args, **_kwargs):
        raise ValueError("odd flow")

    monkeypatch.setenv("SHADOWTAPE_KEY", KEY.secret.decode())
    monkeypatch.setattr(addon_module, "flow_to_exchange", broken)
    addon = ShadowtapeCapture()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, shadowtape_out=str(tmp_path))
        f = tflow.tflow(resp=True)
        addon.requestheaders(f)
        addon.response(f)
        addon.done()
    c = addon.finished[0].counters
    assert c.dropped_conversion_error == 1 and c.recorded == 0 and c.dropped() == 1


def test_flow_keeps_the_raw_target_with_only_credentials_re_encoded(scrubber, tmp_path):
    k = Keyed(KEY)
    f = tflow.tflow(resp=True)
    f.request.data.path = b"/p/a%2Fb?x=1&a&y=rY3NFD4=&access_token=SECRET1&q=a,b&d=/"
    f.request.headers.fields = ((b"Host", b"shop.example"), (b"X-Name", b"Jos\xe9"))
    ex = flow_to_exchange(
        f, exchange_id="i", session_id="s", seq=0, capture_id="c", scrubber=scrubber
    ).exchange
    token = k.secret("SECRET1")
    assert ex.request_target == f"/p/a%2Fb?x=1&a&y=rY3NFD4=&access_token={token}&q=a,b&d=/"
    assert ex.path == "/p/a%2Fb"
    assert ex.query == [
        ("x", "1"),
        ("a", ""),
        ("y", "rY3NFD4="),
        ("access_token", token),
        ("q", "a,b"),
        ("d", "/"),
    ]
    assert ex.server_address == "192.168.0.1:22"
    assert ex.request_headers[1] == ("X-Name", "Jos\udce9")
    assert ex.request_body_undecodable is False
    # The latin-1 byte no longer makes the record unwritable, and comes back as it was.
    with DatasetWriter(tmp_path) as writer:
        writer.write_exchanges([ex])
    (back,) = list(iter_exchanges(tmp_path))
    assert back.request_headers == ex.request_headers
    assert back.request_target == ex.request_target
