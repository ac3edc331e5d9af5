"""Shared test settings. Each stage keeps its own fixtures in tests/<stage>/conftest.py."""

import os
import sys
import tempfile
from pathlib import Path

import pytest

# Kits shared across stages (tls_testkit) import by name, as each stage's own kits do.
sys.path.insert(0, str(Path(__file__).parent))

TEST_KEY = "shadowtape-test-key-0123456789abcdef"


@pytest.fixture
def test_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fixed key in SHADOWTAPE_KEY, so keyed outputs are deterministic across tests."""
    monkeypatch.setenv("SHADOWTAPE_KEY", TEST_KEY)
    return TEST_KEY


def pytest_configure(config: pytest.Config) -> None:
    # Every audited command appends to an audit log (default: ./shadowtape-audit.jsonl); the
    # suite's go to a scratch file, never into the checkout. Tests of the log give their own.
    os.environ.setdefault(
        "SHADOWTAPE_AUDIT_LOG",
        os.path.join(tempfile.mkdtemp(prefix="shadowtape-audit-"), "audit.jsonl"),
    )
    # Keep tldextract (used by Presidio's email recognizer) from reaching for the network.
    os.environ.setdefault("TLDEXTRACT_CACHE", os.path.join(os.getcwd(), ".pytest_cache", "tld"))
