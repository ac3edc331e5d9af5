"""Fixtures: a results dataset made from real calls to two real services (see planted.py)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

# Test folders are not packages; planted.py is shared with tests/report through sys.path.
sys.path.insert(0, str(Path(__file__).parent))
import planted as planted_module  # noqa: E402


@pytest.fixture(scope="session")
def planted() -> ModuleType:
    return planted_module


@pytest.fixture(scope="session")
def planted_results_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return planted_module.build_results(tmp_path_factory.mktemp("planted"))


@pytest.fixture
def planted_results(planted_results_master: Path, tmp_path: Path) -> Path:
    """A private copy, so each test's diff output starts from nothing."""
    copy = tmp_path / "results"
    shutil.copytree(planted_results_master, copy, ignore=shutil.ignore_patterns("_diff"))
    return copy
