"""`shadowtape inspect`: what a dataset holds, and what the capture lost on the way.

Streams the few columns it needs row group by row group; the drop and skip counters come from
the files' metadata, where the capture writer keeps its running figures.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from shadowtape.capture.packet_counters import PacketCounters
from shadowtape.capture.writer import CaptureCounters
from shadowtape.governance.fingerprint import dataset_fingerprint
from shadowtape.governance.lineage import lineage_lines, read_lineage
from shadowtape.http.routes import infer_template, route_label
from shadowtape.schema import (
    KIND_EXCHANGES,
    META_CAPTURE_ID,
    META_CAPTURE_WORKER,
    META_SANITIZED,
    iter_batches,
    read_files,
)

TOP = 10
_COLUMNS = [
    "session_id",
    "started_at",
    "method",
    "host",
    "path",
    "route",
    "status",
    "error",
    "request_body_truncated",
    "response_body_truncated",
]


def route_of(method: str, path: str | None) -> str:
    """A rough endpoint template for paths without a recorded route: ids become {id}."""
    return route_label(method, infer_template(path, fold=True))


def status_class(status: int | None) -> str:
    return "no response" if status is None else f"{status // 100}xx"


@dataclass(slots=True)
class InspectReport:
    path: str
    files: int = 0
    rows: int = 0
    first_at: str | None = None
    last_at: str | None = None
    sessions: int = 0
    sanitized: bool = False
    captures: list[str] = field(default_factory=list)
    methods: dict[str, int] = field(default_factory=dict)
    status_mix: dict[str, int] = field(default_factory=dict)
    top_hosts: list[tuple[str, int]] = field(default_factory=list)
    top_routes: list[tuple[str, int]] = field(default_factory=list)
    error_rows: int = 0
    truncated_bodies: int = 0
    capture_counters: dict[str, int] = field(default_factory=dict)
    fingerprint: str | None = None
    # Where the data came from, newest step first (shadowtape.governance.lineage).
    lineage: dict[str, Any] | None = None
    packet_counters: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["top_hosts"] = [{"host": h, "count": n} for h, n in self.top_hosts]
        out["top_routes"] = [{"route": r, "count": n} for r, n in self.top_routes]
        return out


def _iso(us: int | None) -> str | None:
    if us is None:
        return None
    return datetime.fromtimestamp(us / 1_000_000, UTC).isoformat().replace("+00:00", "Z")


def capture_counters(metas: list[dict[str, str]]) -> dict[str, int]:
    """Each capture process's figures as its latest file has them (the one with the most
    rows written: counts only grow, except `pending`, which is why no per-field maximum is
    taken); captures sharing a directory, and the workers of one capture, add up."""
    return _latest_totals(metas, CaptureCounters.from_metadata, lambda c: (c.written, c.seen))


def packet_counters(metas: list[dict[str, str]]) -> dict[str, int]:
    """The packet figures of off-path captures and packet imports, latest file of each."""
    return _latest_totals(metas, PacketCounters.from_metadata, lambda c: (c.inputs, c.packets))


def _latest_totals(
    metas: list[dict[str, str]],
    read: Callable[[dict[str, str]], Any],
    order: Callable[[Any], tuple[int, int]],
) -> dict[str, int]:
    latest: dict[tuple[str, str], Any] = {}
    for meta in metas:
        counters = read(meta)
        if counters is None:
            continue
        who = (meta.get(META_CAPTURE_ID, ""), meta.get(META_CAPTURE_WORKER, ""))
        held = latest.get(who)
        if held is None or order(counters) > order(held):
            latest[who] = counters
    totals: Counter[str] = Counter()
    for counters in latest.values():
        totals.update(asdict(counters))
    return dict(totals)


def inspect_dataset(path: str | os.PathLike[str]) -> InspectReport:
    infos = read_files(path, KIND_EXCHANGES)
    report = InspectReport(path=str(path), files=len(infos))
    if not infos:
        return report
    metas = [i.metadata for i in infos]
    report.sanitized = all(m.get(META_SANITIZED) == "true" for m in metas)
    report.captures = sorted({m[META_CAPTURE_ID] for m in metas if META_CAPTURE_ID in m})
    report.capture_counters = capture_counters(metas)
    report.fingerprint = dataset_fingerprint(path).fingerprint
    report.lineage = read_lineage(metas[-1])
    report.packet_counters = packet_counters(metas)
    sessions: set[str] = set()
    hosts: Counter[str] = Counter()
    routes: Counter[str] = Counter()
    methods: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    first = last = None
    for batch in iter_batches(
        path, KIND_EXCHANGES, columns=_COLUMNS, files=[i.path for i in infos]
    ):
        report.rows += batch.num_rows
        started = batch.column("started_at").cast(pa.int64())
        lo, hi = pc.min(started).as_py(), pc.max(started).as_py()
        first = lo if first is None or (lo is not None and lo < first) else first
        last = hi if last is None or (hi is not None and hi > last) else last
        sessions.update(batch.column("session_id").to_pylist())
        cols = {n: batch.column(n).to_pylist() for n in _COLUMNS if n != "started_at"}
        for i in range(batch.num_rows):
            method = cols["method"][i]
            methods[method] += 1
            hosts[cols["host"][i] or "(none)"] += 1
            routes[cols["route"][i] or route_of(method, cols["path"][i])] += 1
            statuses[status_class(cols["status"][i])] += 1
            report.error_rows += cols["error"][i] is not None
            report.truncated_bodies += bool(cols["request_body_truncated"][i]) + bool(
                cols["response_body_truncated"][i]
            )
    report.first_at, report.last_at = _iso(first), _iso(last)
    report.sessions = len(sessions)
    report.methods = dict(methods.most_common())
    report.status_mix = dict(sorted(statuses.items()))
    report.top_hosts = hosts.most_common(TOP)
    report.top_routes = routes.most_common(TOP)
    return report


def format_report(report: InspectReport) -> str:
    lines = [f"{report.path}: {report.rows} exchanges in {report.files} files"]
    if not report.files:
        lines.append("  no finalized files yet (a running capture finalizes on its roll interval)")
        return "\n".join(lines)
    lines.append(f"  time span   {report.first_at} .. {report.last_at}")
    lines.append(f"  sessions    {report.sessions}")
    lines.append(f"  sanitized   {'yes' if report.sanitized else 'no'}")
    lines.append(f"  fingerprint {report.fingerprint}")
    if report.lineage:
        lines.append("  lineage")
        lines.extend(lineage_lines(report.lineage, "    "))
    if report.captures:
        lines.append(f"  captures    {', '.join(report.captures)}")
    lines.append("  methods     " + ", ".join(f"{m} {n}" for m, n in report.methods.items()))
    lines.append("  status      " + ", ".join(f"{s} {n}" for s, n in report.status_mix.items()))
    lines.append(f"  errors      {report.error_rows} exchanges without a normal response")
    lines.append(f"  truncated   {report.truncated_bodies} bodies")
    lines.append("  top hosts")
    lines.extend(f"    {n:>8}  {h}" for h, n in report.top_hosts)
    lines.append("  top routes")
    lines.extend(f"    {n:>8}  {r}" for r, n in report.top_routes)
    if report.capture_counters:
        lines.extend(_capture_lines(report))
        if report.packet_counters:
            lines.append(_packet_line(report.packet_counters))
    return "\n".join(lines)


def _packet_line(p: dict[str, int]) -> str:
    return (
        "  packets     "
        f"{p.get('packets', 0)} in {p.get('inputs', 0)} files, dropped by kernel "
        f"{p.get('packets_dropped_kernel', 0)} / interface "
        f"{p.get('packets_dropped_interface', 0)} / dumpcap "
        f"{p.get('packets_dropped_capture', 0)}; requests {p.get('requests', 0)}, "
        f"without response {p.get('requests_without_response', 0)}, responses without "
        f"request {p.get('responses_without_request', 0)}, rejoined "
        f"{p.get('exchanges_rejoined', 0)}; unreadable streams "
        f"{p.get('streams_unreassembled', 0)}, cut messages {p.get('messages_cut', 0)}, "
        f"HTTP/2 header blocks {p.get('h2_headers_undecodable', 0)}, packet files given "
        f"up {p.get('ring_files_dropped', 0)}"
    )


def _capture_lines(report: InspectReport) -> list[str]:
    """written + dropped (by cause) + pending = seen, as the capture's last file says."""
    c = CaptureCounters(**report.capture_counters)
    causes = ", ".join(f"{cause} {n}" for cause, n in c.drop_causes().items())
    lines = [
        f"  capture     seen {c.seen} = written {c.written} + dropped {c.dropped()} "
        f"+ pending {c.pending}",
        f"  dropped     {causes}",
        f"  skipped     filter {c.skipped_filter}, sampling {c.skipped_sample}, "
        f"invalid {c.skipped_invalid}, non-HTTP {c.skipped_non_http}; "
        f"streamed bodies not kept {c.streamed_bodies}",
    ]
    if c.pending:
        lines.append(
            f"  note        {c.pending} exchanges were not yet in a file when the last one was "
            "finalized (the capture is still running, or was killed and lost them)"
        )
    if c.written > report.rows:
        lines.append(
            f"  note        {c.written - report.rows} written exchanges are not in this "
            "directory (files removed or moved?)"
        )
    return lines
