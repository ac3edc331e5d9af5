"""One run from several senders: counts summed, lateness merged from the distributions.

Senders own disjoint sessions (`plan.in_shard`), so their counts add up field by field; a
quantile cannot be merged from quantiles, so each sender hands over its lateness histogram
(`shadowtape.latency.LatencyHistogram`) and the run's figures come from the merged histogram,
as if one process had seen every request. Used by the Ray engine and by local `--workers`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable
from typing import Any

from shadowtape.latency import LatencyHistogram
from shadowtape.replay.runner import Progress
from shadowtape.replay.stats import ReplayCounts, ReplaySummary
from shadowtape.telemetry import merge_telemetry


def merge_lateness(parts: Iterable[LatencyHistogram | None]) -> LatencyHistogram:
    return LatencyHistogram.merged(h for h in parts if h is not None)


def lateness_us(hist: LatencyHistogram, q: float) -> int:
    """A lateness figure as the runner reports it (µs, 0 when nothing was measured)."""
    return round(hist.quantile_us(q) or 0)


def merge_counts(parts: list[ReplayCounts]) -> ReplayCounts:
    """Counts of disjoint shards add up, field by field."""
    total = ReplayCounts()
    for f in dataclasses.fields(ReplayCounts):
        values = [getattr(p, f.name) for p in parts]
        if values and isinstance(values[0], Counter):
            merged: Counter[str] = Counter()
            for v in values:
                merged.update(v)
            setattr(total, f.name, merged)
        else:
            setattr(total, f.name, sum(values))
    return total


def merge_progress(parts: list[Progress | None], elapsed: float) -> Progress:
    seen = [p for p in parts if p is not None]
    lateness = merge_lateness(p.lateness for p in seen)
    if lateness.total or not seen:
        p99 = lateness_us(lateness, 0.99)
    else:  # senders that did not send their distribution: the worst one's figure
        p99 = max(p.lateness_p99_us for p in seen)
    return Progress(
        done=sum(p.done for p in seen),
        total=sum(p.total for p in seen),
        sent=sum(p.sent for p in seen),
        in_flight=sum(p.in_flight for p in seen),
        errors=sum(p.errors for p in seen),
        rate=sum(p.rate for p in seen),
        lateness_p99_us=p99,
        elapsed_s=elapsed,
        lateness=lateness,
    )


def merge_status(
    shards: list[ReplaySummary], interrupted: bool, tripped_first: int | None
) -> tuple[str, str | None]:
    """The run's status: a breaker that opened first names the reason (the others say only
    that they were stopped), then an interruption, else complete."""
    tripped = [s for s in shards if s.status == "circuit_open"]
    if tripped_first is not None:
        tripped.insert(0, shards[tripped_first])
    if tripped:
        return "circuit_open", tripped[0].reason
    if interrupted or any(s.status == "interrupted" for s in shards):
        return "interrupted", "interrupted (Ctrl-C)"
    return "complete", next((s.reason for s in shards if s.reason), None)


def merge_summaries(
    shards: list[ReplaySummary],
    config: dict[str, Any],
    elapsed: float,
    interrupted: bool,
    tripped_first: int | None = None,
) -> ReplaySummary:
    """One summary for the run; `config` is the run's (not a shard's) as JSON."""
    status, reason = merge_status(shards, interrupted, tripped_first)
    lateness = merge_lateness(s.lateness for s in shards)
    return ReplaySummary(
        run_id=shards[0].run_id,
        status=status,
        reason=reason,
        counts=merge_counts([s.counts for s in shards]),
        lateness_p50_us=lateness_us(lateness, 0.5),
        lateness_p99_us=lateness_us(lateness, 0.99),
        lateness_max_us=round(lateness.high or 0),
        lateness=lateness,
        elapsed_s=round(elapsed, 3),
        files=sorted(f for s in shards for f in s.files),
        config=config,
        correlation_rules=max(s.correlation_rules for s in shards),
        telemetry=merge_telemetry([s.telemetry for s in shards if s.telemetry]),
    )
