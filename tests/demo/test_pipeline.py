"""The demo runner's own logic: its workdir rules, its key, and that every command it prints
is one the real CLI accepts (so the printed tutorial cannot rot)."""

import os
import stat
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from shadowtape.cli import main
from shadowtape.demo.pipeline import MARKER, DemoPaths, Urls, prepare_workdir, steps, walkthrough
from shadowtape.errors import InputError


def test_every_printed_shadowtape_command_parses_with_the_real_cli(tmp_path: Path) -> None:
    urls = Urls("http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3")
    paths = DemoPaths(tmp_path)
    prepare_workdir(paths)
    for existing in (paths.raw, paths.clean, paths.results):  # as each step finds them
        existing.mkdir()
    commands = [c for s in steps(paths, urls, 100, 1) for c in s.commands]
    shadowtape = [c for c in commands if c[0] == "shadowtape"]
    assert [c[1] for c in shadowtape] == [
        "capture", "sanitize", "verify", "replay", "diff", "report"
    ]  # fmt: skip
    root = click.Context(main, info_name="shadowtape", **main.context_settings)
    for command in shadowtape:
        cmd = main.get_command(root, command[1])
        assert cmd is not None, command
        # make_context parses and checks every option and argument without running anything.
        cmd.make_context(command[1], list(command[2:]), parent=root)


def test_the_walkthrough_uses_placeholders_not_live_ports() -> None:
    text = " ".join(" ".join(c) for s in walkthrough() for c in s.commands)
    assert "PORT_V1" in text and "PORT_V2" in text and "PORT_PROXY" in text
    assert "--baseline http://127.0.0.1:PORT_BASELINE --baseline-2" in text
    assert "demo-work/raw" in text


def test_a_foreign_non_empty_directory_is_never_touched(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("mine")
    with pytest.raises(InputError, match="not a demo workdir"):
        prepare_workdir(DemoPaths(tmp_path))
    assert (tmp_path / "precious.txt").read_text() == "mine"
    assert not (tmp_path / MARKER).exists()


def test_a_file_is_not_a_workdir(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        prepare_workdir(DemoPaths(target))


def test_a_rerun_clears_old_outputs_and_keeps_the_key(tmp_path: Path) -> None:
    paths = DemoPaths(tmp_path / "w")
    first = prepare_workdir(paths)
    assert "random, made for this workdir" in first
    key = paths.key.read_text()
    assert len(key.strip()) == 64
    assert stat.S_IMODE(os.stat(paths.key).st_mode) == 0o600
    paths.raw.mkdir()
    (paths.raw / "part-1.parquet").write_bytes(b"old")
    paths.html.write_text("old")
    (paths.workdir / "notes.txt").write_text("kept: not an output of the demo")
    second = prepare_workdir(paths)
    assert "reused" in second
    assert paths.key.read_text() == key
    assert not paths.raw.exists() and not paths.html.exists()
    assert (paths.workdir / "notes.txt").exists()


def test_the_cli_refuses_a_foreign_workdir_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("x")
    result = CliRunner().invoke(main, ["--no-config", "demo", "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shadowtape: error: ")
    assert "choose a new or empty --workdir" in lines[0]


def test_too_few_requests_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["--no-config", "demo", "--requests", "3"])
    assert result.exit_code == 2
    assert "--requests" in result.output
