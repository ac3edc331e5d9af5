"""Shared test settings. Each stage keeps its own fixtures in tests/<stage>/conftest.py."""

import os

import pytest

TEST_KEY = "shadowtape-test-key-0123456789abcdef"


@pytest.fixture
def test_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fixed key in SHADOWTAPE_KEY, so keyed outputs are deterministic across tests."""
    monkeypatch.setenv("SHADOWTAPE_KEY", TEST_KEY)
    return TEST_KEY


def pytest_configure(config: pytest.Config) -> None:
    # Keep tldextract (used by Presidio's email recognizer) from reaching for the network.
    os.environ.setdefault("TLDEXTRACT_CACHE", os.path.join(os.getcwd(), ".pytest_cache", "tld"))
