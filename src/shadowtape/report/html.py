"""The HTML report: one self-contained page (inline CSS, JS and SVG; no CDN, no fetches), so it
can be attached to a CI run or mailed and still open years later.

Routes are a sortable table; each route has its drift paths with examples side by side
(recorded | staging), its noise folded away below, and a latency plot (cumulative share of
requests by latency, recorded vs staging, log scale).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from html import escape

from shadowtape.report.aggregate import LATENCY_GROWTH, PathFinding, ReportData, RouteFigures
from shadowtape.report.gates import GateResult
from shadowtape.report.scenarios import ScenarioGroup

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#1d2330}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px}
h3{font-size:15px;margin:18px 0 6px}.muted{color:#667}
table{border-collapse:collapse;margin:8px 0}th,td{padding:4px 8px;border-bottom:1px solid #e3e6ec;
text-align:left;vertical-align:top}th{background:#f5f6f8;position:sticky;top:0}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th:after{content:" \\2195";color:#aab}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.drift{color:#b3261e;font-weight:600}.ok{color:#1b7f3b;font-weight:600}.noise{color:#8a6d00}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;margin-left:6px}
.badge.drift{background:#fde7e5}.badge.ok{background:#e3f4e8}.badge.noise{background:#fff4cc}
pre{margin:0;white-space:pre-wrap;word-break:break-all;font:12px/1.4 ui-monospace,monospace}
.ex td{width:50%}.ex th{width:50%}section.route{border-top:2px solid #e3e6ec;margin-top:24px}
details{margin:8px 0}summary{cursor:pointer}.gate{font-family:ui-monospace,monospace}
svg text{font:11px system-ui,sans-serif;fill:#445}
"""

_JS = """
(function(){
  function key(cell){var v=cell.getAttribute('data-v');return v===null?cell.textContent:v;}
  document.querySelectorAll('table.sortable').forEach(function(table){
    table.querySelectorAll('th').forEach(function(th,col){
      th.addEventListener('click',function(){
        var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
        var asc=th.getAttribute('data-dir')!=='asc';
        table.querySelectorAll('th').forEach(function(h){h.removeAttribute('data-dir');});
        th.setAttribute('data-dir',asc?'asc':'desc');
        var numeric=th.getAttribute('data-type')==='num';
        rows.sort(function(a,b){
          var x=key(a.cells[col]),y=key(b.cells[col]);
          if(numeric){x=parseFloat(x);y=parseFloat(y);x=isNaN(x)?-1:x;y=isNaN(y)?-1:y;}
          return (x<y?-1:x>y?1:0)*(asc?1:-1);
        });
        rows.forEach(function(r){body.appendChild(r);});
      });
    });
  });
})();
"""


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def anchor(route: str) -> str:
    return "route-" + re.sub(r"[^A-Za-z0-9]+", "-", route).strip("-").lower()


def _num(value: float | None, fmt: str = "{:.1f}") -> tuple[str, str]:
    """(sort key, shown text) for a table cell."""
    if value is None:
        return "", "-"
    return f"{value:.6g}", fmt.format(value)


def _cell(value: float | None, fmt: str = "{:.1f}") -> str:
    key, shown = _num(value, fmt)
    return f'<td class="n" data-v="{key}">{_e(shown)}</td>'


def _route_rows(data: ReportData) -> str:
    out = []
    for fig in data.routes:
        status = (
            '<span class="badge drift">drift</span>'
            if fig.drift_paths
            else '<span class="badge ok">ok</span>'
            if fig.compared
            else '<span class="badge">not compared</span>'
        )
        out.append(
            "<tr>"
            f'<td data-v="{_e(fig.route)}"><a href="#{anchor(fig.route)}">{_e(fig.route)}</a>'
            f"{status}</td>"
            + _cell(fig.requests, "{:.0f}")
            + _cell(fig.status_mismatch, "{:.0f}")
            + _cell(fig.body_drift, "{:.0f}")
            + _cell(fig.header_drift, "{:.0f}")
            + _cell(fig.drift_rate * 100, "{:.1f}%")
            + _cell(fig.noise_only_requests, "{:.0f}")
            + _cell(fig.noise_paths, "{:.0f}")
            + _cell(fig.error_rate * 100, "{:.1f}%")
            + "".join(
                _cell(fig.latency_ms(side, q), "{:.1f}")
                for q in (0.5, 0.95, 0.99)
                for side in ("recorded", "staging")
            )
            + _cell(fig.latency_ratio(0.99), "{:.2f}x")
            + "</tr>"
        )
    return "\n".join(out)


