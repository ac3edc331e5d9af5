"""Real faults for the fault tests: small and read-only file systems, a staging that dies or
hangs, datasets to feed every command, and the CLI run in-process or as a process.

Imported by name (tests run with --import-mode=importlib; see conftest.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from manifest_testkit import write_manifest

from shadowtape import schema
from shadowtape.capture.writer import CaptureCounters, ExchangeSink, WriterSettings
from shadowtape.schema import DatasetWriter, Exchange, RollPolicy, uuid7

KEY = "faults-test-key-0123456789abcdef01234567"
T0 = 1_700_000_000_000_000
PROBE = "SHADOWTAPE_TEST_NO_MOUNT"  # set to 1 to exercise the fallbacks of a CI without mount


# --- file systems ----------------------------------------------------------------------------


def _mount_works() -> bool:
    if os.environ.get(PROBE) == "1" or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path(f"/tmp/.shadowtape-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        ok = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
            capture_output=True,
            timeout=10,
        )
        if ok.returncode != 0:
            return False
        subprocess.run(["umount", str(probe)], capture_output=True, timeout=10)
        return True
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


MOUNT_WORKS = _mount_works()
NO_MOUNT = (
    "cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN); the file-size-limit fallback "
    "covers what it can"
)


@contextlib.contextmanager
def tmpfs(path: Path, size: str, *, read_only: bool = False) -> Iterator[Path]:
    """A real small (or read-only) file system at `path`, unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        # Lazy: a process killed mid-write may still hold a file open for a moment.
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(fs: Path, leave: int = 0) -> Path:
    """Fill a file system until at most `leave` bytes are free; returns the filler file."""
    filler = fs / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb") as fh:
        while True:
            free = shutil.disk_usage(fs).free
            if free <= leave:
                break
            try:
                fh.write(chunk[: max(1, min(len(chunk), free - leave))])
                fh.flush()
            except OSError:
                break
    return filler


def file_size_limit(limit: int) -> Callable[[], None]:
    """A preexec_fn: files the child writes stop at `limit` bytes with EFBIG (SIGXFSZ is
    ignored, so the write fails rather than killing the process)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


# --- what was left behind ---------------------------------------------------------------------


def visible_entries(directory: Path) -> list[str]:
    """Names a reader would take as output: everything but hidden names."""
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if not schema.is_hidden(p.name))


def all_entries(directory: Path) -> list[str]:
    if not directory.exists():
        return []
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def assert_one_line(stderr: str, *needles: str) -> str:
    """The failure is one line, the last one (progress notes such as report's "running diff"
    may come before it), and there is no traceback."""
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    failures = [ln for ln in lines if ln.startswith("shadowtape:")]
    assert len(failures) == 1 and lines[-1] == failures[0], f"not one failure line:\n{stderr}"
    for needle in needles:
        assert needle in failures[0], f"{needle!r} not in {failures[0]!r}"
    return failures[0]


# --- datasets ----------------------------------------------------------------------------------


def exchange(
    i: int, *, session: str = "s1", path: str | None = None, body: bytes = b"{}"
) -> Exchange:
    started = T0 + i * 1000
    return Exchange(
        id=uuid7(started, i.to_bytes(10, "big")),
        session_id=session,
        seq=i,
        started_at=started,
        method="GET",
        scheme="http",
        host="api.example.test",
        port=80,
        path=path or f"/items/{i}",
        request_headers=[("Host", "api.example.test"), ("Accept", "application/json")],
        status=200,
        reason="OK",
        response_headers=[("Content-Type", "application/json")],
        response_body=body,
    )


def raw_dataset(directory: Path, rows: int = 20, *, row_group_rows: int = 10_000) -> Path:
    """A raw capture dataset (what `shadowtape capture` writes), counters included."""
    settings = WriterSettings(
        directory,
        "cap-test",
        {schema.META_SANITIZED: "false", "shadowtape.capture_id": "cap-test"},
        roll_seconds=None,
        row_group_rows=row_group_rows,
    )
    sink = ExchangeSink(settings, CaptureCounters())
    sink.write([exchange(i, session=f"s{i % 3}") for i in range(rows)])
    sink.close()
    return directory


def sanitized_dataset(
    directory: Path, rows: int = 20, *, manifest: bool = True, file_rows: int = 1_000_000
) -> Path:
    """A dataset as sanitize leaves it: flagged sanitized, with its manifest."""
    roll = RollPolicy(max_rows=file_rows)
    with DatasetWriter(directory, metadata={schema.META_SANITIZED: "true"}, roll=roll) as w:
        w.write_exchanges([exchange(i, session=f"s{i % 3}") for i in range(rows)])
    if manifest:
        write_manifest(directory)
    return directory


def results_dataset(directory: Path, rows: int = 30, *, drift: bool = True) -> Path:
    """A results dataset (what replay writes) with drift on two JSON paths of each row."""
    records = []
    for i in range(rows):
        ex = exchange(i, body=json.dumps({"id": i, "name": f"n{i}", "price": i}).encode())
        staged = {"id": i, "name": f"n{i}", "price": i}
        if drift:
            staged = {"id": i, "full_name": f"n{i}", "price": str(i)}
        row = {f.name: getattr(ex, f.name) for f in dataclasses.fields(Exchange)}
        row.update(
            run_id="run1",
            replay_id=f"r{i}",
            replay_pass=1,
            outcome="sent",
            target_url="http://127.0.0.1:1",
            sent_at=ex.started_at,
            done_at=ex.started_at + 2000,
            attempts=1,
            retries=0,
            staging_status=200,
            staging_reason="OK",
            staging_headers=[("Content-Type", "application/json")],
            staging_body=json.dumps(staged).encode(),
            substitutions=[],
            response_started_at=ex.started_at + 500,
            response_ended_at=ex.started_at + 1000,
            request_sent_at=ex.started_at + 100,
        )
        records.append(row)
    with DatasetWriter(
        directory, schema.KIND_RESULTS, metadata={schema.META_SANITIZED: "true"}
    ) as w:
        w.write_rows(records)
    return directory


def har_file(path: Path, entries: int = 5) -> Path:
    """A HAR 1.2 file of `entries` GETs answered with a small JSON body."""

    def pairs(**values: str) -> list[dict[str, str]]:
        return [{"name": k.replace("_", "-"), "value": v} for k, v in values.items()]

    json_type = "application/json"
    items = [
        {
            "startedDateTime": f"2024-01-01T00:00:{i % 60:02d}.000Z",
            "time": 5,
            "timings": {"send": 1, "wait": 3, "receive": 1},
            "request": dict(
                method="GET", url=f"http://api.example.test/items/{i}?q={i}",
                httpVersion="HTTP/1.1", headers=pairs(Accept=json_type),
                queryString=pairs(q=str(i)), headersSize=-1, bodySize=0,
            ),
            "response": dict(
                status=200, statusText="OK", httpVersion="HTTP/1.1",
                headers=pairs(Content_Type=json_type), headersSize=-1, bodySize=8,
                content={"size": 8, "mimeType": json_type, "text": '{"ok":1}'},
            ),
        }
        for i in range(entries)
    ]  # fmt: skip
    doc = {"log": {"version": "1.2", "creator": {"name": "test", "version": "1"}, "entries": items}}
    path.write_text(json.dumps(doc))
    return path


# --- a staging that answers, dies or hangs ------------------------------------------------------


@dataclass
class Staging:
    url: str
    received: list[str]
    hang: threading.Event  # set: every request waits (a hung staging)
    dead: threading.Event  # set: open connections are cut, new ones refused
    server: ThreadingHTTPServer

    def die(self) -> None:
        self.dead.set()
        self.server.shutdown()
        self.server.server_close()


def _answer(handler: BaseHTTPRequestHandler, content_type: str, body: bytes) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@contextlib.contextmanager
def staging_server() -> Iterator[Staging]:
    received: list[str] = []
    hang = threading.Event()
    dead = threading.Event()
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if dead.is_set():  # a keep-alive connection of a dead server: cut, no answer
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            received.append(self.path)
            if hang.is_set():
                release.wait(30)
                return
            _answer(self, "application/json", b'{"id": 1}')

    server = _serve(Handler)
    staging = Staging(f"http://127.0.0.1:{server.server_address[1]}", received, hang, dead, server)
    try:
        yield staging
    finally:
        release.set()
        with contextlib.suppress(OSError):
            server.shutdown()
            server.server_close()


# --- running the CLI ------------------------------------------------------------------------------


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SHADOWTAPE_KEY=KEY,
        SHADOWTAPE_NO_CONFIG="1",
        PYTHONUNBUFFERED="1",
        HOME=str(tmp_path / "home"),
    )
    (tmp_path / "home").mkdir(exist_ok=True)
    env.update(extra)
    return env


def run_inprocess(*args: object, env: dict[str, str] | None = None) -> Any:
    """The CLI through click's runner: the same parsing and error lines as the command."""
    from click.testing import CliRunner

    from shadowtape.cli import main

    full = {"SHADOWTAPE_KEY": KEY, "SHADOWTAPE_NO_CONFIG": "1", **(env or {})}
    return CliRunner().invoke(main, [str(a) for a in args], env=full, catch_exceptions=False)


