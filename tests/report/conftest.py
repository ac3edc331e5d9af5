"""Fixtures: planted results (tests/diff/planted.py) with their diff already computed."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

from shadowtape.diff.pipeline import run_diff

# Test folders are not packages; the planted services live beside the diff tests.
sys.path.insert(0, str(Path(__file__).parent.parent / "diff"))
import planted as planted_module  # noqa: E402


@pytest.fixture(scope="session")
def planted() -> ModuleType:
    return planted_module


@pytest.fixture(scope="session")
def diffed_master(planted: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    results = planted.build_results(tmp_path_factory.mktemp("report"))
    run_diff(results)
    return results


@pytest.fixture
def diffed(diffed_master: Path, tmp_path: Path) -> Path:
    """Planted results with their _diff, copied so a test may write beside them."""
    copy = tmp_path / "results"
    shutil.copytree(diffed_master, copy)
    return copy


@pytest.fixture(scope="session")
def quiet_master(planted: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Staging runs the recorded version: nothing but noise differs."""
    return planted.build_results(tmp_path_factory.mktemp("quiet"), staging_version=1)
