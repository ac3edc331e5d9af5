"""The report's model: per-route figures and per-path findings with examples, what was
compared with what, latency regressions and error budgets.

Route figures come from the diff stage's summary.json (counted while streaming the results);
per-path findings and their examples are aggregated from the diff dataset with polars, which
scans it lazily, so the report's memory does not grow with the number of differences.

The summary is versioned and read by version: version 1 (before baselines) had no
`comparison` and kept latency histograms as `latency_recorded` / `latency_staging`; a field a
version must have and lacks is an error naming it, never a silent 0.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from shadowtape.errors import DatasetError
from shadowtape.latency import (
    DEFAULT_THRESHOLD,
    LatencyComparison,
    LatencyHistogram,
    compare,
    count_tests,
)

# The diff stage's output contract: RESULTS/_diff/ holds diff Parquet files and summary.json.
DIFF_DIRNAME = "_diff"
SUMMARY_NAME = "summary.json"
SUMMARY_KIND = "shadowtape.diff-summary"
SUMMARY_VERSIONS = (1, 2)
EXAMPLES_PER_PATH = 3
ALL_ROUTES = "(all routes)"
SIDES = ("recorded", "baseline", "staging")


@dataclass(frozen=True, slots=True)
class Comparison:
    """What the candidate (staging) was compared with: the baseline, measured in the same
    run, or the recording."""

    reference: str  # baseline | recorded
    label: str  # "baseline vs candidate" | "recorded vs target"
    targets: dict[str, str] = field(default_factory=dict)
    noise_from: str = ""

    @property
    def has_baseline(self) -> bool:
        return self.reference == "baseline"

    @property
    def reference_name(self) -> str:
        """What the reference side is called in tables: baseline or recorded."""
        return self.reference

    @property
    def candidate_name(self) -> str:
        return "candidate" if self.has_baseline else "staging"

    def where(self) -> str:
        """The systems' URLs as the replay recorded them, or "" when unknown."""
        where = ", ".join(f"{side} {url}" for side, url in self.targets.items())
        return f"({where})" if where else ""

    def describe(self) -> str:
        return f"{self.label} {self.where()}".rstrip()


_RECORDED = Comparison("recorded", "recorded vs target")


@dataclass(frozen=True, slots=True)
class Example:
    exchange_id: str
    raw_location: str
    kind: str
    recorded: str | None  # the reference's value: the baseline's, in a baseline comparison
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
    server_errors: int = 0  # staging 5xx answers
    baseline_errors: int = 0
    drift_paths: int = 0
    noise_paths: int = 0
    # recorded / baseline / staging (the candidate): response times.
    latency: dict[str, LatencyHistogram] = field(default_factory=dict)
    reference: str = "recorded"  # the side latency ratios divide by
    # Set by load_report: the latency test (with a baseline) and the SLO budgets consumed.
    latency_test: LatencyComparison | None = None
    latency_tested_routes: int = 0  # for the overall figure: routes with a verdict
    latency_regressions: int = 0
    slo_budget: float | None = None

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
    def availability(self) -> float | None:
        """The candidate's non-5xx share of attempts (a failed send is not available)."""
        attempted = self.sent + self.failed
        if not attempted:
            return None
        return 1.0 - (self.server_errors + self.failed) / attempted

    @property
    def noise_rate(self) -> float:
        """Share of requests that differ only by noise: what the noise model hides."""
        return self.noise_only_requests / self.compared if self.compared else 0.0

    def histogram(self, side: str) -> LatencyHistogram:
        return self.latency.get(side) or LatencyHistogram()

    def latency_ms(self, side: str, q: float) -> float | None:
        return self.histogram(side).quantile_ms(q)

    def latency_ratio(self, q: float) -> float | None:
        """Staging (the candidate) over the reference: the baseline, else the recording."""
        ref, stg = self.latency_ms(self.reference, q), self.latency_ms("staging", q)
        if ref is None or stg is None or ref <= 0:
            return None
        return stg / ref

    def metric(self, name: str) -> float | None:
        """The figures --fail-on rules can name; None where a figure does not apply."""
        if name.endswith("_latency_ratio"):
            return self.latency_ratio(int(name[1:3]) / 100)
        if name in ("status_mismatch_rate", "drift_rate", "error_rate", "noise_rate"):
            return getattr(self, name)
        if name == "availability":
            return self.availability
        if name == "latency_regressions":
            # Only a baseline measured in the same run can say a route got slower.
            return float(self.latency_regressions) if self.reference == "baseline" else None
        if name == "slo_budget":
            return self.slo_budget
        value = {
            "drift": self.drift_requests,
            "errors": self.staging_errors,
        }.get(name)
        if value is not None:
            return float(value)
        return float(getattr(self, name))


