"""`shadowtape diff`: results dataset in, diff dataset (+ summary.json) out.

Two passes keep memory flat however large the results:
1. stream the results row group by row group, compare each replayed exchange, write every
   difference to a hidden work dataset and count R/S/N per route and path;
2. decide noise vs drift per route and path (that needs the counts of *all* requests), then
   stream the work dataset again, stamping each row with its classification.
Only the noise sample (replay_pass 2 and its pass-1 twin) and a bounded number of recordings
of repeated requests are held in memory. The output appears by one rename when complete, so a
failed run never leaves a diff that looks whole.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from shadowtape import schema
from shadowtape.diff import bodies
from shadowtape.diff.compare import (
    BODY,
    HEADER,
    STATUS,
    CompareOptions,
    Difference,
    Response,
    compare_responses,
)
from shadowtape.diff.latency import LatencyHistogram
from shadowtape.diff.noise import (
    DRIFT,
    IGNORED,
    NOISE,
    NoiseModel,
    NoiseThresholds,
    PathDecision,
    PinnedRules,
    volatile_kind,
)
from shadowtape.diff.routes import RouteTable
from shadowtape.errors import DatasetError, InputError

DIFF_DIRNAME = "_diff"
SUMMARY_NAME = "summary.json"
SUMMARY_KIND = "shadowtape.diff-summary"
SUMMARY_VERSION = 1

_COLUMNS = [
    "id",
    "replay_id",
    "replay_pass",
    "outcome",
    "method",
    "path",
    "query",
    "request_body",
    "route",
    "started_at",
    "request_sent_at",
    "response_ended_at",
    "status",
    "response_headers",
    "response_body",
    "response_body_truncated",
    "sent_at",
    "done_at",
    "staging_status",
    "staging_headers",
    "staging_body",
    "staging_body_truncated",
    "staging_error",
]
_SIDES = {
    "recorded": ("status", "response_headers", "response_body", "response_body_truncated"),
    "staging": ("staging_status", "staging_headers", "staging_body", "staging_body_truncated"),
}
_TIME_COLUMNS = {"started_at", "request_sent_at", "response_ended_at", "sent_at", "done_at"}
_PAIR_COLUMNS = {"query", "response_headers", "staging_headers"}


@dataclass
class DiffOptions:
    compare: CompareOptions = field(default_factory=CompareOptions)
    thresholds: NoiseThresholds = field(default_factory=NoiseThresholds)
    pinned: PinnedRules = field(default_factory=PinnedRules)
    routes: RouteTable = field(default_factory=RouteTable)
    # How many distinct requests keep their first recorded answer, to compare with a later
    # recording of the same request (a source of noise evidence). Bounds memory.
    max_recorded_twins: int = 10_000
    row_group_rows: int = 10_000


@dataclass
class RouteStats:
    route: str
    requests: int = 0  # replay-proper rows (pass 1), whatever their outcome
    sent: int = 0
    skipped: int = 0
    failed: int = 0
    compared: int = 0
    not_compared: int = 0  # sent, but the recording has no response (recorded error)
    body_skipped: dict[str, int] = field(default_factory=dict)
    body_undecodable: int = 0
    staging_errors: int = 0  # failed sends + staging 5xx / transport errors
    recorded_errors: int = 0  # recorded 5xx
    status_mismatch: int = 0  # requests whose status difference is drift
    header_drift: int = 0
    body_drift: int = 0
    drift_requests: int = 0
    noise_only_requests: int = 0  # requests that differ only by noise: what noise hides
    drift_diffs: int = 0
    noise_diffs: int = 0
    ignored_diffs: int = 0
    noise_pairs: int = 0  # sampled pairs compared for noise (S's denominator)
    latency_recorded: LatencyHistogram = field(default_factory=LatencyHistogram)
    latency_staging: LatencyHistogram = field(default_factory=LatencyHistogram)

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if not k.startswith("latency_")}
        out["body_skipped"] = dict(sorted(self.body_skipped.items()))
        for side in ("recorded", "staging"):
            hist: LatencyHistogram = getattr(self, f"latency_{side}")
            out[f"latency_{side}"] = hist.to_json()
            for q in (50, 95, 99):
                out[f"p{q}_{side}_ms"] = hist.quantile(q / 100)
        return out


@dataclass
class DiffSummary:
    out: Path
    rows: int
    diff_rows: int
    routes: dict[str, RouteStats]
    decisions: list[PathDecision]
    noise_pairs: int
    unmatched_samples: int  # pass-2 rows without a pass-1 twin (or the other way round)
    payload: dict[str, Any]


def _column(batch: pa.RecordBatch, name: str) -> list[Any]:
    col = batch.column(name)
    if name in _TIME_COLUMNS:
        return col.cast(pa.int64()).to_pylist()
    if name in _PAIR_COLUMNS:
        return [[(kv["name"], kv["value"]) for kv in v] if v else [] for v in col.to_pylist()]
    return col.to_pylist()


def results_fingerprint(results: Path) -> list[list[Any]]:
    """Names, sizes and mtimes of the results files: tells the report a diff is stale."""
    out = []
    for f in schema.dataset_files(results):
        st = f.stat()
        out.append(
            [
                str(f.relative_to(results)) if results.is_dir() else f.name,
                st.st_size,
                st.st_mtime_ns,
            ]
        )
    return out


def default_out(results: Path) -> Path:
    """RESULTS/_diff; beside a single results file, its directory's _diff."""
    return results.with_name(DIFF_DIRNAME) if results.is_file() else results / DIFF_DIRNAME


