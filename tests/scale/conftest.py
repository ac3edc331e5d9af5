"""Fixtures for the Ray engine tests: one local Ray instance (2 CPUs) for the whole module,
since starting Ray takes longer than any test here, plus the sanitize corpus and the replay
kit of the stage tests, reused rather than copied.

Every test here needs the ray extra; without it they are skipped with the reason shown."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

TESTS = Path(__file__).resolve().parent.parent
# The replay kit is a module by design (tests/replay/conftest.py imports it the same way).
sys.path.insert(0, str(TESTS / "replay"))

from replay_testkit import dead_url, staging  # noqa: E402, F401


def _load(name: str, path: Path) -> ModuleType:
    """A stage's conftest as a plain module, for its builders (conftests have no import name)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


sanitize_kit = _load("scale_sanitize_kit", TESTS / "sanitize" / "conftest.py")


@pytest.fixture(scope="session")
def ray_instance() -> Iterator[ModuleType]:
    ray = pytest.importorskip(
        "ray", reason="the ray extra is not installed: pip install 'shadowtape[ray]'"
    )
    pytest.importorskip("ray.data", reason="Ray Data is missing: pip install 'shadowtape[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", address="local")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def raw_corpus(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - sanitize_kit.Corpus
    from shadowtape.keyed import Key

    key = Key(sanitize_kit.TEST_KEY.encode(), "t")
    return sanitize_kit.write_corpus(tmp_path_factory.mktemp("raw"), sanitize_kit.make_users(), key)