_ROUTE_HEADERS = [
    ("Route", "text"), ("Requests", "num"), ("Status ≠", "num"), ("Body drift", "num"),
    ("Header drift", "num"), ("Drift rate", "num"), ("Noise-only requests", "num"),
    ("Noise paths", "num"), ("Error rate", "num"), ("p50 rec ms", "num"),
    ("p50 stg ms", "num"), ("p95 rec ms", "num"), ("p95 stg ms", "num"), ("p99 rec ms", "num"),
    ("p99 stg ms", "num"), ("p99 ratio", "num"),
]  # fmt: skip


def _value(v: str | None) -> str:
    return '<span class="muted">(absent)</span>' if v is None else f"<pre>{_e(v)}</pre>"


def _finding(p: PathFinding) -> str:
    where = p.where
    rows = "".join(
        f"<tr><td><pre>{_e(e.raw_location)} ({_e(e.kind)}) · {_e(e.exchange_id)}</pre>"
        f"{_value(e.recorded)}</td><td>{_value(e.staging)}</td></tr>"
        for e in p.examples
    )
    return (
        f'<div class="finding f-{p.classification}" data-location="{_e(p.location)}">'
        f'<h3><code>{_e(where)}</code> <span class="badge {p.classification}">'
        f'{_e(p.classification)}</span> <span class="muted">{_e("/".join(p.kinds))} in '
        f"{p.requests_differing}/{p.requests} requests; {p.replays_differing}/{p.sampled} "
        f"sampled replay pairs — {_e(p.reason)}</span></h3>"
        f'<table class="ex"><thead><tr><th>Recorded</th><th>Staging</th></tr></thead>'
        f"<tbody>{rows}</tbody></table></div>"
    )


def _latency_svg(fig: RouteFigures, width: int = 520, height: int = 180) -> str:
    """Cumulative share of requests by latency (log x): a shift right is a slowdown."""
    series = {s: fig.latency.get(s, {}) for s in ("recorded", "staging")}
    buckets = [i for s in series.values() for i in s]
    if not buckets:
        return '<p class="muted">No latency measured.</p>'
    left, right, top, bottom = 44, 12, 10, 28
    # A margin either side so the curves do not run along the frame.
    lo = LATENCY_GROWTH ** min(buckets) / 1000 / 1.25
    hi = LATENCY_GROWTH ** (max(buckets) + 1) / 1000 * 1.25
    lo_log, hi_log = math.log10(lo), math.log10(hi)
    if hi_log - lo_log < 0.5:
        mid = (hi_log + lo_log) / 2
        lo_log, hi_log = mid - 0.25, mid + 0.25

    def x(ms: float) -> float:
        return left + (math.log10(ms) - lo_log) / (hi_log - lo_log) * (width - left - right)

    def y(share: float) -> float:
        return top + (1 - share) * (height - top - bottom)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="latency {_e(fig.route)}">',
        f'<rect x="{left}" y="{top}" width="{width - left - right}" '
        f'height="{height - top - bottom}" fill="#fafbfc" stroke="#dde"/>',
    ]
    for tick in range(math.floor(lo_log), math.ceil(hi_log) + 1):
        for mult in (1, 2, 5):
            value = mult * 10.0**tick
            if lo_log <= math.log10(value) <= hi_log:
                px = x(value)
                parts.append(
                    f'<line x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{height - bottom}" '
                    f'stroke="#e8e9ee"/><text x="{px:.1f}" y="{height - bottom + 14}" '
                    f'text-anchor="middle">{value:g}</text>'
                )
    for share in (0.5, 0.9):
        py = y(share)
        parts.append(
            f'<line x1="{left}" y1="{py:.1f}" x2="{width - right}" y2="{py:.1f}" '
            f'stroke="#eee" stroke-dasharray="3 3"/><text x="{left - 4}" y="{py + 4:.1f}" '
            f'text-anchor="end">p{round(share * 100)}</text>'
        )
    colours = {"recorded": "#3b6fd8", "staging": "#d8573b"}
    for side, counts in series.items():
        total = sum(counts.values())
        if not total:
            continue
        seen = 0
        points = []
        for i in sorted(counts):
            points.append(f"{x(LATENCY_GROWTH**i / 1000):.1f},{y(seen / total):.1f}")
            seen += counts[i]
            points.append(f"{x(LATENCY_GROWTH ** (i + 1) / 1000):.1f},{y(seen / total):.1f}")
        parts.append(
            f'<polyline fill="none" stroke="{colours[side]}" stroke-width="2" '
            f'points="{" ".join(points)}"><title>{side}</title></polyline>'
        )
    parts.append(
        f'<text x="{width - right}" y="{top + 14}" text-anchor="end">'
        f'<tspan fill="{colours["recorded"]}">— recorded</tspan> '
        f'<tspan fill="{colours["staging"]}">— staging</tspan></text>'
        f'<text x="{(left + width) / 2}" y="{height - 2}" text-anchor="middle">latency, ms</text>'
        "</svg>"
    )
    return "".join(parts)


