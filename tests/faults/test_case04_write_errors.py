"""Case 4: a write error is one line (exit 1) in every command that writes, never a traceback,
and leaves no file behind: a read-only file system, a full one, an output path under a file.
A missing parent directory is created."""

from __future__ import annotations

import shutil
from pathlib import Path

import faultkit
import pytest

COMMANDS = ["sanitize", "replay", "import", "diff", "report", "correlate", "policy-init"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("inputs")
    return {
        "raw": faultkit.raw_dataset(base / "raw"),
        "clean": faultkit.sanitized_dataset(base / "clean"),
        "results": faultkit.results_dataset(base / "results"),
        "har": faultkit.har_file(base / "in.har"),
    }


def _args(command: str, inputs: dict[str, Path], out: Path, staging: str, tmp: Path) -> list:
    results = tmp / "results"
    if not results.exists():
        shutil.copytree(inputs["results"], results)
    return {
        "sanitize": ["sanitize", inputs["raw"], out],
        "replay": ["replay", inputs["clean"], "--target", staging, "--out", out, "--speed", "max"],
        "import": ["import", inputs["har"], "--out", out],
        "diff": ["diff", results, "--out", out],
        "report": ["report", results, "--html", out / "report.html"],
        "correlate": ["correlate", inputs["clean"], "--out", out / "rules.yaml"],
        "policy-init": ["policy", "init", out / "policy.yaml"],
    }[command]


def _files(root: Path, keep: tuple[str, ...] = ()) -> list[str]:
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name not in keep
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_read_only_file_system_is_one_line(command, inputs, readonly_fs, staging, tmp_path):
    out = readonly_fs / "out"
    result = faultkit.run_inprocess(*_args(command, inputs, out, staging.url, tmp_path))
    assert result.exit_code == 1, result.output
    faultkit.assert_one_line(result.stderr, "shadowtape: error:", "Read-only file system")
    assert _files(readonly_fs) == []


@pytest.mark.parametrize("command", COMMANDS)
def test_full_disk_is_one_line_and_leaves_nothing(command, inputs, tiny_fs, staging, tmp_path):
    out = tiny_fs / "out"
    faultkit.fill(tiny_fs)
    result = faultkit.run_inprocess(*_args(command, inputs, out, staging.url, tmp_path))
    assert result.exit_code == 1, result.output
    faultkit.assert_one_line(result.stderr, "shadowtape: error:", "No space left on device")
    assert _files(tiny_fs, keep=("filler",)) == []


@pytest.mark.parametrize("command", COMMANDS)
def test_output_under_a_file_is_one_line(command, inputs, staging, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = blocker / "out"
    result = faultkit.run_inprocess(*_args(command, inputs, out, staging.url, tmp_path))
    assert result.exit_code == 1, result.output
    faultkit.assert_one_line(result.stderr, "shadowtape: error:", "Not a directory")
    assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_parent_directories_are_created(command, inputs, staging, tmp_path):
    out = tmp_path / "missing" / "deeper" / "out"
    result = faultkit.run_inprocess(*_args(command, inputs, out, staging.url, tmp_path))
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert out.exists()


@pytest.mark.parametrize("where", ["read-only", "under-a-file"])
def test_capture_refuses_an_unwritable_output_at_startup(where, tmp_path, request):
    if where == "read-only":
        out = request.getfixturevalue("readonly_fs") / "raw"
    else:
        (tmp_path / "a-file").write_text("x")
        out = tmp_path / "a-file" / "raw"
    result = faultkit.run_inprocess(
        "capture", "--upstream", "http://127.0.0.1:9", "--listen", "127.0.0.1:0", "--out", out
    )
    assert result.exit_code == 1, result.output
    faultkit.assert_one_line(result.stderr, "cannot create the output directory", "--out")
    assert "listening on" not in result.stdout
