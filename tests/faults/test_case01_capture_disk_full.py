"""Case 1: capture on a full disk counts every exchange it could not write (cause disk_full),
keeps going when space returns (a new file), never throws an open file's rows away uncounted,
and exits non-zero; the summary, `inspect` and the file metadata all say
written + dropped = seen."""

from __future__ import annotations

import json
import re
import time

import faultkit
import httpx
import pytest

BODY = 20_000  # random bytes: zstd cannot shrink them, so the disk fills predictably
PHASE = 25


def _send(url: str, prefix: str) -> None:
    with httpx.Client(timeout=30) as client:
        for i in range(PHASE):
            assert client.get(f"{url}/{prefix}/{i}?size={BODY}").status_code == 200


def _paths(out) -> list[str]:
    return [r["path"] for r in faultkit.rows_on_disk(out)]


def _summary_counts(stdout: str) -> dict[str, int]:
    m = re.search(r"seen (\d+) = written (\d+) \+ dropped (\d+) \+ pending (\d+)", stdout)
    assert m, stdout
    return dict(zip(("seen", "written", "dropped", "pending"), map(int, m.groups()), strict=True))


@pytest.mark.skipif(not faultkit.MOUNT_WORKS, reason=faultkit.NO_MOUNT)
def test_full_disk_is_counted_resumed_and_fails_the_run(tmp_path, env):
    with faultkit.upstream_server() as upstream, faultkit.tmpfs(tmp_path / "fs", "4m") as fs:
        out = fs / "raw"
        cap = faultkit.start_capture(
            upstream, out, env, "--roll-interval", "0.2", "--max-body", BODY * 2
        )
        _send(cap.url, "before")
        faultkit.wait_for(lambda: len(_paths(out)) == PHASE, 30, "the first files")
        filler = faultkit.fill(fs)
        _send(cap.url, "full")
        time.sleep(1.5)  # several roll intervals: the writer tries, fails, counts
        filler.unlink()
        _send(cap.url, "after")
        faultkit.wait_for(
            lambda: sum(p.startswith("/after/") for p in _paths(out)) == PHASE,
            30,
            "writing to resume once space returned",
        )
        rc, stdout, stderr = cap.stop()
        paths = _paths(out)
        inspect = faultkit.run_inprocess("inspect", out, "--json")
        last_meta = faultkit.schema.read_files(out)[-1].metadata

    assert rc == 1, (stdout, stderr)
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("shadowtape: error: capture lost 25 of 75 exchanges"), stderr
    assert "Traceback" not in stderr
    counts = _summary_counts(stdout)
    assert counts == {"seen": 75, "written": 50, "dropped": 25, "pending": 0}
    assert "25 (disk full)" in stdout
    assert len(paths) == 50 and not any(p.startswith("/full/") for p in paths)
    assert {p.split("/")[1] for p in paths} == {"before", "after"}

    c = json.loads(inspect.stdout)["capture_counters"]
    assert (c["seen"], c["written"], c["dropped_disk_full"], c["pending"]) == (75, 50, 25, 0)
    assert last_meta["shadowtape.capture.dropped_disk_full"] == "25"
    assert last_meta["shadowtape.capture.written"] == "50"


def test_file_size_limit_fallback_counts_the_lost_file(tmp_path, env):
    """Where no tmpfs can be mounted (CI without CAP_SYS_ADMIN), RLIMIT_FSIZE makes the same
    fault: a file that grows past the limit fails (EFBIG) and its rows must be counted."""
    out = tmp_path / "raw"
    with faultkit.upstream_server() as upstream:
        cap = faultkit.start_capture(
            upstream,
            out,
            env,
            "--roll-interval",
            "0.5",
            "--max-body",
            BODY * 2,
            preexec_fn=faultkit.file_size_limit(BODY * 12),
        )
        with httpx.Client(timeout=30) as client:
            assert client.get(f"{cap.url}/small/0?size=10").status_code == 200
            faultkit.wait_for(lambda: len(_paths(out)) == 1, 30, "a first small file")
            for i in range(PHASE):  # one roll interval of these is more than a file may hold
                assert client.get(f"{cap.url}/big/{i}?size={BODY}").status_code == 200
            time.sleep(1.2)
            assert client.get(f"{cap.url}/small/1?size=10").status_code == 200
        faultkit.wait_for(lambda: "/small/1" in _paths(out), 30, "a new file after the failure")
        rc, stdout, stderr = cap.stop()
    counts = _summary_counts(stdout)
    assert rc == 1 and "Traceback" not in stderr
    assert counts["seen"] == PHASE + 2 and counts["pending"] == 0
    assert counts["written"] + counts["dropped"] == counts["seen"]
    assert counts["written"] == len(_paths(out)) and counts["dropped"] > 0
    assert "(write error)" in stdout and "File too large" in stderr
