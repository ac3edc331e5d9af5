"""The addon inside a user's own mitmdump, and mitmproxy's own HAR and flow files imported.

One mitmdump run records three ways at once (our addon, mitmproxy's savehar, mitmproxy's
flow writer), so the imports can be checked against the live capture of the same traffic.
"""

from __future__ import annotations

import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

import shadowtape.capture.addon as addon_module

ADDON = Path(addon_module.__file__)
SAME_FIELDS = ("method", "host", "port", "path", "query", "status", "reason", "request_body")


def _mitmdump() -> list[str]:
    exe = Path(sys.executable).parent / "mitmdump"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from mitmproxy.tools.main import mitmdump; mitmdump()"]


def _start_mitmdump(
    upstream_url: str, raw: Path, har: Path, flows: Path, env: dict[str, str], *options: str
) -> tuple[subprocess.Popen[str], int]:
    """mitmdump recording three ways at once: our addon, savehar and the flow writer."""
    sets = ["connection_strategy=lazy", f"shadowtape_out={raw}", f"hardump={har}", *options]
    proc = subprocess.Popen(
        [*_mitmdump(), "-s", str(ADDON), "--mode", f"reverse:{upstream_url}@127.0.0.1:0"]
        + [arg for s in sets for arg in ("--set", s)]
        + ["-w", str(flows)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",  # mitmdump echoes request lines, odd bytes included
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in iter(proc.stdout.readline, ""):
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    log = []
    while True:
        line = lines.get(timeout=60)
        log.append(line)
        m = re.search(r"listening at 127\.0\.0\.1:(\d+)", line)
        if m:
            return proc, int(m.group(1))
        assert proc.poll() is None, "".join(log)


def _import(source: Path, out: Path, env: dict[str, str], cmd: list[str], *extra: str) -> None:
    done = subprocess.run(
        [*cmd, "import", str(source), "--out", str(out), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_addon_in_mitmdump_and_imports_of_its_har_and_flows_agree(
    upstream, tmp_path, capture_env, rows_of, bytes_of, shadowtape_cmd
):
    raw, har, flows = tmp_path / "raw", tmp_path / "traffic.har", tmp_path / "traffic.mitm"
    proc, port = _start_mitmdump(
        upstream.url, raw, har, flows, capture_env, "shadowtape_session_key=cookie:sid"
    )
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(timeout=30.0) as c:
        c.post(f"{url}/login")
        c.get(f"{url}/profile?tab=1&tab=2", headers={"Cookie": "sid=SECRETlogin0004"})
        c.put(f"{url}/profile", content=b"\x00\x01binary", headers={"Cookie": "sid=other"})
        c.get(f"{url}/binary")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0

    live = sorted(rows_of(raw), key=lambda r: r["started_at"])
    assert [r["path"] for r in live] == ["/login", "/profile", "/profile", "/binary"]
    assert b"SECRETlogin0004" not in bytes_of(raw)

    for source in (har, flows):
        out = tmp_path / f"import-{source.suffix[1:]}"
        done = subprocess.run(
            [
                *shadowtape_cmd,
                "import",
                str(source),
                "--out",
                str(out),
                "--session-key",
                "cookie:sid",
            ],
            capture_output=True,
            text=True,
            env=capture_env,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert "imported 4 exchanges" in done.stdout
        imported = sorted(rows_of(out), key=lambda r: r["started_at"])
        for a, b in zip(live, imported, strict=True):
            for name in SAME_FIELDS:
                assert a[name] == b[name], (source.name, name)
            assert a["response_body"] == b["response_body"]
            # HAR keeps times as ISO text: equal up to the float-to-µs rounding.
            assert abs(a["started_at"] - b["started_at"]) <= 1
            # Same key, same tokens: a credential recorded live and imported later matches.
            assert [h for h in a["request_headers"] if h[0] == "Cookie"] == [
                h for h in b["request_headers"] if h[0] == "Cookie"
            ]
        if source == flows:
            assert [r["session_id"] for r in imported] == [r["session_id"] for r in live]
        assert b"SECRETlogin0004" not in bytes_of(out)


def test_http2_authority_odd_bytes_and_undecodable_bodies_agree_live_and_imported(
    upstream, tmp_path, capture_env, rows_of, shadowtape_cmd, traffic_fields
):
    """keep_host_header leaves the client's Host and `:authority` in place, so the name the
    client asked for differs from the address mitmproxy connected to: host is the name,
    server_address the address. The same traffic through savehar and the flow writer imports
    to the same rows, field for field."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is needed for an HTTP/2 client")
    raw, har, flows = tmp_path / "raw", tmp_path / "traffic.har", tmp_path / "traffic.mitm"
    proc, port = _start_mitmdump(
        upstream.url, raw, har, flows, capture_env, "keep_host_header=true"
    )
    h2 = subprocess.run(
        [curl, "-sk", "--http2", "-o", "/dev/null", "-w", "%{http_version}"]
        + [f"https://localhost:{port}/h2?x=%7C|&bare"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert h2.stdout == "2", h2.stderr
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(
            b"GET /latin?q=Jos\xe9 HTTP/1.1\r\nHost: shop.example\r\nX-Name: Jos\xe9\r\n"
            b"Connection: close\r\n\r\n"
        )
        assert s.recv(100).startswith(b"HTTP/1.1 200")
    with httpx.Client(timeout=30.0) as c:
        assert c.get(f"http://127.0.0.1:{port}/gzip").content == b"zipped " * 50
        with c.stream("GET", f"http://127.0.0.1:{port}/corrupt-gzip") as r:
            corrupt_sent = b"".join(r.iter_raw())
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0

    live = sorted(rows_of(raw), key=lambda r: r["started_at"])
    h2_row, latin, gz, corrupt = live
    assert (h2_row["http_version"], h2_row["host"], h2_row["port"]) == (
        "HTTP/2.0",
        "localhost",
        port,
    )
    assert h2_row["server_address"] == f"127.0.0.1:{upstream.port}"
    assert h2_row["request_target"] == "/h2?x=%7C|&bare"
    assert (latin["host"], latin["port"]) == ("shop.example", 80)
    assert ("X-Name", "Jos\udce9") in latin["request_headers"]
    assert gz["response_body"] == b"zipped " * 50 and not gz["response_body_undecodable"]
    assert corrupt["response_body"] == corrupt_sent and corrupt["response_body_undecodable"]
    assert ("Content-Encoding", "gzip") in corrupt["response_headers"]
    for source in (har, flows):
        out = tmp_path / f"import-{source.suffix[1:]}"
        _import(source, out, capture_env, shadowtape_cmd)
        imported = sorted(rows_of(out), key=lambda r: r["started_at"])
        assert len(imported) == len(live)
        for a, b in zip(live, imported, strict=True):
            differ = {k: (a[k], b[k]) for k in traffic_fields if a[k] != b[k]}
            if source == har:  # serverIPAddress holds no port
                ip = a["server_address"].rsplit(":", 1)[0]
                assert differ.pop("server_address") == (a["server_address"], ip)
            assert differ == {}, (source.name, a["path"])
