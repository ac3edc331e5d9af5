"""The report's model: per-route figures and per-path findings with examples.

Route figures come from the diff stage's summary.json (counted while streaming the results);
per-path findings and their examples are aggregated from the diff dataset with polars, which
scans it lazily, so the report's memory does not grow with the number of differences.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from shadowtape.errors import DatasetError

# The diff stage's output contract: RESULTS/_diff/ holds diff Parquet files and summary.json.
DIFF_DIRNAME = "_diff"
SUMMARY_NAME = "summary.json"
SUMMARY_KIND = "shadowtape.diff-summary"
SUMMARY_VERSION = 1  # the diff summary format this report reads; a field renamed bumps it
LATENCY_GROWTH = 1.02  # the diff stage's latency bucket width
EXAMPLES_PER_PATH = 3
ALL_ROUTES = "(all routes)"


@dataclass(frozen=True, slots=True)
class Example:
    exchange_id: str
    raw_location: str
    kind: str
    recorded: str | None
    staging: str | None

    def change(self) -> str:
        """`old -> new`, with a missing side spelt out rather than left blank."""
        rec = "(absent)" if self.recorded is None else self.recorded
        stg = "(absent)" if self.staging is None else self.staging
        return f"{rec} -> {stg}"


@dataclass(slots=True)
class PathFinding:
    route: str
    part: str
    location: str
    classification: str
    reason: str
    kinds: list[str]
    requests_differing: int  # R
    replays_differing: int  # S
    requests: int  # N
    sampled: int
    rows: int = 0
    examples: list[Example] = field(default_factory=list)

    @property
    def where(self) -> str:
        if self.part in ("body", self.location):  # "status", not "status status"
            return self.location
        return f"{self.part} {self.location}"

    def headline(self) -> str:
        kinds = "/".join(self.kinds) or "?"
        return f"{self.where}: {kinds} in {self.requests_differing}/{self.requests} requests"


@dataclass(slots=True)
class RouteFigures:
    route: str
    requests: int
    compared: int
    sent: int
    skipped: int
    failed: int
    status_mismatch: int
    header_drift: int
    body_drift: int
    drift_requests: int
    noise_only_requests: int
    drift_diffs: int
    noise_diffs: int
    ignored_diffs: int
    staging_errors: int
    noise_pairs: int
    drift_paths: int = 0
    noise_paths: int = 0
    latency: dict[str, dict[int, int]] = field(default_factory=dict)

    @property
    def drift_rate(self) -> float:
        return self.drift_requests / self.compared if self.compared else 0.0

    @property
    def status_mismatch_rate(self) -> float:
        return self.status_mismatch / self.compared if self.compared else 0.0

    @property
    def error_rate(self) -> float:
        attempted = self.sent + self.failed
        return self.staging_errors / attempted if attempted else 0.0

    @property
    def noise_rate(self) -> float:
        """Share of requests that differ only by noise: what the noise model hides."""
        return self.noise_only_requests / self.compared if self.compared else 0.0

    def latency_ms(self, side: str, q: float) -> float | None:
        return quantile_ms(self.latency.get(side, {}), q)

    def latency_ratio(self, q: float) -> float | None:
        rec, stg = self.latency_ms("recorded", q), self.latency_ms("staging", q)
        if rec is None or stg is None or rec <= 0:
            return None
        return stg / rec

    def metric(self, name: str) -> float | None:
        """The figures --fail-on rules can name."""
        if name.endswith("_latency_ratio"):
            return self.latency_ratio(int(name[1:3]) / 100)
        if name in ("status_mismatch_rate", "drift_rate", "error_rate", "noise_rate"):
            return getattr(self, name)
        value = {
            "drift": self.drift_requests,
            "errors": self.staging_errors,
        }.get(name)
        if value is not None:
            return float(value)
        return float(getattr(self, name))


def quantile_ms(buckets: dict[int, int], q: float) -> float | None:
    total = sum(buckets.values())
    if not total:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for i in sorted(buckets):
        seen += buckets[i]
        if seen >= rank:
            return LATENCY_GROWTH ** (i + 0.5) / 1000.0
    return None  # pragma: no cover


@dataclass(slots=True)
class ReportData:
    diff_dir: Path
    results: str
    totals: dict[str, Any]
    routes: list[RouteFigures]
    overall: RouteFigures
    paths: list[PathFinding]

    def findings(self, route: str, classification: str) -> list[PathFinding]:
        return [p for p in self.paths if p.route == route and p.classification == classification]


_COUNT_FIELDS = (
    "requests", "compared", "sent", "skipped", "failed", "status_mismatch", "header_drift",
    "body_drift", "drift_requests", "noise_only_requests", "drift_diffs", "noise_diffs",
    "ignored_diffs", "staging_errors", "noise_pairs",
)  # fmt: skip


def read_summary(diff_dir: Path) -> dict[str, Any]:
    path = diff_dir / SUMMARY_NAME
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{diff_dir}: no {SUMMARY_NAME}; run `shadowtape diff` first") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(
            f"{path}: unreadable diff summary ({exc}); rerun `shadowtape diff`"
        ) from None
    if not isinstance(payload, dict) or payload.get("kind") != SUMMARY_KIND:
        raise DatasetError(f"{path}: not a shadowtape diff summary; rerun `shadowtape diff`")
    if payload.get("version") != SUMMARY_VERSION:
        raise DatasetError(
            f"{path}: diff summary version {payload.get('version')!r}, this report reads "
            f"{SUMMARY_VERSION}; rerun `shadowtape diff` with this shadowtape"
        )
    for key, kind in (("routes", list), ("paths", list), ("totals", dict)):
        if not isinstance(payload.get(key), kind):
            raise DatasetError(f"{path}: diff summary lacks `{key}`; rerun `shadowtape diff`")
    return payload


def _examples(diff_dir: Path) -> dict[tuple[str, str, str], tuple[list[str], int, list[Example]]]:
    files = sorted(str(f) for f in diff_dir.glob("*.parquet") if not f.name.startswith((".", "_")))
    if not files:
        return {}
    frame = (
        pl.scan_parquet(files)
        .sort("exchange_id", "raw_location", maintain_order=True)
        .group_by("route", "part", "location", maintain_order=True)
        .agg(
            pl.col("kind").unique().sort().alias("kinds"),
            pl.len().alias("rows"),
            pl.struct("exchange_id", "raw_location", "kind", "recorded_value", "staging_value")
            .head(EXAMPLES_PER_PATH)
            .alias("examples"),
        )
        .collect()
    )
    out = {}
    for row in frame.iter_rows(named=True):
        examples = [
            Example(
                e["exchange_id"],
                e["raw_location"],
                e["kind"],
                e["recorded_value"],
                e["staging_value"],
            )
            for e in row["examples"]
        ]
        out[(row["route"], row["part"], row["location"])] = (row["kinds"], row["rows"], examples)
    return out


def _figures(route: str, data: dict[str, Any]) -> RouteFigures:
    # Every figure must be there: a field renamed by another version must not read as 0.
    missing = [k for k in _COUNT_FIELDS if not isinstance(data.get(k), int)]
    if missing:
        raise DatasetError(
            f"diff summary: route {route!r} lacks {', '.join(missing)}; it was written by "
            "another shadowtape version: rerun `shadowtape diff`"
        )
    fig = RouteFigures(route=route, **{k: data[k] for k in _COUNT_FIELDS})
    for side in ("recorded", "staging"):
        raw = data.get(f"latency_{side}") or {}
        fig.latency[side] = {int(k): int(v) for k, v in raw.items()}
    return fig


def combine(routes: list[RouteFigures], label: str) -> RouteFigures:
    """The figures of several routes as one (the run, or a scenario's routes)."""
    fig = RouteFigures(
        route=label,
        **{k: sum(getattr(r, k) for r in routes) for k in _COUNT_FIELDS},
        drift_paths=sum(r.drift_paths for r in routes),
        noise_paths=sum(r.noise_paths for r in routes),
    )
    for side in ("recorded", "staging"):
        merged: dict[int, int] = {}
        for r in routes:
            for i, n in r.latency.get(side, {}).items():
                merged[i] = merged.get(i, 0) + n
        fig.latency[side] = merged
    return fig


def load_report(diff_dir: str | Path) -> ReportData:
    diff_dir = Path(diff_dir)
    summary = read_summary(diff_dir)
    routes = [_figures(str(r.get("route")), r) for r in summary["routes"]]
    overall = combine(routes, ALL_ROUTES)
    overall.drift_paths = overall.noise_paths = 0  # counted below, from the paths
    examples = _examples(diff_dir)
    paths = []
    for d in summary.get("paths", []):
        kinds, rows, ex = examples.get((d["route"], d["part"], d["location"]), ([], 0, []))
        paths.append(
            PathFinding(
                route=d["route"],
                part=d["part"],
                location=d["location"],
                classification=d["classification"],
                reason=d["reason"],
                kinds=list(kinds),
                requests_differing=d["requests_differing"],
                replays_differing=d["replays_differing"],
                requests=d["requests"],
                sampled=d["sampled"],
                rows=rows,
                examples=ex,
            )
        )
    by_route = {r.route: r for r in routes}
    for p in paths:
        fig = by_route.get(p.route)
        if fig is None:
            continue
        if p.classification == "drift":
            fig.drift_paths += 1
            overall.drift_paths += 1
        elif p.classification == "noise":
            fig.noise_paths += 1
            overall.noise_paths += 1
    # Worst first: the reader's eye goes to the top.
    paths.sort(
        key=lambda p: (
            p.route,
            p.classification != "drift",
            -p.requests_differing,
            p.part,
            p.location,
        )
    )
    return ReportData(
        diff_dir=diff_dir,
        results=str(summary.get("results", "")),
        totals=dict(summary.get("totals", {})),
        routes=routes,
        overall=overall,
        paths=paths,
    )
