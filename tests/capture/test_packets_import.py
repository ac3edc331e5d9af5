"""`shadowtape import` of real packets: loopback servers, dumpcap on lo, curl and httpx.

Every exchange is checked field by field against what the server received and sent: method,
scheme, host, port, target, headers in order with duplicates, status, bodies (decoded as
capture stores them), timings in order, credentials tokenized and never on disk.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qsl

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from packet_testkit import (  # noqa: E402
    BEARER_SECRET,
    BIG,
    LOGIN_SECRET,
    Exchanged,
    H2Seen,
    Seen,
    Server,
    capturing,
    h2_server,
    http1_server,
    need_tools,
    pipelined,
    server_tls,
)
from tls_testkit import self_signed  # noqa: E402

from shadowtape.bodies import headers_for_decoded_body  # noqa: E402
from shadowtape.keyed import is_token  # noqa: E402

CREDENTIAL_HEADERS = {"cookie", "authorization", "set-cookie"}
pytestmark = pytest.mark.timeout(300)


def _http1_traffic(server: Server) -> int:
    """Keep-alive, chunked, gzip, HEAD, 204, binary, big bodies, pipelining; returns how many
    requests were sent."""
    url = server.url
    sent = 0
    with httpx.Client(http1=True, http2=False) as client:
        r = client.get(
            f"{url}/items?b=2&a=1&a=3&i=1",
            headers=[
                ("X-Multi", "one"),
                ("X-Multi", "two"),
                ("Cookie", f"sid={LOGIN_SECRET}; theme=dark"),
                ("Authorization", f"Bearer {BEARER_SECRET}"),
            ],
        )
        assert r.status_code == 200
        for path in ("/gzip?i=2", "/chunked?i=3", "/chunked-gzip?i=4", "/binary?i=5"):
            assert client.get(url + path).status_code == 200
        client.post(f"{url}/echo?i=6", json={"name": "Zoë", "n": 1})
        # a chunked request body (no length known up front)
        client.post(f"{url}/echo?i=7", content=iter([b"part one, ", b"part two"]))
        with client.stream("GET", f"{url}/broken-gzip?i=8") as r:
            assert b"".join(r.iter_raw()).startswith(b"\x1f\x8b")
        client.get(f"{url}/empty?i=9")
        client.get(f"{url}/big?i=10")
        client.put(f"{url}/upload?i=11", content=BIG)
        client.get(f"{url}/login?i=12")
        sent += 12
    # curl: two URLs on one keep-alive connection, then a HEAD
    done = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-o", "/dev/null", "-H", "X-From: curl",
         f"{url}/curl?i=13", f"{url}/curl?i=14"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0
    done = subprocess.run(["curl", "-s", "-I", f"{url}/items?i=15"], capture_output=True)
    assert done.returncode == 0
    sent += 3
    reqs = [f"GET /p{i} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode() for i in (1, 2)]
    reqs.append(b"GET /p3 HTTP/1.1\r\nHost: x\r\nX-Last: yes\r\n\r\n")
    answer = pipelined(server.port, reqs, 3)
    assert answer.count(b"HTTP/1.1 200") == 3
    return sent + 3


def _h2_traffic(server: Server) -> int:
    url = server.url
    for args in (
        ["--http2-prior-knowledge", f"{url}/h2/curl?x=1"],
        ["--http2-prior-knowledge", "-d", "posted by curl", f"{url}/h2/post"],
    ):
        done = subprocess.run(["curl", "-s", "-o", "/dev/null", *args], capture_output=True)
        assert done.returncode == 0, done.stderr
    with httpx.Client(http1=False, http2=True) as client:
        for i in range(2):
            assert client.get(f"{url}/h2/httpx{i}", headers=[("X-M", "a"), ("X-M", "b")]).is_success
        assert client.get(f"{url}/gzip/h2").is_success
    return 5


def _import(cli, pcap: Path, out: Path, *args: object) -> list[dict]:  # noqa: ANN001
    result = cli("import", pcap, "--out", out, *args)
    assert result.exit_code == 0, result.output
    return read_rows(out)


def read_rows(path: Path) -> list[dict]:
    from shadowtape.schema import batch_to_rows, iter_batches

    return [row for batch in iter_batches(path) for row in batch_to_rows(batch)]


@pytest.fixture(scope="module")
def plain_capture(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    need_tools("dumpcap", "tshark", "curl")
    tmp = tmp_path_factory.mktemp("packets")
    with http1_server() as h1, h2_server() as h2:
        with capturing(tmp / "traffic.pcapng", h1.port, h2.port) as cap:
            n1 = _http1_traffic(h1)
            n2 = _h2_traffic(h2)
            cap.stop()
        yield cap.path, h1, h2, n1 + n2


def _expected_response(ex: Exchanged, method: str) -> tuple[list, bytes]:
    sent = ex.sent
    headers = list(sent.headers)
    body = b"" if method == "HEAD" or sent.status == 204 else sent.body
    coding = [v for k, v in headers if k.lower() == "content-encoding"]
    if coding and body:
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError):
            return headers, body
        headers = headers_for_decoded_body(headers, len(body))
    return headers, body


def _check_headers(recorded: list, expected: list) -> None:
    assert [k for k, _ in recorded] == [k for k, _ in expected]
    for (name, got), (_, want) in zip(recorded, expected, strict=True):
        if name.lower() in CREDENTIAL_HEADERS:
            assert LOGIN_SECRET not in got and BEARER_SECRET not in got
            assert any(is_token(part.split("=", 1)[-1].split(";")[0].strip().split(" ")[-1])
                       for part in got.split(";")), (name, got)  # fmt: skip
        else:
            assert got == want, name


def _check_row(row: dict, ex: Exchanged, server: Server, h2: bool) -> None:
    seen = ex.seen
    if isinstance(seen, Seen):
        method, target, headers, body = seen.method, seen.target, seen.headers, seen.body
    else:
        assert isinstance(seen, H2Seen)
        pseudo = dict(seen.headers)
        method, target, body = pseudo[":method"], pseudo[":path"], seen.body
        headers = [(k, v) for k, v in seen.headers if not k.startswith(":")]
    assert row["method"] == method
    assert row["scheme"] == server.scheme
    authority = dict((k.lower(), v) for k, v in headers).get("host") or dict(seen.headers).get(
        ":authority", ""
    )
    host, _, port = authority.partition(":")
    assert row["host"] == host
    assert row["port"] == (int(port) if port else server.port)
    path, _, query = target.partition("?")
    assert row["path"] == path
    # the target as the request line (or :path) carried it, and where the packets went
    assert row["request_target"] == target
    assert row["server_address"] == f"127.0.0.1:{server.port}"
    recorded_query = row["query"]
    assert [k for k, _ in recorded_query] == [k for k, _ in parse_qsl(query)]
    assert row["http_version"] == ("HTTP/2.0" if h2 else "HTTP/1.1")
    _check_headers(row["request_headers"], headers)
    assert row["request_body"] == body
    assert row["request_body_size"] == len(body)
    assert row["status"] == ex.sent.status
    assert row["reason"] == ex.sent.reason
    resp_headers, resp_body = _expected_response(ex, method)
    _check_headers(row["response_headers"], resp_headers)
    assert row["response_body"] == resp_body
    # a body whose Content-Encoding does not decode is kept as sent, and says so
    undecodable = any(k.lower() == "content-encoding" for k, _ in resp_headers)
    assert row["response_body_undecodable"] is undecodable
    assert row["request_body_undecodable"] is False
    assert row["error"] is None
    times = [row[k] for k in ("started_at", "request_sent_at", "response_started_at",
                              "response_ended_at")]  # fmt: skip
    assert all(t is not None for t in times)
    assert times == sorted(times), times


def test_every_exchange_field_matches_what_was_sent_and_received(
    plain_capture, cli, tmp_path: Path, bytes_of
) -> None:  # noqa: ANN001
    pcap, h1, h2, sent = plain_capture
    rows = _import(cli, pcap, tmp_path / "raw", "--port", h1.port, "--port", h2.port)
    assert len(rows) == sent == len(h1.exchanges) + len(h2.exchanges)
    by_target = {**h1.by_target(), **h2.by_target()}
    for row in rows:
        target = row["path"] + ("?" + "&".join(f"{k}={v}" for k, v in row["query"])
                                if row["query"] else "")  # fmt: skip
        h2_row = row["http_version"] == "HTTP/2.0"
        server = h2 if h2_row else h1
        ex = by_target.get(target) or by_target[_raw_target(row, server)]
        _check_row(row, ex, server, h2_row)
    on_disk = bytes_of(tmp_path / "raw")
    assert LOGIN_SECRET.encode() not in on_disk and BEARER_SECRET.encode() not in on_disk


def _raw_target(row: dict, server: Server) -> str:
    """The target as sent, for queries that do not survive a naive re-join."""
    for target in server.by_target():
        if target.partition("?")[0] == row["path"] and all(
            f"{k}=" in target for k, _ in row["query"]
        ):
            return target
    raise AssertionError(f"no request {row['path']} {row['query']} at the server")


def test_sessions_keep_alive_pipelining_and_counters(plain_capture, cli, tmp_path: Path) -> None:  # noqa: ANN001
    pcap, h1, h2, sent = plain_capture
    rows = _import(cli, pcap, tmp_path / "raw", "--port", h1.port, "--port", h2.port)
    pipelined_rows = [r for r in rows if r["path"] in ("/p1", "/p2", "/p3")]
    assert [r["path"] for r in pipelined_rows] == ["/p1", "/p2", "/p3"]
    assert pipelined_rows[2]["request_headers"] == [("Host", "x"), ("X-Last", "yes")]
    assert [r["response_body"] for r in pipelined_rows] == [b"ok /p1", b"ok /p2", b"ok /p3"]
    # one session per client (the session cookie names its own), seq in request order
    sid_rows = [r for r in rows if any(k == "Cookie" for k, _ in r["request_headers"])]
    assert len({r["session_id"] for r in sid_rows}) == 1
    others = [r for r in rows if r not in sid_rows]
    by_session: dict[str, list[int]] = {}
    for r in others:
        by_session.setdefault(r["session_id"], []).append(r["seq"])
    for seqs in by_session.values():
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    from shadowtape.capture.inspection import inspect_dataset

    report = inspect_dataset(tmp_path / "raw")
    p = report.packet_counters
    assert p["requests"] == sent and p["responses"] == sent
    assert p["requests_without_response"] == p["responses_without_request"] == 0
    assert p["streams_unreassembled"] == 0
    # written + dropped = seen
    c = report.capture_counters
    written = c["written"] + c["skipped_filter"] + c["skipped_sample"]
    dropped = c["dropped_conversion_error"] + p["responses_without_request"]
    assert written + dropped == sent


def test_same_packets_and_key_give_the_same_rows(plain_capture, cli, tmp_path: Path) -> None:  # noqa: ANN001
    pcap, h1, h2, _ = plain_capture
    ports = ("--port", h1.port, "--port", h2.port)
    first = _import(cli, pcap, tmp_path / "a", *ports)
    second = _import(cli, pcap, tmp_path / "b", *ports, "--workers", 1)
    assert first == second
    again = cli("import", pcap, "--out", tmp_path / "a", *ports)
    assert again.exit_code == 2 and "already imported" in again.output


def test_bodies_over_max_body_are_truncated_and_flagged(plain_capture, cli, tmp_path: Path) -> None:  # noqa: ANN001
    pcap, h1, h2, _ = plain_capture
    rows = _import(cli, pcap, tmp_path / "raw", "--port", h1.port, "--port", h2.port,
                   "--max-body", 1000)  # fmt: skip
    big = next(r for r in rows if r["path"] == "/big")
    assert big["response_body"] == BIG[:1000]
    assert big["response_body_truncated"] and big["response_body_size"] == len(BIG)
    upload = next(r for r in rows if r["path"] == "/upload")
    assert upload["request_body_truncated"] and upload["request_body_size"] == len(BIG)


def test_h2c_needs_its_port_and_says_so(plain_capture, cli, tmp_path: Path) -> None:  # noqa: ANN001
    pcap, h1, h2, _ = plain_capture
    rows = _import(cli, pcap, tmp_path / "raw")
    # HTTP/1.1 is found on any port; h2c with prior knowledge only where it is named
    assert {r["http_version"] for r in rows} == {"HTTP/1.1"}
    assert len(rows) == len(h1.exchanges)


def test_files_cut_at_packet_boundaries_give_the_same_exchanges(
    plain_capture, cli, tmp_path: Path
) -> None:  # noqa: ANN001
    """A capture cut into many files (as a ring or `tcpdump -C` cuts it): exchanges split
    between files are rejoined, none lost, none doubled."""
    need_tools("editcap")
    pcap, h1, h2, sent = plain_capture
    whole = _import(cli, pcap, tmp_path / "whole", "--port", h1.port)
    parts = tmp_path / "parts"
    parts.mkdir()
    subprocess.run(["editcap", "-c", "7", str(pcap), str(parts / "cut.pcapng")], check=True)
    files = sorted(parts.iterdir())
    assert len(files) > 10
    result = cli("import", *files, "--out", tmp_path / "cut", "--port", h1.port)
    assert result.exit_code == 0, result.output
    cut = read_rows(tmp_path / "cut")

    def content(rows: list[dict]) -> list[tuple]:
        keep = ("method", "path", "query", "request_headers", "request_body", "status",
                "response_headers", "response_body", "started_at", "response_ended_at")  # fmt: skip
        return sorted(tuple(repr(r[k]) for k in keep) for r in rows)

    assert content(cut) == content(whole)
    from shadowtape.capture.inspection import inspect_dataset

    p = inspect_dataset(tmp_path / "cut").packet_counters
    assert p["exchanges_rejoined"] > 0
    assert p["requests_without_response"] == 0 and p["responses_without_request"] == 0


@pytest.fixture(scope="module")
def tls_capture(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    need_tools("dumpcap", "tshark", "curl")
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(tmp)
    keylog = tmp / "keys.log"
    with (
        http1_server(server_tls(cert, key, keylog, ["http/1.1"])) as h1,
        h2_server(server_tls(cert, key, keylog, ["h2"])) as h2,
        capturing(tmp / "tls.pcapng", h1.port, h2.port) as cap,
    ):
        with httpx.Client(verify=str(cert)) as client:
            client.get(
                f"{h1.url}/items?i=1",
                headers=[("Authorization", f"Bearer {BEARER_SECRET}"), ("X-Multi", "1")],
            )
            client.post(f"{h1.url}/echo?i=2", content=b"secret-free body")
            client.get(f"{h1.url}/chunked-gzip?i=3")
        done = subprocess.run(
            ["curl", "-s", "--cacert", str(cert), "-o", "/dev/null", f"{h1.url}/curl?i=4",
             "--next", "--http2", "--cacert", str(cert), "-o", "/dev/null", f"{h2.url}/h2/tls"],
            capture_output=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        cap.stop()
    yield cap.path, keylog, h1, h2


def test_tls_is_read_with_a_key_log(tls_capture, cli, tmp_path: Path, bytes_of) -> None:  # noqa: ANN001
    pcap, keylog, h1, h2 = tls_capture
    rows = _import(cli, pcap, tmp_path / "raw", "--tls-keylog", keylog)
    assert len(rows) == len(h1.exchanges) + len(h2.exchanges) == 5
    targets = {**h1.by_target(), **h2.by_target()}
    for row in rows:
        h2_row = row["http_version"] == "HTTP/2.0"
        server = h2 if h2_row else h1
        target = row["path"] + ("?" + "&".join(f"{k}={v}" for k, v in row["query"])
                                if row["query"] else "")  # fmt: skip
        _check_row(row, targets[target], server, h2_row)
    assert BEARER_SECRET.encode() not in bytes_of(tmp_path / "raw")


def test_tls_without_a_key_log_says_what_is_missing(tls_capture, cli, tmp_path: Path) -> None:  # noqa: ANN001
    pcap, *_ = tls_capture
    result = cli("import", pcap, "--out", tmp_path / "raw")
    assert result.exit_code == 2
    assert "no HTTP found" in result.output and "--tls-keylog" in result.output
    assert not (tmp_path / "raw").exists() or not list((tmp_path / "raw").iterdir())


def test_matches_the_addon_field_by_field(start_capture, upstream, cli, tmp_path: Path) -> None:  # noqa: ANN001
    """The same traffic recorded twice: by the addon in path, and from the packets between the
    proxy and the upstream. Every field but ids, sessions and timings agrees."""
    need_tools("dumpcap", "tshark")
    proxy_out = tmp_path / "addon"
    with capturing(tmp_path / "upstream.pcapng", upstream.port) as cap:
        proc = start_capture(out=proxy_out)
        with httpx.Client() as client:
            dup = [("X-Multi", "1"), ("X-Multi", "2")]
            client.get(f"{proc.url}/items?b=2&a=1&a=3", headers=dup)
            client.post(f"{proc.url}/items", content=b'{"n": 1}')
            client.get(f"{proc.url}/gzip")
            client.get(f"{proc.url}/binary")
            client.get(f"{proc.url}/login")
            client.get(f"{proc.url}/big", headers={"Cookie": "sid=abc"})
        rc, _, err = proc.stop()
        assert rc == 0, err
        cap.stop()
    addon = sorted(read_rows(proxy_out), key=lambda r: r["started_at"])
    packets = sorted(_import(cli, cap.path, tmp_path / "pkt"), key=lambda r: r["started_at"])
    assert len(addon) == len(packets) == 6
    same = ("method", "scheme", "host", "port", "server_address", "path", "query",
            "request_target", "http_version", "request_headers", "request_body",
            "request_body_truncated", "request_body_size", "request_body_undecodable", "status",
            "reason", "response_headers", "response_body", "response_body_truncated",
            "response_body_size", "response_body_undecodable", "error", "seq")  # fmt: skip
    for a, p in zip(addon, packets, strict=True):
        for name in same:
            assert a[name] == p[name], (a["path"], name, a[name], p[name])
    assert shutil.which("tshark")
