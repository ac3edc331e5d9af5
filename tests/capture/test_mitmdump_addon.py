"""The addon inside a user's own mitmdump, and mitmproxy's own HAR and flow files imported.

One mitmdump run records three ways at once (our addon, mitmproxy's savehar, mitmproxy's
flow writer), so the imports can be checked against the live capture of the same traffic.
"""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx

import shadowtape.capture.addon as addon_module

ADDON = Path(addon_module.__file__)
SAME_FIELDS = ("method", "host", "port", "path", "query", "status", "reason", "request_body")


def _mitmdump() -> list[str]:
    exe = Path(sys.executable).parent / "mitmdump"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from mitmproxy.tools.main import mitmdump; mitmdump()"]


def test_addon_in_mitmdump_and_imports_of_its_har_and_flows_agree(
    upstream, tmp_path, capture_env, rows_of, bytes_of, shadowtape_cmd
):
    raw, har, flows = tmp_path / "raw", tmp_path / "traffic.har", tmp_path / "traffic.mitm"
    proc = subprocess.Popen(
        [
            *_mitmdump(),
            "-s",
            str(ADDON),
            "--mode",
            f"reverse:{upstream.url}@127.0.0.1:0",
            "--set",
            "connection_strategy=lazy",
            "--set",
            f"shadowtape_out={raw}",
            "--set",
            "shadowtape_session_key=cookie:sid",
            "--set",
            f"hardump={har}",
            "-w",
            str(flows),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=capture_env,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in iter(proc.stdout.readline, ""):
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    port = None
    log = []
    while port is None:
        line = lines.get(timeout=60)
        log.append(line)
        m = re.search(r"listening at 127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
        assert proc.poll() is None, "".join(log)
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