def _check_out(results: Path, out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / SUMMARY_NAME).exists():
        raise InputError(
            f"{out}: exists and is not a shadowtape diff; choose another --out or remove it"
        )
    try:
        rel = out.resolve().relative_to(results.resolve())
    except ValueError:
        return
    if rel.parts and not schema.is_hidden(rel.parts[0]):
        raise InputError(
            f"{out}: inside the results dataset, where its files would be read as results; "
            f"use a name starting with '_' (the default is {DIFF_DIRNAME})"
        )


class _RowBuffer:
    """Diff rows collected column by column and flushed to a dataset writer in batches."""

    def __init__(self, writer: schema.DatasetWriter, size: int) -> None:
        self.writer = writer
        self.size = size
        self.cols: dict[str, list[Any]] = {n: [] for n in schema.DIFF_SCHEMA.names}
        self.rows = 0

    def add(
        self,
        exchange_id: str,
        replay_id: str | None,
        route: str,
        d: Difference,
        classification: str | None,
        reason: str | None,
    ) -> None:
        c = self.cols
        c["exchange_id"].append(exchange_id)
        c["replay_id"].append(replay_id)
        c["route"].append(route)
        c["part"].append(d.part)
        c["location"].append(d.location)
        c["raw_location"].append(d.raw_location)
        c["kind"].append(d.kind)
        c["recorded_value"].append(d.recorded)
        c["staging_value"].append(d.staging)
        c["classification"].append(classification)
        c["reason"].append(reason)
        self.rows += 1
        if len(c["exchange_id"]) >= self.size:
            self.flush()

    def flush(self) -> None:
        if not self.cols["exchange_id"]:
            return
        arrays = [pa.array(self.cols[f.name], type=f.type) for f in schema.DIFF_SCHEMA]
        self.writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema.DIFF_SCHEMA))
        self.cols = {n: [] for n in schema.DIFF_SCHEMA.names}


