"""Latency distributions in bounded memory, and the one test that says a route got slower.

Every stage that keeps latencies (replay's dispatch lateness, diff's per-route response times,
the report's figures and gates) keeps them here: log-spaced buckets 2% wide. Bucket `i` holds
values v (µs) with GROWTH**i <= v < GROWTH**(i+1), values under 1 µs go to bucket 0, and a
bucket stands for its geometric middle. A histogram merges by addition and serialises as a
small dict, so percentiles over millions of requests cost a few hundred integers; the price is
a relative error of about 1% on any percentile, far below what a latency gate resolves.

`compare` decides whether a candidate is slower than a reference (the baseline, measured in
the same run). It is a percentile bootstrap of the ratio candidate/reference of p50 and p95,
drawn from the two histograms with a seeded generator: distribution-free (latencies are
skewed and multi-modal), about the figures the report shows and gates on (a tail regression
counts, not only a shift of the median), and computed from the bounded histograms the diff
already keeps, so it needs neither the raw samples nor scipy. A quantile is tested only with
enough samples on both sides for its estimate to mean something (`MIN_SAMPLES`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

GROWTH = 1.02
_LOG_GROWTH = math.log(GROWTH)
# Serialised histograms say how they were bucketed, so a reader never guesses.
FORMAT = "log1.02"

# The quantiles `compare` tests, and the samples per side each needs: a p95 from fewer than
# 40 samples is one of the two largest values, which says more about a hiccup than a route.
TESTED_QUANTILES = (0.5, 0.95)
MIN_SAMPLES = {0.5: 10, 0.95: 40}
DEFAULT_THRESHOLD = 0.2
DEFAULT_ALPHA = 0.05
DEFAULT_RESAMPLES = 4000


def bucket_of(micros: float) -> int:
    """The bucket of a value in µs; values under 1 µs (including 0) go to bucket 0."""
    if micros < 1.0:
        return 0
    return int(math.floor(math.log(micros) / _LOG_GROWTH))


def bucket_value(index: int) -> float:
    """The value a bucket stands for: its geometric middle, in µs."""
    return GROWTH ** (index + 0.5)


def bucket_bounds(index: int) -> tuple[float, float]:
    """[low, high) of a bucket, in µs."""
    return GROWTH**index, GROWTH ** (index + 1)


@dataclass
class LatencyHistogram:
    """Counts of latencies (µs) per bucket; `low`/`high` are the exact extremes seen (None when
    unknown, e.g. read back from a summary), used to keep a quantile inside the data."""

    counts: dict[int, int] = field(default_factory=dict)
    total: int = 0
    low: float | None = None
    high: float | None = None

    def add(self, micros: float | None) -> None:
        """One value; None (not measured) and negative values are not counted."""
        self.add_many(micros, 1)

    def add_many(self, micros: float | None, count: int) -> None:
        """`add(micros)` done `count` times."""
        if micros is None or micros < 0 or count <= 0:
            return
        i = bucket_of(micros)
        self.counts[i] = self.counts.get(i, 0) + count
        self.total += count
        self.low = micros if self.low is None else min(self.low, micros)
        self.high = micros if self.high is None else max(self.high, micros)

    def merge(self, other: LatencyHistogram) -> None:
        for i, n in other.counts.items():
            self.counts[i] = self.counts.get(i, 0) + n
        self.total += other.total
        for name, pick in (("low", min), ("high", max)):
            mine, theirs = getattr(self, name), getattr(other, name)
            if theirs is not None:
                setattr(self, name, theirs if mine is None else pick(mine, theirs))

    @classmethod
    def merged(cls, parts: Iterable[LatencyHistogram]) -> LatencyHistogram:
        out = cls()
        for part in parts:
            out.merge(part)
        return out

    def bucket_quantile(self, q: float) -> float | None:
        """The middle of the bucket holding the q-quantile (nearest rank), in µs."""
        if not self.total:
            return None
        rank = max(1, math.ceil(q * self.total))
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                return bucket_value(i)
        return bucket_value(max(self.counts))  # pragma: no cover - counts sum to total

    def quantile_us(self, q: float) -> float | None:
        """The q-quantile in µs: its bucket's middle, kept within the extremes seen; None
        when empty."""
        value = self.bucket_quantile(q)
        if value is None:
            return None
        if self.low is not None:
            value = max(value, self.low)
        if self.high is not None:
            value = min(value, self.high)
        return value

    def quantile_ms(self, q: float) -> float | None:
        value = self.quantile_us(q)
        return None if value is None else round(value / 1000.0, 3)

    def share_above(self, micros: float) -> float:
        """Share of the values above `micros`, within a bucket's width: a bucket counts as
        above when its middle is. 0.0 when empty."""
        if not self.total:
            return 0.0
        above = sum(n for i, n in self.counts.items() if bucket_value(i) > micros)
        return above / self.total

    def to_json(self) -> dict[str, int]:
        """Bucket index -> count (keys as strings, for JSON)."""
        return {str(i): self.counts[i] for i in sorted(self.counts)}

    @classmethod
    def from_json(cls, data: Mapping[str, int] | None) -> LatencyHistogram:
        counts = {int(k): int(v) for k, v in (data or {}).items() if int(v) > 0}
        return cls(counts, sum(counts.values()))


# --- the regression test ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuantileShift:
    """One quantile, candidate vs reference: the ratio and its bootstrap interval."""

    q: float
    reference_ms: float
    candidate_ms: float
    ratio: float
    low: float  # one-sided lower bound at the test's level; above 1: significantly slower
    high: float
    significant: bool
    above_threshold: bool

    @property
    def label(self) -> str:
        return f"p{round(self.q * 100)}"

    @property
    def regression(self) -> bool:
        return self.significant and self.above_threshold


@dataclass(frozen=True, slots=True)
class LatencyComparison:
    """The verdict for one route: `regression` only when a quantile is both significantly
    slower and slower by more than the threshold."""

    route: str
    reference_n: int
    candidate_n: int
    shifts: tuple[QuantileShift, ...]
    threshold: float
    level: float  # the per-quantile error level after the correction for several tests
    resamples: int

    @property
    def tested(self) -> bool:
        return bool(self.shifts)

    @property
    def regression(self) -> bool:
        return any(s.regression for s in self.shifts)

    @property
    def regressed(self) -> tuple[QuantileShift, ...]:
        return tuple(s for s in self.shifts if s.regression)

    def verdict(self) -> str:
        if not self.shifts:
            return (
                f"not tested: {self.reference_n} baseline / {self.candidate_n} candidate samples "
                f"(p50 needs {MIN_SAMPLES[0.5]} on each side)"
            )
        if self.regression:
            return "regression: " + "; ".join(describe_shift(s) for s in self.regressed)
        return "no regression: " + "; ".join(describe_shift(s) for s in self.shifts)


def describe_shift(s: QuantileShift) -> str:
    return (
        f"{s.label} {s.reference_ms:.1f} -> {s.candidate_ms:.1f} ms ({s.ratio:.2f}x, "
        f"interval {s.low:.2f}x..{s.high:.2f}x)"
    )


def count_tests(counts: Iterable[tuple[int, int]]) -> int:
    """How many quantile tests `compare` runs over routes with these (reference, candidate)
    sample counts: the family a multiple-testing correction divides the error level by."""
    return sum(
        1
        for ref_n, cand_n in counts
        for q in TESTED_QUANTILES
        if min(ref_n, cand_n) >= MIN_SAMPLES[q]
    )


def _bootstrap_quantiles(
    hist: LatencyHistogram, qs: tuple[float, ...], resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """(len(qs), resamples) quantiles (µs) of samples of `hist.total` values drawn with
    replacement from `hist`. Small samples are drawn value by value (cost resamples x n);
    large ones as one multinomial draw over the buckets (cost resamples x buckets)."""
    index = np.array(sorted(hist.counts), dtype=np.int64)
    counts = np.array([hist.counts[i] for i in index], dtype=np.int64)
    values = GROWTH ** (index + 0.5)
    n = hist.total
    ranks = [max(1, math.ceil(q * n)) for q in qs]
    out = np.empty((len(qs), resamples))
    if n <= _DRAW_VALUES_UP_TO:
        # The sample's values in order; a resample's k-th smallest value is the value at
        # the k-th smallest drawn position.
        ordered = np.repeat(values, counts)
        for start in range(0, resamples, _CHUNK):
            stop = min(resamples, start + _CHUNK)
            drawn = rng.integers(0, n, size=(stop - start, n))
            for k, rank in enumerate(ranks):
                kth = np.partition(drawn, rank - 1, axis=1)[:, rank - 1]
                out[k, start:stop] = ordered[kth]
        return out
    draws = rng.multinomial(n, counts / n, size=resamples)
    cumulative = np.cumsum(draws, axis=1)
    for k, rank in enumerate(ranks):
        out[k] = values[np.argmax(cumulative >= rank, axis=1)]
    return out


_DRAW_VALUES_UP_TO = 2000
_CHUNK = 500


def compare(
    route: str,
    reference: LatencyHistogram,
    candidate: LatencyHistogram,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    alpha: float = DEFAULT_ALPHA,
    tests: int = 1,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> LatencyComparison:
    """Whether `candidate` is slower than `reference` on p50 and p95.

    Each quantile's ratio candidate/reference gets a bootstrap interval at level
    alpha/tests per side (Bonferroni over the `tests` quantile tests of the whole report, so
    that the chance of any false finding in a report stays under alpha); the quantile is
    significantly slower when the interval's lower end is above 1, and counts as a
    regression when the point ratio is also above 1 + threshold. Same inputs and seed, same
    answer.
    """
    n = min(reference.total, candidate.total)
    qs = tuple(q for q in TESTED_QUANTILES if n >= MIN_SAMPLES[q])
    level = alpha / max(tests, 1)
    shifts: list[QuantileShift] = []
    if qs:
        rng = np.random.default_rng(seed)
        ref_boot = _bootstrap_quantiles(reference, qs, resamples, rng)
        cand_boot = _bootstrap_quantiles(candidate, qs, resamples, rng)
        for k, q in enumerate(qs):
            # Bucket middles, as in the resamples, so the ratio and its interval agree.
            ref_us = reference.bucket_quantile(q) or 0.0
            cand_us = candidate.bucket_quantile(q) or 0.0
            ratio = cand_us / ref_us if ref_us > 0 else math.inf
            ratios = cand_boot[k] / ref_boot[k]
            low, high = (float(v) for v in np.quantile(ratios, [level, 1 - level]))
            shifts.append(
                QuantileShift(
                    q=q,
                    reference_ms=ref_us / 1000,
                    candidate_ms=cand_us / 1000,
                    ratio=ratio,
                    low=low,
                    high=high,
                    significant=low > 1.0,
                    above_threshold=low > 1.0 + threshold,
                )
            )
    return LatencyComparison(
        route=route,
        reference_n=reference.total,
        candidate_n=candidate.total,
        shifts=tuple(shifts),
        threshold=threshold,
        level=level,
        resamples=resamples,
    )
