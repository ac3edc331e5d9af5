"""The terminal summary: one table of routes, then the drift (loud), then what noise hid
(quiet, one line per route), then everything that was not compared and why."""

from __future__ import annotations

from collections.abc import Sequence

from shadowtape.report.aggregate import PathFinding, ReportData, RouteFigures
from shadowtape.report.gates import GateResult
from shadowtape.report.scenarios import ScenarioGroup, group_line

MAX_DRIFT_LINES = 40


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _latency(fig: RouteFigures, q: float) -> str:
    return f"{_ms(fig.latency_ms('recorded', q))}/{_ms(fig.latency_ms('staging', q))}"


def _ratio(fig: RouteFigures) -> str:
    r = fig.latency_ratio(0.99)
    return "-" if r is None else f"{r:.2f}x"


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        out.append("  ".join(cells).rstrip())
    return out


def route_table(data: ReportData) -> list[str]:
    header = [
        "ROUTE", "REQS", "STATUS≠", "BODY", "HEADER", "NOISE-ONLY", "ERRORS",
        "P50 ms rec/stg", "P95 ms rec/stg", "P99 ms rec/stg", "P99 x",
    ]  # fmt: skip
    rows = [header]
    for fig in [*data.routes, data.overall]:
        rows.append(
            [
                fig.route,
                str(fig.requests),
                str(fig.status_mismatch),
                str(fig.body_drift),
                str(fig.header_drift),
                str(fig.noise_only_requests),
                f"{fig.error_rate:.1%}",
                _latency(fig, 0.5),
                _latency(fig, 0.95),
                _latency(fig, 0.99),
                _ratio(fig),
            ]
        )
    return _table(rows, right=set(range(1, len(header))))


def _finding_line(p: PathFinding) -> str:
    line = "    " + p.headline()
    if p.examples:
        line += f"  e.g. {p.examples[0].change()}"
    return line


def render(
    data: ReportData, gates: Sequence[GateResult] = (), scenarios: Sequence[ScenarioGroup] = ()
) -> str:
    t = data.totals
    lines = [
        f"shadowtape report: {data.results}",
        f"{t.get('compared', 0)} requests compared across {len(data.routes)} routes; "
        f"{t.get('skipped', 0)} skipped, {t.get('failed', 0)} failed, "
        f"{t.get('noise_pairs', 0)} noise sample pairs",
        "",
        *route_table(data),
        "",
    ]
    drift = [p for p in data.paths if p.classification == "drift"]
    if drift:
        lines.append(
            f"DRIFT: {len(drift)} paths on "
            f"{len({p.route for p in drift})} routes, {data.overall.drift_requests} requests"
        )
        shown = 0
        for fig in data.routes:
            mine = [p for p in drift if p.route == fig.route]
            if not mine:
                continue
            lines.append(f"  {fig.route}")
            for p in mine:
                if shown >= MAX_DRIFT_LINES:
                    break
                lines.append(_finding_line(p))
                shown += 1
        if shown < len(drift):
            lines.append(f"  ... and {len(drift) - shown} more drift paths (see --html)")
    else:
        lines.append("No drift: staging answered like the recording on every compared request.")
    noise_routes = [f for f in data.routes if f.noise_paths]
    if noise_routes:
        lines.append("")
        lines.append(
            f"Noise (kept apart, not drift): {data.overall.noise_paths} paths; "
            f"{data.overall.noise_only_requests} requests differ only by noise"
        )
        for fig in noise_routes:
            names = [p.location for p in data.findings(fig.route, "noise")]
            listed = ", ".join(names[:4]) + (f" +{len(names) - 4}" if len(names) > 4 else "")
            lines.append(
                f"  {fig.route}: {fig.noise_diffs} differences on {fig.noise_paths} paths "
                f"({listed}); hides {fig.noise_only_requests}/{fig.compared} requests"
            )
    unsampled = [f.route for f in data.routes if f.compared and not f.noise_pairs]
    if unsampled:
        lines.append(
            f"No noise sample for {len(unsampled)} routes ({', '.join(unsampled[:3])}"
            f"{'...' if len(unsampled) > 3 else ''}): noise there is told by volatile kinds "
            "and pinned rules only (replay --noise-sample sends a sample twice)"
        )
    not_compared = []
    for key, label in (
        ("skipped", "skipped by replay"),
        ("failed", "failed to send"),
        ("not_compared", "without a recorded response"),
        ("body_undecodable", "recorded bodies that did not decode"),
        ("bodies_truncated", "truncated bodies (status and headers compared only)"),
        ("unmatched_samples", "noise samples without their twin"),
        ("ignored_diffs", "differences ignored by pinned rules"),
    ):
        if t.get(key):
            not_compared.append(f"{t[key]} {label}")
    if not_compared:
        lines.append("Not compared or set aside: " + "; ".join(not_compared))
    if gates:
        lines.append("")
        for g in gates:
            lines.append(("FAIL " if g.tripped else "ok   ") + g.describe())
    if scenarios:
        lines.append("")
        lines.append("Scenarios (routes matched by each scenario's templates):")
        lines.extend(group_line(g) for g in scenarios)
    return "\n".join(lines) + "\n"
