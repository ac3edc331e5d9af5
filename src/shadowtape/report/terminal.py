"""The terminal summary: what was compared with what, one table of routes, then the drift
(loud), the latency regressions, the error budgets, what noise hid (quiet, one line per
route), and everything that was not compared and why."""

from __future__ import annotations

from collections.abc import Sequence

from shadowtape.latency import MIN_SAMPLES, describe_shift
from shadowtape.report.aggregate import PathFinding, ReportData, RouteFigures
from shadowtape.report.gates import GateResult
from shadowtape.report.scenarios import ScenarioGroup, group_line

MAX_DRIFT_LINES = 40


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _latency(fig: RouteFigures, q: float) -> str:
    return f"{_ms(fig.latency_ms(fig.reference, q))}/{_ms(fig.latency_ms('staging', q))}"


def _ratio(fig: RouteFigures) -> str:
    r = fig.latency_ratio(0.99)
    return "-" if r is None else f"{r:.2f}x"


def _verdict(fig: RouteFigures) -> str:
    test = fig.latency_test
    if test is None or not test.tested:
        return "-"
    return "SLOWER" if test.regression else "ok"


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
    sides = "base/cand" if data.comparison.has_baseline else "rec/stg"
    header = [
        "ROUTE", "REQS", "STATUS≠", "BODY", "HEADER", "NOISE-ONLY", "ERRORS",
        f"P50 ms {sides}", f"P95 ms {sides}", f"P99 ms {sides}", "P99 x",
    ]  # fmt: skip
    if data.comparison.has_baseline:
        header.append("LATENCY")
    rows = [header]
    for fig in [*data.routes, data.overall]:
        row = [
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
        if data.comparison.has_baseline:
            row.append(_verdict(fig) if fig is not data.overall else "")
        rows.append(row)
    return _table(rows, right=set(range(1, len(header) - data.comparison.has_baseline)))


def _finding_line(p: PathFinding) -> str:
    line = "    " + p.headline()
    if p.examples:
        line += f"  e.g. {p.examples[0].change()}"
    return line


def latency_lines(data: ReportData) -> list[str]:
    """The latency verdict: findings with a baseline, a context note without one."""
    if not data.comparison.has_baseline:
        return [
            "Latency: recorded vs staging is context only (recorded through the capture proxy "
            "under production's load); replay with --baseline to test for regressions."
        ]
    tests = data.latency_tests
    tested = [t for t in tests if t.tested]
    found = data.latency_regressions
    how = (
        f"candidate vs baseline in the same run; bootstrap interval of the p50/p95 ratio, "
        f"{len(tested)} routes tested, threshold {data.latency_threshold:.0%}"
    )
    lines = []
    if found:
        routes = "route" if len(found) == 1 else "routes"
        lines.append(f"LATENCY REGRESSIONS: {len(found)} {routes} ({how})")
        for t in found:
            lines.append(f"  {t.route}: " + "; ".join(describe_shift(s) for s in t.regressed))
    else:
        lines.append(f"No latency regression ({how}).")
    untested = [t.route for t in tests if not t.tested]
    if untested:
        lines.append(
            f"  {len(untested)} routes had too few samples to test (p50 needs "
            f"{MIN_SAMPLES[0.5]} a side): {', '.join(untested[:4])}"
            + ("..." if len(untested) > 4 else "")
        )
    return lines


def slo_lines(data: ReportData) -> list[str]:
    if not data.slo:
        return []
    exhausted = [r for r in data.slo if r.exhausted]
    head = f"Error budgets ({len(data.slo)} objectives"
    head += f", {len(exhausted)} exhausted):" if exhausted else ", all within budget):"
    return [head, *(f"  {r.describe()}" for r in data.slo)]


def render(
    data: ReportData, gates: Sequence[GateResult] = (), scenarios: Sequence[ScenarioGroup] = ()
) -> str:
    t = data.totals
    compared = data.comparison
    lines = [
        f"shadowtape report: {data.results}",
        f"comparing {compared.describe()}"
        + (f"; noise from {compared.noise_from}" if compared.noise_from else ""),
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
        who = (
            "the candidate answered like the baseline"
            if compared.has_baseline
            else ("staging answered like the recording")
        )
        lines.append(f"No drift: {who} on every compared request.")
    lines.append("")
    lines.extend(latency_lines(data))
    slo = slo_lines(data)
    if slo:
        lines.append("")
        lines.extend(slo)
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
        how = (
            "replay --baseline-2 answers every request twice"
            if compared.has_baseline
            else "replay --noise-sample sends a sample twice"
        )
        lines.append(
            f"No noise sample for {len(unsampled)} routes ({', '.join(unsampled[:3])}"
            f"{'...' if len(unsampled) > 3 else ''}): noise there is told by volatile kinds "
            f"and pinned rules only ({how})"
        )
    not_compared = []
    reference = "a baseline answer" if compared.has_baseline else "a recorded response"
    for key, label in (
        ("skipped", "skipped by replay"),
        ("failed", "failed to send"),
        ("not_compared", f"without {reference}"),
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