@dataclass(slots=True)
class ReportData:
    diff_dir: Path
    results: str
    totals: dict[str, Any]
    routes: list[RouteFigures]
    overall: RouteFigures
    paths: list[PathFinding]
    comparison: Comparison = _RECORDED
    latency_threshold: float = DEFAULT_THRESHOLD
    summary_version: int = 2
    slo: list[Any] = field(default_factory=list)  # slo.SloResult, set by the caller

    def findings(self, route: str, classification: str) -> list[PathFinding]:
        return [p for p in self.paths if p.route == route and p.classification == classification]

    @property
    def latency_tests(self) -> list[LatencyComparison]:
        return [r.latency_test for r in self.routes if r.latency_test is not None]

    @property
    def latency_regressions(self) -> list[LatencyComparison]:
        return [t for t in self.latency_tests if t.regression]


_COUNT_FIELDS = (
    "requests", "compared", "sent", "skipped", "failed", "status_mismatch", "header_drift",
    "body_drift", "drift_requests", "noise_only_requests", "drift_diffs", "noise_diffs",
    "ignored_diffs", "staging_errors", "noise_pairs",
)  # fmt: skip
_ADDED_IN_2 = ("server_errors", "baseline_errors")


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
    version = payload.get("version")
    if version not in SUMMARY_VERSIONS:
        raise DatasetError(
            f"{path}: diff summary version {version!r}; this shadowtape reads versions "
            f"{', '.join(map(str, SUMMARY_VERSIONS))}; rerun `shadowtape diff` with this "
            "version (or upgrade shadowtape)"
        )
    for key, kind in (("routes", list), ("paths", list), ("totals", dict)):
        if not isinstance(payload.get(key), kind):
            raise DatasetError(f"{path}: diff summary lacks `{key}`; rerun `shadowtape diff`")
    return payload


def _examples(diff_dir: Path) -> dict[tuple[str, str, str], tuple[list[str], int, list[Example]]]:
    files = sorted(str(f) for f in diff_dir.glob("*.parquet") if not f.name.startswith((".", "_")))
    if not files:
        return {}
    scan = pl.scan_parquet(files)
    # The reference's value: the baseline's where the diff compared against one (diffs
    # written before baselines have no baseline_value column).
    reference = pl.col("recorded_value")
    if "baseline_value" in scan.collect_schema().names():
        reference = pl.coalesce("baseline_value", "recorded_value")
    frame = (
        scan.sort("exchange_id", "raw_location", maintain_order=True)
        .group_by("route", "part", "location", maintain_order=True)
        .agg(
            pl.col("kind").unique().sort().alias("kinds"),
            pl.len().alias("rows"),
            pl.struct(
                "exchange_id",
                "raw_location",
                "kind",
                reference.alias("reference_value"),
                "staging_value",
            )
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
                e["reference_value"],
                e["staging_value"],
            )
            for e in row["examples"]
        ]
        out[(row["route"], row["part"], row["location"])] = (row["kinds"], row["rows"], examples)
    return out


