"""pytest plugin: a service's own test suite uses recordings as doubles.

Installed with shadowtape (entry point `pytest11`), so the fixture is there in any suite:

    def test_checkout(shadowtape_double):
        payments = shadowtape_double("recordings/payments", session_key="header:X-Session-Id")
        app = make_app(payments_url=payments.url)
        ...
        assert payments.stats()["missed"] == 0

`shadowtape_double(DATASET, **options)` starts a double on an ephemeral loopback port and
returns it (`url`, `stats()`); options are `ServeConfig` fields (latency="none",
error_rate=0.1, matchers="m.yaml", served="out/", ...). Every double a test started is stopped
when the test ends, its served-requests log flushed. The heavy imports wait for first use, so
the plugin costs a suite that never asks for a double nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def shadowtape_double() -> Iterator[Callable[..., Any]]:
    """Factory: shadowtape_double(DATASET, **options) -> a running double with `.url`."""
    from shadowtape.serve.config import ServeConfig
    from shadowtape.serve.server import RunningDouble, start_double

    started: list[RunningDouble] = []

    def start(dataset: str | Path, **options: Any) -> RunningDouble:
        options.setdefault("host", "127.0.0.1")
        options.setdefault("port", 0)
        double = start_double(ServeConfig(str(dataset), **options))
        started.append(double)
        return double

    yield start
    for double in reversed(started):
        double.stop()
