"""Bad packet input and a missing tshark: one clear line, exit 2 for input and 1 for the
environment, and no dataset left behind that looks whole."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from packet_testkit import capturing, http1_server, need_tools  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def _one_line(result) -> str:  # noqa: ANN001
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def _nothing_written(out: Path) -> None:
    assert not out.exists() or not list(out.glob("*.parquet"))


@pytest.fixture(scope="module")
def small_pcap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("small")
    with http1_server() as server, capturing(tmp / "small.pcapng", server.port) as cap:
        with httpx.Client() as client:
            for i in range(20):
                client.get(f"{server.url}/items?i={i}")
        cap.stop()
    return cap.path


@pytest.fixture(scope="module")
def no_http_pcap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TCP with payload that is not HTTP: an echo server."""
    tmp = tmp_path_factory.mktemp("nohttp")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def echo() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(4096):
                    conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    with capturing(tmp / "nohttp.pcapng", port) as cap:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            for _ in range(5):
                sock.sendall(b"\x00\x01binary protocol\xff")
                sock.recv(4096)
        cap.stop()
    listener.close()
    return cap.path


def test_a_truncated_capture_fails_whole_or_is_read_to_the_cut(
    small_pcap: Path, cli, tmp_path: Path
) -> None:  # noqa: ANN001
    data = small_pcap.read_bytes()
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    result = cli("import", cut, "--out", tmp_path / "raw")
    assert result.exit_code == 2
    line = _one_line(result)
    assert "cut short in the middle of a packet" in line and "--on-error skip" in line
    _nothing_written(tmp_path / "raw")
    skipped = cli("import", cut, "--out", tmp_path / "kept", "--on-error", "skip")
    assert skipped.exit_code == 0, skipped.output
    assert "read up to the cut" in skipped.output
    from shadowtape.capture.inspection import inspect_dataset

    report = inspect_dataset(tmp_path / "kept")
    assert 0 < report.rows < 20


def test_a_capture_without_http_says_so(no_http_pcap: Path, cli, tmp_path: Path) -> None:  # noqa: ANN001
    result = cli("import", no_http_pcap, "--out", tmp_path / "raw")
    assert result.exit_code == 2
    line = _one_line(result)
    assert "no HTTP found" in line and "--port" in line
    _nothing_written(tmp_path / "raw")


@pytest.mark.parametrize(
    ("content", "name", "expect"),
    [
        (b"just some text, not packets\n", "notes.pcap", "not a pcap or pcapng file"),
        (b"", "empty.pcapng", "the file is empty"),
        (b"\xd4\xc3\xb2\xa1\x02\x00", "header.pcap", "cut short"),
    ],
)
def test_files_that_are_not_captures(
    content: bytes, name: str, expect: str, cli, tmp_path: Path
) -> None:  # noqa: ANN001
    need_tools("tshark")
    path = tmp_path / name
    path.write_bytes(content)
    result = cli("import", path, "--out", tmp_path / "raw")
    assert result.exit_code == 2, result.output
    assert expect in _one_line(result)
    _nothing_written(tmp_path / "raw")


def test_tshark_missing_is_the_environment(
    small_pcap: Path, cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    result = cli("import", small_pcap, "--out", tmp_path / "raw")
    assert result.exit_code == 1
    line = _one_line(result)
    assert "tshark not found" in line and "apt-get install tshark" in line
    _nothing_written(tmp_path / "raw")


def test_option_mistakes(small_pcap: Path, cli, tmp_path: Path) -> None:  # noqa: ANN001
    missing = cli("import", small_pcap, "--tls-keylog", tmp_path / "nope.log", "--out", tmp_path)
    assert missing.exit_code == 2 and "--tls-keylog" in _one_line(missing)
    har = tmp_path / "a.har"
    har.write_text(json.dumps({"log": {"version": "1.2", "entries": []}}))
    mixed = cli("import", small_pcap, har, "--out", tmp_path / "raw")
    assert mixed.exit_code == 2 and "import them separately" in _one_line(mixed)
    port = cli("import", har, "--port", 80, "--out", tmp_path / "raw")
    assert port.exit_code == 2 and "packet captures only" in port.output
    _nothing_written(tmp_path / "raw")


def test_the_command_line_prints_one_line_too(
    no_http_pcap: Path, tmp_path: Path, capture_env: dict[str, str], shadowtape_cmd: list[str]
) -> None:
    done = subprocess.run(
        [*shadowtape_cmd, "import", str(no_http_pcap), "--out", str(tmp_path / "raw")],
        capture_output=True, text=True, env=capture_env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("shadowtape: error: ") and done.stderr.count("\n") == 1