def _required(data: dict[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise DatasetError(
            f"{where}: no {key!r}; the summary is incomplete, rerun `shadowtape diff`"
        )
    return data[key]


def _figures(route: str, data: dict[str, Any], version: int, where: str) -> RouteFigures:
    where = f"{where}: route {route!r}"
    counts = {k: int(_required(data, k, where)) for k in _COUNT_FIELDS}
    if version >= 2:
        counts.update({k: int(_required(data, k, where)) for k in _ADDED_IN_2})
        raw = _required(data, "latency", where)
        latency = {side: LatencyHistogram.from_json(raw.get(side)) for side in SIDES}
    else:
        # Version 1 counted failed sends and staging 5xx together, and had no baseline.
        counts["server_errors"] = counts["staging_errors"] - counts["failed"]
        latency = {
            "recorded": LatencyHistogram.from_json(_required(data, "latency_recorded", where)),
            "staging": LatencyHistogram.from_json(_required(data, "latency_staging", where)),
        }
    return RouteFigures(route=route, latency=latency, **counts)


def _comparison(summary: dict[str, Any]) -> Comparison:
    raw = summary.get("comparison")
    if summary["version"] < 2 or not isinstance(raw, dict):
        return _RECORDED
    reference = raw.get("reference")
    if reference not in ("baseline", "recorded"):
        raise DatasetError(f"diff summary: unknown comparison reference {reference!r}")
    return Comparison(
        reference=reference,
        label=str(raw.get("label") or f"{reference} vs candidate"),
        targets={str(k): str(v) for k, v in (raw.get("targets") or {}).items()},
        noise_from=str(raw.get("noise_from") or ""),
    )


def _latency_seed(route: str) -> int:
    """The bootstrap's seed: fixed per route, so the same summary gives the same verdict."""
    return zlib.crc32(route.encode("utf-8"))


def _test_latency(routes: Sequence[RouteFigures], threshold: float) -> None:
    """Candidate vs baseline per route, one family of tests for the whole report."""
    pairs = [(r.histogram("baseline").total, r.histogram("staging").total) for r in routes]
    tests = count_tests(pairs)
    for r in routes:
        r.latency_test = compare(
            r.route,
            r.histogram("baseline"),
            r.histogram("staging"),
            threshold=threshold,
            tests=tests,
            seed=_latency_seed(r.route),
        )
        r.latency_regressions = int(r.latency_test.regression)


def combine(routes: list[RouteFigures], label: str) -> RouteFigures:
    """The figures of several routes as one (the run, or a scenario's routes)."""
    fig = RouteFigures(
        route=label,
        **{k: sum(getattr(r, k) for r in routes) for k in (*_COUNT_FIELDS, *_ADDED_IN_2)},
        drift_paths=sum(r.drift_paths for r in routes),
        noise_paths=sum(r.noise_paths for r in routes),
    )
    fig.latency = {
        side: LatencyHistogram.merged(r.histogram(side) for r in routes) for side in SIDES
    }
    if routes:
        fig.reference = routes[0].reference
    fig.latency_tested_routes = sum(1 for r in routes if r.latency_test and r.latency_test.tested)
    fig.latency_regressions = sum(r.latency_regressions for r in routes)
    return fig


def load_report(diff_dir: str | Path, latency_threshold: float = DEFAULT_THRESHOLD) -> ReportData:
    diff_dir = Path(diff_dir)
    summary = read_summary(diff_dir)
    version = summary["version"]
    where = str(diff_dir / SUMMARY_NAME)
    comparison = _comparison(summary)
    routes = [_figures(r["route"], r, version, where) for r in summary.get("routes", [])]
    for fig in routes:
        fig.reference = comparison.reference
    if comparison.has_baseline:
        _test_latency(routes, latency_threshold)
    overall = combine(routes, ALL_ROUTES)
    overall.reference = comparison.reference
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
        comparison=comparison,
        latency_threshold=latency_threshold,
        summary_version=version,
    )
