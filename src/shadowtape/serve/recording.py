"""A dataset loaded as a double: exchanges indexed by route, session and fingerprint.

A double answers from memory (so does every peer: mitmproxy's server replay, WireMock), so the
dataset is read once, row group by row group, into compact records whose responses are already
rendered to bytes. Indexes make the common request a few dict lookups: route -> fingerprint ->
exchanges in recorded order, the same per recorded session, and path -> exchanges for
requests the recording does not hold verbatim.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from shadowtape.http.routes import parse_route
from shadowtape.route_table import RouteTable
from shadowtape.schema import KIND_EXCHANGES, batch_to_rows, dataset_files, iter_batches
from shadowtape.serve.compare import Compared, RequestView, RouteComparer
from shadowtape.serve.faults import recorded_fault
from shadowtape.serve.matchers import MatcherSet
from shadowtape.serve.wire import Rendered, render
from shadowtape.sessions import SessionKey, session_identity

COLUMNS = [
    "id",
    "session_id",
    "seq",
    "started_at",
    "request_sent_at",
    "response_started_at",
    "response_ended_at",
    "method",
    "path",
    "query",
    "request_headers",
    "request_body",
    "status",
    "reason",
    "response_headers",
    "response_body",
    "response_body_truncated",
    "error",
    "route",
]


@dataclass(slots=True)
class Recorded:
    """One recorded exchange, ready to answer with."""

    index: int
    id: str
    session_id: str
    seq: int
    started_at: int
    route: str
    view: RequestView
    status: int | None
    latency_us: int | None
    fault: str | None  # reset | timeout when the recording has no response
    rendered: Rendered | None
    compared: Compared | None = None


@dataclass(slots=True)
class LoadStats:
    """What loading found; shown at start so nothing is dropped or altered unseen."""

    files: int = 0
    exchanges: int = 0
    routes: int = 0
    sessions_with_key: int = 0
    recorded_failures: int = 0
    truncated_bodies: int = 0
    dropped_headers: int = 0
    without_timings: int = 0


Index = dict[Hashable, list[int]]


@dataclass
class Recording:
    exchanges: list[Recorded]
    routes: RouteTable
    matchers: MatcherSet
    comparers: dict[str, RouteComparer]
    latencies: dict[str, list[int]]  # route -> recorded latencies, sorted
    by_route: dict[str, list[int]] = field(default_factory=dict)
    by_fingerprint: dict[str, Index] = field(default_factory=dict)
    by_path: dict[str, Index] = field(default_factory=dict)
    by_session: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    by_session_fingerprint: dict[tuple[str, str], Index] = field(default_factory=dict)
    by_session_path: dict[tuple[str, str], Index] = field(default_factory=dict)
    session_of: dict[str, str] = field(default_factory=dict)  # identity -> session_id
    stats: LoadStats = field(default_factory=LoadStats)

    def route_of(self, method: str, path: str) -> str:
        return self.routes.route(method, path)

    def comparer(self, route: str) -> RouteComparer:
        comparer = self.comparers.get(route)
        if comparer is None:
            comparer = self.comparers[route] = RouteComparer(self.matchers.for_route(route))
        return comparer


def _latency(row: dict[str, Any]) -> int | None:
    """The recorded latency as the diff stage measures it: first request byte to last
    response byte at the recorder."""
    start = row["started_at"] or row["request_sent_at"]
    end = row["response_ended_at"] or row["response_started_at"]
    if start is None or end is None or end < start:
        return None
    return end - start


def route_table(labels: Iterable[str], extra: RouteTable | None = None) -> RouteTable:
    """A table that maps a request onto the recording's own route templates (most specific
    first), after any templates the user gave, so live and recorded requests share labels."""
    templates = list(extra.templates) if extra is not None else []
    seen = {(t.method, t.path) for t in templates}
    for label in labels:
        t = parse_route(label)
        if (t.method, t.path) not in seen:
            seen.add((t.method, t.path))
            templates.append(t)
    return RouteTable(templates)


def load_recording(
    source: str | os.PathLike[str],
    matchers: MatcherSet,
    session_key: SessionKey,
    user_routes: RouteTable | None = None,
) -> Recording:
    stats = LoadStats(files=len(dataset_files(source)))
    rows: list[tuple[int, str, int, Recorded]] = []
    first_pass = RouteTable()
    for batch in iter_batches(source, KIND_EXCHANGES, columns=COLUMNS):
        for row in batch_to_rows(batch):
            view = RequestView.of(
                row["method"] or "GET",
                row["path"] or "/",
                row["query"],
                row["request_headers"],
                row["request_body"],
            )
            status = row["status"]
            rendered = None
            if status is not None:
                rendered = render(
                    status, row["reason"], row["response_headers"], row["response_body"]
                )
                stats.dropped_headers += rendered.dropped_headers
                stats.truncated_bodies += int(bool(row["response_body_truncated"]))
            fault = recorded_fault(
                status, row["error"] or ("no response" if status is None else None)
            )
            stats.recorded_failures += int(fault is not None)
            latency = _latency(row)
            stats.without_timings += int(latency is None)
            label = first_pass.route(view.method, view.path, row["route"])
            rec = Recorded(
                index=-1,
                id=row["id"],
                session_id=row["session_id"],
                seq=row["seq"],
                started_at=row["started_at"],
                route=label,
                view=view,
                status=status,
                latency_us=latency,
                fault=fault,
                rendered=rendered,
            )
            rows.append((row["started_at"], row["session_id"], row["seq"], rec))
    rows.sort(key=lambda r: r[:3])
    exchanges = [r[3] for r in rows]
    table = route_table(sorted({e.route for e in exchanges}), user_routes)
    recording = Recording(exchanges, table, matchers, {}, {}, stats=stats)
    latencies: dict[str, list[int]] = defaultdict(list)
    for i, rec in enumerate(exchanges):
        rec.index = i
        # Labels again through the one table, so a recorded request and the same live request
        # always land on the same route.
        rec.route = table.route(rec.view.method, rec.view.path)
        rec.compared = recording.comparer(rec.route).compared(rec.view)
        _index(recording, rec)
        if rec.latency_us is not None:
            latencies[rec.route].append(rec.latency_us)
        if session_key.kind != "client":
            identity = session_identity(session_key, _pairs(rec.view))
            if identity is not None and identity not in recording.session_of:
                recording.session_of[identity] = rec.session_id
    recording.latencies = {route: sorted(values) for route, values in latencies.items()}
    stats.exchanges = len(exchanges)
    stats.routes = len(recording.by_route)
    stats.sessions_with_key = len(set(recording.session_of.values()))
    return recording


def _pairs(view: RequestView) -> list[tuple[str, str]]:
    return [(name, value) for name, values in view.headers.items() for value in values]


def _index(recording: Recording, rec: Recorded) -> None:
    assert rec.compared is not None
    fp = rec.compared.fingerprint
    route, path = rec.route, rec.view.path
    recording.by_route.setdefault(route, []).append(rec.index)
    recording.by_fingerprint.setdefault(route, {}).setdefault(fp, []).append(rec.index)
    recording.by_path.setdefault(route, {}).setdefault(path, []).append(rec.index)
    key = (rec.session_id, route)
    recording.by_session.setdefault(key, []).append(rec.index)
    recording.by_session_fingerprint.setdefault(key, {}).setdefault(fp, []).append(rec.index)
    recording.by_session_path.setdefault(key, {}).setdefault(path, []).append(rec.index)