class DiffRun:
    """One run of the diff over one results dataset (see the module docstring)."""

    def __init__(
        self,
        results: Path,
        out: Path,
        options: DiffOptions,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.results = results
        self.out = out
        self.options = options
        self.progress = progress or (lambda _n: None)
        self.model = NoiseModel(thresholds=options.thresholds, pinned=options.pinned)
        self.routes: dict[str, RouteStats] = {}
        self.rows = 0
        self.noise_pairs = 0
        self.sampled_ids: set[str] = set()
        # id -> (route, staging response) of a sampled exchange, until its twin arrives.
        self._sample_first: dict[str, tuple[str | None, Response | None]] = {}
        self._twins: dict[tuple[Any, ...], Response] = {}

    # -- pass 0: which exchanges were sent twice ------------------------------------------

    def _find_sampled(self, files: list[Path]) -> None:
        for batch in schema.iter_batches(
            self.results, schema.KIND_RESULTS, columns=["id", "replay_pass"], files=files
        ):
            ids = batch.column("id").to_pylist()
            passes = batch.column("replay_pass").to_pylist()
            self.sampled_ids.update(i for i, p in zip(ids, passes, strict=True) if p == 2)

    # -- pass 1 ---------------------------------------------------------------------------

    def _stats(self, route: str) -> RouteStats:
        stats = self.routes.get(route)
        if stats is None:
            stats = self.routes[route] = RouteStats(route)
        return stats

    def _response(self, c: dict[str, list[Any]], i: int, side: str, stats: RouteStats) -> Response:
        status_col, headers_col, body_col, truncated_col = _SIDES[side]
        status, headers, body = c[status_col][i], c[headers_col][i], c[body_col][i]
        truncated = c[truncated_col][i]
        body = body or b""
        # The recording holds the body as it crossed the wire; httpx already decoded staging's.
        if side == "recorded":
            try:
                body = bodies.decode_content(body, bodies.header_value(headers, "content-encoding"))
            except bodies.BodyDecodeError:
                # Compared as the bytes they are; counted, since a difference found on an
                # undecodable body may only be its encoding.
                stats.body_undecodable += 1
        return Response(status, headers, body, bool(truncated))

    def _pair_sample(self, ex_id: str, route: str | None, resp: Response | None) -> None:
        first = self._sample_first.pop(ex_id, None)
        if first is None:
            self._sample_first[ex_id] = (route, resp)
            return
        first_route, first_resp = first
        route = route or first_route
        if route is None or resp is None or first_resp is None:
            return
        comparison = compare_responses(first_resp, resp, self.options.compare)
        self.model.observe_replay_pair(route, comparison.diffs)
        self._stats(route).noise_pairs += 1
        self.noise_pairs += 1

    def _recorded_twin(
        self, route: str, method: str, path: Any, query: Any, body: Any, resp: Response
    ) -> None:
        key = (method, path, tuple(query), body)
        first = self._twins.get(key)
        if first is None:
            if len(self._twins) < self.options.max_recorded_twins:
                self._twins[key] = resp
            return
        comparison = compare_responses(first, resp, self.options.compare)
        self.model.observe_replay_pair(route, comparison.diffs)
        self._stats(route).noise_pairs += 1
        self.noise_pairs += 1

    def _first_pass(self, files: list[Path], work: schema.DatasetWriter) -> None:
        opts = self.options
        buffer = _RowBuffer(work, opts.row_group_rows)
        for batch in schema.iter_batches(
            self.results, schema.KIND_RESULTS, columns=_COLUMNS, files=files
        ):
            c = {name: _column(batch, name) for name in _COLUMNS}
            for i in range(batch.num_rows):
                self.rows += 1
                ex_id = c["id"][i]
                route = opts.routes.route(c["method"][i], c["path"][i], c["route"][i])
                stats = self._stats(route)
                sent = c["outcome"][i] == "sent"
                if c["replay_pass"][i] == 2:
                    resp = None
                    if sent:
                        resp = self._response(c, i, "staging", stats)
                    self._pair_sample(ex_id, route, resp)
                    continue
                stats.requests += 1
                outcome = c["outcome"][i]
                if outcome == "skipped":
                    stats.skipped += 1
                    continue
                if not sent:
                    stats.failed += 1
                    stats.staging_errors += 1
                    if ex_id in self.sampled_ids:
                        self._pair_sample(ex_id, route, None)
                    continue
                stats.sent += 1
                staging_status = c["staging_status"][i]
                if c["staging_error"][i] or staging_status is None or staging_status >= 500:
                    stats.staging_errors += 1
                rec_status = c["status"][i]
                if rec_status is not None and rec_status >= 500:
                    stats.recorded_errors += 1
                started = c["started_at"][i]
                ended = c["response_ended_at"][i]
                if ended is not None:
                    stats.latency_recorded.add(ended - (started or c["request_sent_at"][i]))
                if c["done_at"][i] is not None and c["sent_at"][i] is not None:
                    stats.latency_staging.add(c["done_at"][i] - c["sent_at"][i])
                stg = self._response(c, i, "staging", stats)
                if ex_id in self.sampled_ids:
                    self._pair_sample(ex_id, route, stg)
                if rec_status is None:
                    stats.not_compared += 1
                    continue
                rec = self._response(c, i, "recorded", stats)
                self._recorded_twin(
                    route, c["method"][i], c["path"][i], c["query"][i], c["request_body"][i], rec
                )
                comparison = compare_responses(rec, stg, opts.compare)
                stats.compared += 1
                self.model.observe_request(route)
                if comparison.body_skipped:
                    why = comparison.body_skipped
                    stats.body_skipped[why] = stats.body_skipped.get(why, 0) + 1
                if not comparison.diffs:
                    continue
                staged_at = c["sent_at"][i]
                volatile = [volatile_kind(d, started, staged_at) for d in comparison.diffs]
                self.model.observe_differences(route, comparison.diffs, volatile)
                replay_id = c["replay_id"][i]
                for d, why in zip(comparison.diffs, volatile, strict=True):
                    buffer.add(ex_id, replay_id, route, d, None, why)
            self.progress(self.rows)
        buffer.flush()

    # -- pass 2 ---------------------------------------------------------------------------

    def _second_pass(self, work_dir: Path, final: schema.DatasetWriter) -> int:
        decisions: dict[tuple[str, str, str], PathDecision] = {}
        written = 0
        current: str | None = None
        classes: set[tuple[str, str]] = set()
        current_route = ""

        def close_exchange() -> None:
            if current is None:
                return
            stats = self._stats(current_route)
            drift_parts = {part for part, cls in classes if cls == DRIFT}
            if drift_parts:
                stats.drift_requests += 1
                stats.status_mismatch += STATUS in drift_parts
                stats.header_drift += HEADER in drift_parts
                stats.body_drift += BODY in drift_parts
            elif any(cls == NOISE for _, cls in classes):
                stats.noise_only_requests += 1

        files = schema.dataset_files(work_dir)
        for batch in schema.iter_batches(work_dir, schema.KIND_DIFFS, files=files):
            ids = batch.column("exchange_id").to_pylist()
            routes = batch.column("route").to_pylist()
            parts = batch.column("part").to_pylist()
            locations = batch.column("location").to_pylist()
            volatile = batch.column("reason").to_pylist()
            out_cls: list[str] = []
            out_reason: list[str] = []
            for ex_id, route, part, loc, why in zip(
                ids, routes, parts, locations, volatile, strict=True
            ):
                if ex_id != current:
                    close_exchange()
                    current, current_route, classes = ex_id, route, set()
                key = (route, part, loc)
                decision = decisions.get(key)
                if decision is None:
                    decision = decisions[key] = self.model.decide(route, part, loc)
                cls = decision.classification
                classes.add((part, cls))
                stats = self._stats(route)
                if cls == DRIFT:
                    stats.drift_diffs += 1
                elif cls == NOISE:
                    stats.noise_diffs += 1
                else:
                    stats.ignored_diffs += 1
                out_cls.append(cls)
                # A value that is volatile in itself says so, even on a path decided otherwise.
                out_reason.append(decision.reason if why is None or cls != NOISE else why)
            arrays = [batch.column(n) for n in schema.DIFF_SCHEMA.names]
            names = schema.DIFF_SCHEMA.names
            arrays[names.index("classification")] = pa.array(out_cls, type=pa.string())
            arrays[names.index("reason")] = pa.array(out_reason, type=pa.string())
            final.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema.DIFF_SCHEMA))
            written += batch.num_rows
        close_exchange()
        return written

    # -- the run --------------------------------------------------------------------------

    def run(self) -> DiffSummary:
        files = schema.dataset_files(self.results)
        if not files:
            raise DatasetError(f"{self.results}: no Parquet files; is this a results dataset?")
        for f in files:
            pf, _ = schema.open_file(f, schema.KIND_RESULTS)
            pf.close()
        _check_out(self.results, self.out)
        parent = self.out.parent
        parent.mkdir(parents=True, exist_ok=True)
        work_dir = parent / f".{self.out.name}.work-{os.getpid()}"
        new_dir = parent / f".{self.out.name}.new-{os.getpid()}"
        for d in (work_dir, new_dir):
            shutil.rmtree(d, ignore_errors=True)
        roll = schema.RollPolicy(row_group_rows=self.options.row_group_rows)
        try:
            work = schema.DatasetWriter(
                work_dir, schema.KIND_DIFFS, roll=roll, prefix="work", compression="lz4"
            )
            with work:
                self._find_sampled(files)
                self._first_pass(files, work)
            final = schema.DatasetWriter(new_dir, schema.KIND_DIFFS, roll=roll, prefix="diff")
            with final:
                written = self._second_pass(work_dir, final)
            decisions = self.model.decisions()
            unmatched = len(self._sample_first)
            payload = self._payload(files, decisions, written, unmatched)
            schema.write_json_atomic(new_dir / SUMMARY_NAME, payload)
            if self.out.exists():
                shutil.rmtree(self.out)
            os.replace(new_dir, self.out)
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
            shutil.rmtree(new_dir, ignore_errors=True)
        return DiffSummary(
            out=self.out,
            rows=self.rows,
            diff_rows=written,
            routes=self.routes,
            decisions=decisions,
            noise_pairs=self.noise_pairs,
            unmatched_samples=unmatched,
            payload=payload,
        )

    def _payload(
        self, files: list[Path], decisions: list[PathDecision], written: int, unmatched: int
    ) -> dict[str, Any]:
        routes = [self.routes[r].to_json() for r in sorted(self.routes)]
        totals: dict[str, Any] = {}
        for key in (
            "requests",
            "sent",
            "skipped",
            "failed",
            "compared",
            "not_compared",
            "body_undecodable",
            "staging_errors",
            "status_mismatch",
            "drift_requests",
            "noise_only_requests",
            "drift_diffs",
            "noise_diffs",
            "ignored_diffs",
        ):
            totals[key] = sum(r[key] for r in routes)
        totals["bodies_truncated"] = sum(r["body_skipped"].get("body truncated", 0) for r in routes)
        totals["rows"] = self.rows
        totals["diff_rows"] = written
        totals["noise_pairs"] = self.noise_pairs
        totals["unmatched_samples"] = unmatched
        totals["drift_paths"] = sum(1 for d in decisions if d.classification == DRIFT)
        totals["noise_paths"] = sum(1 for d in decisions if d.classification == NOISE)
        totals["ignored_paths"] = sum(1 for d in decisions if d.classification == IGNORED)
        opts = self.options
        return {
            "kind": SUMMARY_KIND,
            "version": SUMMARY_VERSION,
            "results": str(self.results),
            "results_files": results_fingerprint(self.results),
            "options": {
                "headers": sorted(opts.compare.headers),
                "key_fields": list(opts.compare.key_fields),
                "value_limit": opts.compare.value_limit,
                "max_diffs": opts.compare.max_diffs,
                "min_request_rate": opts.thresholds.min_request_rate,
                "min_contrast": opts.thresholds.min_contrast,
                "pinned_rules": [asdict(r) for r in opts.pinned.rules],
            },
            "totals": totals,
            "routes": routes,
            "paths": [asdict(d) for d in decisions],
        }


def run_diff(
    results: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    options: DiffOptions | None = None,
    progress: Callable[[int], None] | None = None,
) -> DiffSummary:
    """Compare every replayed exchange of `results`; write the diff dataset to `out`
    (default RESULTS/_diff) with summary.json beside its files."""
    results_path = Path(results)
    out_path = Path(out) if out is not None else default_out(results_path)
    return DiffRun(results_path, out_path, options or DiffOptions(), progress).run()
