"""Fixtures for the governance tests: the CLI in-process with its own audit log, and the
replay kit's real staging server (tests/replay/replay_testkit.py)."""

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "replay"))
sys.path.insert(0, str(Path(__file__).parent))

from replay_testkit import staging  # noqa: E402, F401

KEY = "governance-test-key-0123456789abcdef"


@pytest.fixture
def audit_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "audit" / "audit.jsonl"
    monkeypatch.setenv("SHADOWTAPE_AUDIT_LOG", str(path))
    monkeypatch.setenv("SHADOWTAPE_KEY", KEY)
    monkeypatch.delenv("SHADOWTAPE_ACTOR", raising=False)
    return path


@pytest.fixture
def cli(audit_log: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """`shadowtape ARGS` in-process; a shadowtape.toml only where a test writes one."""
    from click.testing import CliRunner

    from shadowtape.cli import main

    def invoke(*args: object, cwd: Path | None = None) -> Any:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke
