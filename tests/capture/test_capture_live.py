"""`shadowtape capture` as users run it: a real process, a real upstream, real clients."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx
import pytest

from shadowtape.capture.writer import CaptureCounters
from shadowtape.http.headers import decode, encode, fields_from_pairs
from shadowtape.schema import dataset_files, dataset_metadata, read_files

BINARY = bytes(range(256)) * 4
SECRETS = {
    "bearer": "SECRETbearer0001",
    "apikey": "SECRETapikey0002",
    "sid": "SECRETsid0003",
    "login": "SECRETlogin0004",  # what the upstream mints at /login
    "query": "SECRETquery0005",
    "custom": "SECRETcustom0006",
    "basic": "SECRETbasic0007",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client() -> httpx.Client:
    return httpx.Client(timeout=30.0)


def test_every_request_lands_with_its_details_and_no_secret_reaches_disk(
    start_capture, rows_of, bytes_of, headers_named
):
    cap = start_capture("--max-body", "2000", "--redact-header", "X-Internal-Token")
    url = cap.url
    with _client() as c:
        r = c.get(
            f"{url}/items?b=2&a=1&a=3&access_token={SECRETS['query']}",
            headers=[
                ("X-Multi", "1"),
                ("X-Multi", "2"),
                ("Authorization", f"Bearer {SECRETS['bearer']}"),
                ("X-Api-Key", SECRETS["apikey"]),
                ("Cookie", f"sid={SECRETS['sid']}; theme=light"),
                ("X-Internal-Token", SECRETS["custom"]),
            ],
        )
        assert r.status_code == 200
        r = c.post(f"{url}/upload", content=BINARY, headers={"Content-Type": "image/png"})
        assert r.status_code == 201 and r.content == BINARY
        assert c.get(f"{url}/binary").content == BINARY
        r = c.post(f"{url}/login")
        assert r.status_code == 200
        r = c.get(f"{url}/after-login", headers={"Cookie": f"sid={SECRETS['login']}"})
        assert r.status_code == 200
        assert c.get(f"{url}/gzip").content == b"zipped " * 50
        assert len(c.get(f"{url}/big").content) == 5000
        c.get(f"{url}/basic", auth=("user", SECRETS["basic"]))
    sent = 8
    curl = shutil.which("curl")
    if curl:
        h1 = subprocess.run([curl, "-s", f"{url}/curl-h1"], capture_output=True, timeout=60)
        assert h1.stdout == b"ok"
        https = url.replace("http://", "https://")
        h2 = subprocess.run(
            [curl, "-sk", "--http2", "-o", "/dev/null", "-w", "%{http_version}", f"{https}/h2"],
            capture_output=True,
            timeout=60,
            text=True,
        )
        assert h2.stdout == "2"
        sent += 2

    rc, out, err = cap.stop(signal.SIGTERM)
    assert rc == 0, err
    assert f"captured {sent} exchanges" in out
    rows = rows_of(cap.out_dir)
    assert len(rows) == sent
    by_path = {r["path"]: r for r in rows}

    items = by_path["/items"]
    assert items["method"] == "GET"
    assert [n for n, _ in items["query"]] == ["b", "a", "a", "access_token"]
    assert items["query"][:3] == [("b", "2"), ("a", "1"), ("a", "3")]
    assert items["query"][3][1].startswith("stk_")
    assert headers_named(items["request_headers"], "X-Multi") == ["1", "2"]
    (auth,) = headers_named(items["request_headers"], "Authorization")
    assert auth.startswith("Bearer stk_")
    (cookie,) = headers_named(items["request_headers"], "Cookie")
    assert cookie.startswith("sid=stk_") and "; theme=stk_" in cookie
    assert headers_named(items["request_headers"], "X-Internal-Token")[0].startswith("stk_")
    assert headers_named(items["response_headers"], "X-Dup") == ["a", "b"]
    assert items["status"] == 200 and items["reason"] == "OK"
    assert items["started_at"] <= items["request_sent_at"] <= items["response_started_at"]
    assert items["response_started_at"] <= items["response_ended_at"]

    upload = by_path["/upload"]
    assert upload["request_body"] == BINARY and upload["response_body"] == BINARY
    assert upload["status"] == 201 and upload["request_body_size"] == len(BINARY)
    assert by_path["/binary"]["response_body"] == BINARY

    # A secret minted in a response and later sent by the client maps to the same token.
    login_cookie = headers_named(by_path["/login"]["response_headers"], "Set-Cookie")
    assert login_cookie[0].endswith("; Path=/; HttpOnly")
    minted = login_cookie[0].split(";")[0]
    assert headers_named(by_path["/after-login"]["request_headers"], "Cookie") == [minted]

    gz = by_path["/gzip"]
    assert gz["response_body"] == b"zipped " * 50
    assert headers_named(gz["response_headers"], "Content-Encoding") == []

    big = by_path["/big"]
    assert big["response_body_truncated"] is True
    assert big["response_body"] == b"x" * 2000 and big["response_body_size"] == 5000

    assert headers_named(by_path["/basic"]["request_headers"], "Authorization")[0].startswith(
        "Basic stk_"
    )
    if curl:
        assert by_path["/h2"]["http_version"] == "HTTP/2.0"
        assert by_path["/curl-h1"]["http_version"] == "HTTP/1.1"

    # One client, one session cookie... the first request named the session by cookie.
    assert all(len(r["session_id"]) == 32 for r in rows)
    disk = bytes_of(cap.out_dir)
    for secret in SECRETS.values():
        assert secret.encode() not in disk, secret
    meta = dataset_metadata(cap.out_dir)
    assert meta["shadowtape.sanitized"] == "false"
    assert meta["shadowtape.capture_id"]
    last = read_files(cap.out_dir)[-1].metadata
    assert last["shadowtape.capture.written"] == str(sent)
    assert last["shadowtape.capture.truncated_bodies"] == "1"
    assert all(
        f.name.startswith(f"capture-{meta['shadowtape.capture_id']}")
        for f in dataset_files(cap.out_dir)
    )


def test_upstream_down_gives_error_rows(start_capture, rows_of, tmp_path):
    cap = start_capture(to=f"http://127.0.0.1:{_free_port()}")
    with _client() as c:
        assert c.get(f"{cap.url}/nobody-home").status_code == 502
        assert c.post(f"{cap.url}/still-nobody", content=b"payload").status_code == 502
    rc, out, _ = cap.stop(signal.SIGINT)
    assert rc == 0
    assert "error exchanges: 2" in out
    rows = rows_of(cap.out_dir)
    assert [r["path"] for r in rows] == ["/nobody-home", "/still-nobody"]
    for r in rows:
        assert r["status"] is None and r["response_body"] is None
        assert r["error"]
    assert rows[1]["request_body"] == b"payload"


def test_sampling_keeps_sessions_whole_and_filters_are_counted(start_capture, rows_of):
    cap = start_capture(
        "--sample", "0.5", "--seed", "7", "--session-key", "cookie:sid", "--filter-path", "^/keep"
    )
    sessions, per_session = 24, 3
    with _client() as c:
        for s in range(sessions):
            for i in range(per_session):
                r = c.get(f"{cap.url}/keep/{i}", headers={"Cookie": f"sid=user-{s}"})
                assert r.status_code == 200
        for _ in range(5):
            assert c.get(f"{cap.url}/drop/me").status_code == 200
    rc, out, _ = cap.stop()
    assert rc == 0
    rows = rows_of(cap.out_dir)
    grouped: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        grouped[r["session_id"]].append(r["seq"])
    assert 0 < len(grouped) < sessions
    for seqs in grouped.values():
        assert sorted(seqs) == list(range(per_session))
    assert all(r["path"].startswith("/keep") for r in rows)
    last = read_files(cap.out_dir)[-1].metadata
    assert int(last["shadowtape.capture.skipped_sample"]) == sessions * per_session - len(rows)
    assert last["shadowtape.capture.skipped_filter"] == "5"
    assert "5 (filter)" in out


def _rows_on_disk(out_dir: Path) -> int:
    if not out_dir.exists():
        return 0
    return sum(info.num_rows for info in read_files(out_dir))


def test_kill_9_mid_traffic_leaves_only_readable_files(start_capture, rows_of):
    cap = start_capture("--roll-interval", "0.2")
    with _client() as c:
        for i in range(30):
            assert c.get(f"{cap.url}/early/{i}").status_code == 200
        # Traffic older than a roll interval reaches finalized files without any shutdown.
        deadline = time.monotonic() + 60
        while _rows_on_disk(cap.out_dir) < 30:
            assert time.monotonic() < deadline, "rows never reached finalized files"
            time.sleep(0.05)
        stop = threading.Event()

        def keep_sending() -> None:
            with _client() as c2:
                i = 0
                while not stop.is_set():
                    try:
                        c2.get(f"{cap.url}/late/{i}")
                    except httpx.HTTPError:
                        return  # the proxy is gone
                    i += 1

        sender = threading.Thread(target=keep_sending, daemon=True)
        sender.start()
        files_before = len(dataset_files(cap.out_dir))
        deadline = time.monotonic() + 60
        while len(dataset_files(cap.out_dir)) < files_before + 2:
            assert time.monotonic() < deadline, "no files were finalized under traffic"
            time.sleep(0.05)
        cap.proc.kill()  # SIGKILL, mid-traffic: no flush, no finalize
        cap.proc.wait(30)
        stop.set()
        sender.join(30)
    rows = rows_of(cap.out_dir)  # every visible file reads to its end
    paths = {r["path"] for r in rows}
    assert {f"/early/{i}" for i in range(30)} <= paths
    assert any(p.startswith("/late/") for p in paths)
    assert len({r["id"] for r in rows}) == len(rows)
    for f in cap.out_dir.iterdir():
        assert f.name.endswith(".parquet")  # finalized files, or hidden .tmp ones readers skip


def test_a_latin1_header_byte_is_kept_and_costs_no_other_exchange(start_capture, rows_of):
    """Schema 1 could not store `X-Name: Jos\\xe9`: the whole open file was thrown away while
    the summary said 0 write errors. Now the bytes are stored, and every exchange lands."""
    cap = start_capture()
    port = int(cap.url.rsplit(":", 1)[1])
    with _client() as c:
        for i in range(3):
            assert c.get(f"{cap.url}/before/{i}").status_code == 200
    odd = (
        b"GET /caf\xe9?q=Jos\xe9&a=|&b=%zz HTTP/1.1\r\nHost: shop.example\r\n"
        b"X-Name: Jos\xe9\r\nX-Obs: \x80\xff\tobs\r\nX-Utf8: \xc3\xa9\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(odd)
        assert s.recv(100).startswith(b"HTTP/1.1 200")
    with _client() as c:
        for i in range(3):
            assert c.get(f"{cap.url}/after/{i}").status_code == 200
    rc, out, err = cap.stop(signal.SIGTERM)
    assert rc == 0, err
    rows = rows_of(cap.out_dir)
    assert len(rows) == 7
    (latin,) = [r for r in rows if r["path"].startswith("/caf")]
    assert encode(latin["request_target"]) == b"/caf\xe9?q=Jos\xe9&a=|&b=%zz"
    fields = fields_from_pairs(latin["request_headers"])
    assert fields[1:] == [
        (b"X-Name", b"Jos\xe9"),
        (b"X-Obs", b"\x80\xff\tobs"),
        (b"X-Utf8", b"\xc3\xa9"),
    ]
    assert latin["query"][0] == ("q", decode(b"Jos\xe9"))
    counters = CaptureCounters.from_metadata(read_files(cap.out_dir)[-1].metadata)
    assert counters is not None and counters.dropped() == 0


def test_inspect_reports_a_capture(start_capture, shadowtape_cmd):
    cap = start_capture()
    with _client() as c:
        for i in range(4):
            c.get(f"{cap.url}/users/{1000 + i}")
        c.post(f"{cap.url}/users", content=b"{}")
    assert cap.stop()[0] == 0
    out = subprocess.run(
        [*shadowtape_cmd, "inspect", str(cap.out_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["rows"] == 5
    assert report["status_mix"] == {"2xx": 5}
    assert {"route": "GET /users/{id}", "count": 4} in report["top_routes"]
    assert report["capture_counters"]["written"] == 5
    assert report["sessions"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--upstream", "ftp://x"], "give an http:// or https:// URL"),
        (["--upstream", "http://127.0.0.1:1", "--listen", "nonsense"], "expected HOST:PORT"),
        (["--upstream", "http://127.0.0.1:1", "--filter-path", "("], "not a valid regular"),
        (["--upstream", "http://127.0.0.1:1", "--session-key", "bogus"], "session key"),
    ],
)
def test_bad_options_give_one_line_and_exit_2(args, message, tmp_path, cli):
    out_dir = tmp_path / "o"
    result = cli("capture", "--out", out_dir, "--listen", "127.0.0.1:0", *args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_missing_key_is_one_line(tmp_path, cli):
    result = cli(
        "capture",
        "--upstream",
        "http://127.0.0.1:1",
        "--listen",
        "127.0.0.1:0",
        "--out",
        tmp_path / "o",
        key=False,
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "shadowtape: error: no key: set the environment variable SHADOWTAPE_KEY "
        "(or pass --key-file FILE); the same key gives the same tokens across runs"
    ]


def test_port_in_use_is_one_line(tmp_path, cli):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli(
            "capture",
            "--upstream",
            "http://127.0.0.1:1",
            "--listen",
            f"127.0.0.1:{port}",
            "--out",
            tmp_path / "o",
        )
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert f"cannot start the proxy on 127.0.0.1:{port}" in line and "--listen" in line
    assert "listening on" not in result.stdout
