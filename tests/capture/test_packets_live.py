"""`shadowtape capture --interface lo --port N`: a live ring of packet files, dissected as it
goes, every exchange recorded across file boundaries, the ring private and removed."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from packet_testkit import BIG, http1_server, need_tools  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def _start(cmd: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], Path]:
    # its own process group, so a Ctrl-C can be sent to the group as a terminal does
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("capturing on"):
        err = proc.stderr.read() if proc.stderr else ""
        proc.kill()
        if "cannot capture" in err:
            pytest.skip(f"packet capture is not permitted here: {err.strip()}")
        pytest.fail(f"capture did not start: {line} {err}")
    ring = Path(re.search(r"packets in (\S+)", line).group(1))  # type: ignore[union-attr]
    return proc, ring


def test_live_ring_records_everything_across_files(
    tmp_path: Path, capture_env: dict[str, str], shadowtape_cmd: list[str], rows_of
) -> None:  # noqa: ANN001
    need_tools("dumpcap", "tshark", "editcap")
    out = tmp_path / "raw"
    with http1_server() as server:
        proc, ring = _start(
            [*shadowtape_cmd, "capture", "--interface", "lo", "--port", str(server.port),
             "--out", str(out), "--ring-file-seconds", "1", "--roll-interval", "1",
             "--nice", "0", "--ring-dir", str(tmp_path / "rings")],
            capture_env,
        )  # fmt: skip
        modes: list[int] = []

        def watch() -> None:
            while proc.poll() is None:
                for f in ring.glob("*.pcapng"):
                    with contextlib.suppress(FileNotFoundError):
                        modes.append(stat.S_IMODE(f.stat().st_mode))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        assert stat.S_IMODE(ring.stat().st_mode) == 0o700
        deadline = time.monotonic() + 3.5
        sent = 0
        with httpx.Client() as a, httpx.Client() as b:
            while time.monotonic() < deadline:
                a.get(f"{server.url}/items?n={sent}", headers={"Cookie": "sid=SECRETlive1"})
                b.post(f"{server.url}/echo?n={sent}", content=b"x" * 300)
                if sent % 10 == 0:
                    a.get(f"{server.url}/big?n={sent}")
                    b.get(f"{server.url}/slow?n={sent}&s=0.4")
                sent += 1
        time.sleep(0.5)
        # Ctrl-C at a terminal: SIGINT to every process of the group, dumpcap's and
        # tshark's included if they were in it (they are not: the last file is dissected)
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr
    assert "captured" in stdout
    assert not ring.exists(), "the ring directory must be removed"
    assert modes and set(modes) == {0o600}, modes
    rows = rows_of(out)
    assert len(rows) == len(server.exchanges)
    by_target = server.by_target()
    for row in rows:
        target = row["path"] + "?" + "&".join(f"{k}={v}" for k, v in row["query"])
        ex = by_target[target]
        assert row["status"] == ex.sent.status
        assert row["response_body"] == ex.sent.body
        assert row["request_body"] == ex.seen.body
    assert any(r["response_body"] == BIG for r in rows)
    from shadowtape.capture.inspection import inspect_dataset

    report = inspect_dataset(out)
    p = report.packet_counters
    assert p["inputs"] >= 3
    assert p["requests"] == len(rows)
    assert p["requests_without_response"] == 0 and p["responses_without_request"] == 0
    assert p["packets_dropped_kernel"] == 0
    assert "packets" in stdout and "dropped by the kernel 0" in stdout
    assert b"SECRETlive1" not in b"".join(f.read_bytes() for f in out.iterdir())


def test_an_interface_that_does_not_exist_is_one_line(
    tmp_path: Path, capture_env: dict[str, str], shadowtape_cmd: list[str]
) -> None:
    need_tools("dumpcap", "tshark")
    done = subprocess.run(
        [*shadowtape_cmd, "capture", "--interface", "nosuch0", "--port", "80",
         "--out", str(tmp_path / "raw")],
        capture_output=True, text=True, env=capture_env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "dumpcap cannot capture on nosuch0" in lines[0]
    assert "Traceback" not in done.stderr
    assert not list((tmp_path / "raw").glob("*.parquet"))


def test_off_path_options_are_checked(cli, tmp_path: Path) -> None:  # noqa: ANN001
    both = cli("capture", "--upstream", "http://127.0.0.1:1", "--interface", "lo",
               "--out", tmp_path)  # fmt: skip
    assert both.exit_code == 2 and "--upstream URL" in both.output
    neither = cli("capture", "--out", tmp_path)
    assert neither.exit_code == 2
    no_port = cli("capture", "--interface", "lo", "--out", tmp_path)
    assert no_port.exit_code == 2 and "--port" in no_port.output
    listen = cli("capture", "--interface", "lo", "--port", 80, "--listen", "1.2.3.4:5",
                 "--out", tmp_path)  # fmt: skip
    assert listen.exit_code == 2 and "--listen does not apply with --interface" in listen.output
    port = cli("capture", "--upstream", "http://127.0.0.1:1", "--port", 80, "--out", tmp_path)
    assert port.exit_code == 2 and "--port does not apply with --upstream" in port.output
    assert not list(tmp_path.glob("*.parquet"))