def start(args: Sequence[object], env: dict[str, str], **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "shadowtape", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kw,
    )


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def unique() -> str:
    return uuid.uuid4().hex[:8]


def fuzz_settings(max_examples: int = 40) -> Any:
    """Fuzzing in CI must be repeatable and bounded: a fixed (derandomized) search, no example
    database left in the tree, no per-example deadline (a CLI call's time varies with load).
    SHADOWTAPE_FUZZ_EXAMPLES=N runs a longer, random search by hand."""
    from hypothesis import HealthCheck, settings

    deep = os.environ.get("SHADOWTAPE_FUZZ_EXAMPLES")
    return settings(
        max_examples=int(deep) if deep else max_examples,
        deadline=None,
        database=None,
        derandomize=not deep,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# --- a capture in front of an upstream ------------------------------------------------------


@contextlib.contextmanager
def upstream_server() -> Iterator[str]:
    """Answers GET /anything?size=N with N random (incompressible) bytes."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            size = 16
            if "size=" in self.path:
                size = int(self.path.split("size=")[1].split("&")[0])
            _answer(self, "application/octet-stream", os.urandom(size))

    server = _serve(Handler)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class CaptureRun:
    proc: subprocess.Popen[str]
    url: str
    out: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> tuple[int, str, str]:
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err


def start_capture(
    upstream: str, out: Path, env: dict[str, str], *args: object, **popen: Any
) -> CaptureRun:
    proc = start(
        ["capture", "--upstream", upstream, "--listen", "127.0.0.1:0", "--out", out, *args],
        env,
        **popen,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("listening on "):
            return CaptureRun(proc, line.split()[2], out)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    _, err = proc.communicate(timeout=10)
    pytest.fail(f"capture did not start: {line!r} {err}")


def rows_on_disk(directory: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if not directory.exists():
        return rows
    for batch in schema.iter_batches(directory, columns=["path", "id"]):
        rows.extend(batch.to_pylist())
    return rows
