"""Fixtures for the demo tests: the sample shop served for real on loopback."""

from collections.abc import Iterator

import pytest

from shadowtape.demo.services import RunningService, start_service
from shadowtape.demo.shop import ShopAPI


@pytest.fixture
def v1_service() -> Iterator[RunningService]:
    with start_service(ShopAPI("v1", sleep=lambda _s: None)) as service:
        yield service


@pytest.fixture
def v2_service() -> Iterator[RunningService]:
    with start_service(ShopAPI("v2", sleep=lambda _s: None)) as service:
        yield service