def _route_section(data: ReportData, fig: RouteFigures) -> str:
    drift = data.findings(fig.route, "drift")
    noise = data.findings(fig.route, "noise")
    ignored = data.findings(fig.route, "ignored")
    out = [
        f'<section class="route" id="{anchor(fig.route)}"><h2>{_e(fig.route)}</h2>',
        f'<p class="muted">{fig.compared} compared, {fig.skipped} skipped, {fig.failed} failed; '
        f"{fig.drift_requests} with drift; noise hides {fig.noise_only_requests} requests "
        f"({fig.noise_diffs} differences on {len(noise)} paths); "
        f"{fig.noise_pairs} noise sample pairs.</p>",
    ]
    if drift:
        out.append(f'<p class="drift">{len(drift)} drift paths</p>')
        out.extend(_finding(p) for p in drift)
    elif fig.compared:
        out.append('<p class="ok">No drift.</p>')
    if noise:
        out.append(f"<details><summary>Noise: {len(noise)} paths (kept apart)</summary>")
        out.extend(_finding(p) for p in noise)
        out.append("</details>")
    if ignored:
        out.append(f"<details><summary>Ignored by pinned rules: {len(ignored)} paths</summary>")
        out.extend(_finding(p) for p in ignored)
        out.append("</details>")
    out.append("<h3>Latency</h3>" + _latency_svg(fig))
    out.append("</section>")
    return "\n".join(out)


def _scenario_html(groups: Sequence[ScenarioGroup]) -> str:
    if not groups:
        return ""
    items = []
    for g in groups:
        routes = (
            ", ".join(f'<a href="#{anchor(r.route)}">{_e(r.route)}</a>' for r in g.routes)
            or "no routes in this run"
        )
        gates = "".join(
            f'<li class="gate {"drift" if v.tripped else "ok"}">{_e(v.describe())}</li>'
            for v in g.gates
        )
        o = g.overall
        items.append(
            f"<li><strong>{_e(g.name)}</strong> ({_e(g.scenario.risk)} risk): {o.compared} "
            f"compared, {o.drift_requests} with drift, {o.status_mismatch} status mismatches; "
            f"{routes}{f'<ul>{gates}</ul>' if gates else ''}</li>"
        )
    return f"<h2>Scenarios</h2><ul>{''.join(items)}</ul>"


def render(
    data: ReportData, gates: Sequence[GateResult] = (), scenarios: Sequence[ScenarioGroup] = ()
) -> str:
    t = data.totals
    drift_paths = [p for p in data.paths if p.classification == "drift"]
    verdict = (
        f'<p class="drift">Drift: {len(drift_paths)} paths on '
        f"{len({p.route for p in drift_paths})} routes, {data.overall.drift_requests} "
        "requests.</p>"
        if drift_paths
        else '<p class="ok">No drift: staging answered like the recording.</p>'
    )
    gate_html = ""
    if gates:
        items = "".join(
            f'<li class="gate {"drift" if g.tripped else "ok"}">{_e(g.describe())}</li>'
            for g in gates
        )
        gate_html = f"<h2>Gates</h2><ul>{items}</ul>"
    heads = "".join(f'<th data-type="{kind}">{_e(name)}</th>' for name, kind in _ROUTE_HEADERS)
    sections = "\n".join(_route_section(data, fig) for fig in data.routes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>shadowtape report</title><style>{_CSS}</style></head>
<body>
<h1>shadowtape report</h1>
<p class="muted">{_e(data.results)} — {t.get("compared", 0)} requests compared across
{len(data.routes)} routes; {t.get("skipped", 0)} skipped, {t.get("failed", 0)} failed;
{t.get("noise_pairs", 0)} noise sample pairs; {t.get("unmatched_samples", 0)} unmatched samples;
{t.get("body_undecodable", 0)} undecodable recorded bodies; {t.get("bodies_truncated", 0)}
truncated bodies; {t.get("not_compared", 0)} without a recorded response;
{t.get("ignored_diffs", 0)} differences ignored by pinned rules.</p>
<div id="verdict">{verdict}</div>
{gate_html}
{_scenario_html(scenarios)}
<h2>Routes</h2>
<table class="sortable" id="routes"><thead><tr>{heads}</tr></thead>
<tbody>
{_route_rows(data)}
</tbody></table>
{sections}
<script>{_JS}</script>
</body></html>
"""
