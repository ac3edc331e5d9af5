"""Case 7: replay's numbers are checked before anything is read or sent: NaN, infinity,
negatives, zero where it means nothing, and a --start-at far ahead are one line naming the
option (exit 2); nothing reaches staging and no results directory appears."""

from __future__ import annotations

import time

import faultkit
import pytest

BAD = [
    (("--rate", "nan"), "--rate"),
    (("--rate", "inf"), "--rate"),
    (("--rate", "-3"), "--rate"),
    (("--speed", "inf"), "--speed"),
    (("--speed", "nan"), "--speed"),
    (("--breaker-error-rate", "0"), "--breaker-error-rate"),
    (("--breaker-error-rate", "1.5"), "--breaker-error-rate"),
    (("--breaker-error-rate", "nan"), "--breaker-error-rate"),
    (("--breaker-failures", "-1"), "--breaker-failures"),
    (("--connect-timeout", "-1"), "--connect-timeout"),
    (("--read-timeout", "0"), "--read-timeout"),
    (("--total-timeout", "nan"), "--total-timeout"),
    (("--duration", "0"), "--duration"),
    (("--duration", "inf"), "--duration"),
    (("--grace", "-1"), "--grace"),
    (("--max-gap", "nan"), "--max-gap"),
    (("--concurrency", "0"), "--concurrency"),
    (("--limit", "0"), "--limit"),
    (("--sessions", "0"), "--sessions"),
    (("--retries", "-1"), "--retries"),
    (("--noise-sample", "-2"), "--noise-sample"),
    (("--roll-interval", "0"), "--roll-interval"),
    (("--start-at", "9999999999"), "--start-at"),
    (("--start-at", "nan"), "--start-at"),
]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return faultkit.sanitized_dataset(tmp_path_factory.mktemp("in") / "clean", rows=6)


@pytest.mark.parametrize(("args", "flag"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_number_is_one_line_and_sends_nothing(args, flag, clean, staging, tmp_path):
    out = tmp_path / "results"
    started = time.monotonic()
    result = faultkit.run_inprocess("replay", clean, "--target", staging.url, "--out", out, *args)
    assert result.exit_code == 2, result.output
    faultkit.assert_one_line(result.stderr, "shadowtape: error:", flag)
    assert time.monotonic() - started < 5  # refused, not waited on
    assert staging.received == [] and not out.exists()


@pytest.mark.parametrize(
    "args",
    [("--breaker-failures", "0"), ("--breaker-error-rate", "1"), ("--grace", "0"),
     ("--max-gap", "0"), ("--retries", "0")],
)  # fmt: skip
def test_edge_values_that_mean_something_run_against_a_healthy_target(
    args, clean, staging, tmp_path
):
    result = faultkit.run_inprocess(
        "replay", clean, "--target", staging.url, "--out", tmp_path / "r", "--speed", "max", *args
    )
    assert result.exit_code == 0, result.output
    assert "replay complete" in result.stdout and len(staging.received) == 6
