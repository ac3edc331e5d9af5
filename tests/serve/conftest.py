"""Fixtures for the serve tests; the kit lives in serve_testkit.py so tests can import it."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "governance"))
sys.path.insert(0, str(Path(__file__).parent.parent / "replay"))
sys.path.insert(0, str(Path(__file__).parent))

from otlp_receiver import otlp  # noqa: E402, F401
from serve_testkit import upstream  # noqa: E402, F401
