"""Fixtures for the fault tests; the kit lives in faultkit.py so tests can import it."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import faultkit  # noqa: E402


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """Environment for a `shadowtape` process: a key, no shadowtape.toml, a private HOME."""
    return faultkit.cli_env(tmp_path)


@pytest.fixture
def staging():
    with faultkit.staging_server() as server:
        yield server


@pytest.fixture
def tiny_fs(tmp_path: Path):
    """A 1 MiB tmpfs, or a skip saying why there is none."""
    if not faultkit.MOUNT_WORKS:
        pytest.skip(faultkit.NO_MOUNT)
    with faultkit.tmpfs(tmp_path / "tiny", "1m") as fs:
        yield fs


@pytest.fixture
def readonly_fs(tmp_path: Path):
    """A read-only file system. Root ignores permission bits (chmod would prove nothing), so
    it is a tmpfs mounted read-only: EROFS for everyone."""
    if not faultkit.MOUNT_WORKS:
        pytest.skip(faultkit.NO_MOUNT + " (a read-only mount is the only test root cannot bypass)")
    with faultkit.tmpfs(tmp_path / "ro", "1m", read_only=True) as fs:
        yield fs
