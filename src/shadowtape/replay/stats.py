"""Counters and latency figures of a run, and the summary `run_replay` returns.

Everything that is dropped, skipped, retried or failed is counted here; the CLI prints these
figures and the results files carry them in their metadata.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any

from shadowtape.latency import LatencyHistogram


@dataclass(slots=True)
class ReplayCounts:
    rows: int = 0  # results rows written, noise pass included
    sent: int = 0
    failed: int = 0
    unsendable: int = 0  # failed before sending: bytes HTTP cannot frame (each a failed row)
    skipped: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    status_classes: Counter[str] = field(default_factory=Counter)
    sessions: int = 0
    substitutions: Counter[str] = field(default_factory=Counter)  # per rule
    misses: Counter[str] = field(default_factory=Counter)  # per rule
    sessions_skipped_on_miss: int = 0
    out_of_order: int = 0  # rows whose session had already sent a later seq
    reorder_forced: int = 0  # rows released before their reorder window closed
    staging_body_truncated: int = 0
    undecodable_bodies: int = 0
    noise_sent: int = 0  # second sends (--noise-sample) that got an answer
    noise_failed: int = 0
    noise_rows: int = 0
    noise_not_sent: int = 0  # chosen for a second send, but the first got no answer or was skipped
    rows_not_written: int = 0  # only when a second Ctrl-C cut the final accounting short
    # The baselines (--baseline, --baseline-2), keyed by side name; the fields above are the
    # candidate's. Counters, so shards' counts add up like the rest.
    baseline_sent: Counter[str] = field(default_factory=Counter)
    baseline_failed: Counter[str] = field(default_factory=Counter)
    baseline_retries: Counter[str] = field(default_factory=Counter)
    baseline_status_classes: Counter[str] = field(default_factory=Counter)  # "baseline 2xx"
    baseline_substitutions: Counter[str] = field(default_factory=Counter)
    baseline_misses: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it rebuilds a Counter from (key, value) pairs, counting pairs.
        data: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            data[f.name] = dict(sorted(value.items())) if isinstance(value, Counter) else value
        return data


@dataclass(slots=True)
class ReplaySummary:
    """What a run did; picklable so a remote worker can hand it back."""

    run_id: str
    status: str  # complete | interrupted | circuit_open
    reason: str | None
    counts: ReplayCounts
    lateness_p50_us: int
    lateness_p99_us: int
    lateness_max_us: int
    elapsed_s: float
    files: list[str]
    config: dict[str, Any]
    correlation_rules: int = 0
    telemetry: dict[str, Any] | None = None  # OTLP export counts when telemetry was on
    # The distribution behind the lateness figures, for merging senders' summaries exactly;
    # not part of the JSON (the figures above are).
    lateness: LatencyHistogram = field(default_factory=LatencyHistogram)
    signal: int | None = None  # the signal that interrupted the run, if one did

    @property
    def exit_code(self) -> int:
        """As shells report it: 128 + the signal for an interrupted run (130 for Ctrl-C)."""
        if self.status == "interrupted":
            return 128 + (self.signal or 2)
        return {"complete": 0, "circuit_open": 1}.get(self.status, 1)

    def to_json(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__slots__ if k not in ("counts", "lateness")}
        data["counts"] = self.counts.to_json()
        return data
