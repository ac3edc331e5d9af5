import random

import pytest

from shadowtape.diff.latency import LatencyHistogram


def test_percentiles_within_the_bucket_width():
    rng = random.Random(3)
    values = [rng.lognormvariate(9, 1) for _ in range(20_000)]  # µs, around 8 ms
    hist = LatencyHistogram()
    for v in values:
        hist.add(v)
    hist.add(None)  # no measurement: not counted
    hist.add(-5)
    assert hist.total == len(values)
    ordered = sorted(values)
    for q in (0.5, 0.95, 0.99):
        exact_ms = ordered[int(q * len(values)) - 1] / 1000
        assert hist.quantile(q) == pytest.approx(exact_ms, rel=0.02)


def test_round_trips_through_json_and_empty_is_none():
    hist = LatencyHistogram()
    assert hist.quantile(0.5) is None
    for v in (1000, 2000, 3000):
        hist.add(v)
    again = LatencyHistogram.from_json(hist.to_json())
    assert again.total == 3 and again.quantile(0.5) == hist.quantile(0.5)
