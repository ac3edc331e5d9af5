"""Fixtures for the replay tests; the kit lives in replay_testkit.py so tests can import it."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from replay_testkit import dead_url, raw_staging, staging  # noqa: E402, F401
