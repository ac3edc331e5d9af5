"""`shadowtape diff`: results dataset in, diff dataset (+ summary.json) out.

What is compared with the candidate (the staging_* columns) is the baseline's answer when the
results have one (`replay --baseline`: like with like, Diffy's primary vs candidate), else the
recorded response; the summary says which (`comparison`), and every report repeats it. Noise
is then learned from two answers of the reference system to one request: the two baselines
(`--baseline-2`) or the baseline asked twice (`--noise-sample`); without a baseline, from two
staging answers and from requests recorded twice.

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

import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from shadowtape import schema
from shadowtape.diff import bodies, columns
from shadowtape.diff.compare import (
    BODY,
    HEADER,
    STATUS,
    CompareOptions,
    Difference,
    Side,
    compare_sides,
    wanted_headers,
)
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
from shadowtape.errors import DatasetError, InputError
from shadowtape.governance.lineage import lineage_metadata
from shadowtape.latency import FORMAT as LATENCY_FORMAT
from shadowtape.latency import LatencyHistogram
from shadowtape.publish import scratch_directory, staged_directory, write_json_atomic
from shadowtape.route_table import RouteTable

DIFF_DIRNAME = "_diff"
SUMMARY_NAME = "summary.json"
SUMMARY_KIND = "shadowtape.diff-summary"
# 2: `comparison` (what the candidate was compared with), latency histograms per side under
# `latency` (recorded / baseline / staging; version 1 had latency_recorded/latency_staging).
SUMMARY_VERSION = 2
RECORDED = "recorded"
BASELINE = "baseline"
STAGING = "staging"  # the candidate, as in the staging_* columns
LATENCY_SIDES = (RECORDED, BASELINE, STAGING)

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
    "baseline_outcome",
    "baseline_sent_at",
    "baseline_done_at",
    "baseline_status",
    "baseline_headers",
    "baseline_body",
    "baseline_body_truncated",
    "baseline_error",
]
# Read beside the compared headers: the recorded body must be freed of it before comparing.
_CONTENT_ENCODING = frozenset({"content-encoding"})


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
    not_compared: int = 0  # sent, but the reference has no response (recorded error, or
    # the baseline gave no answer)
    body_skipped: dict[str, int] = field(default_factory=dict)
    body_undecodable: int = 0
    staging_errors: int = 0  # failed sends + staging 5xx / transport errors
    server_errors: int = 0  # staging answers with a 5xx status (availability's numerator)
    recorded_errors: int = 0  # recorded 5xx
    baseline_errors: int = 0  # baseline failed sends + baseline 5xx
    status_mismatch: int = 0  # requests whose status difference is drift
    header_drift: int = 0
    body_drift: int = 0
    drift_requests: int = 0
    noise_only_requests: int = 0  # requests that differ only by noise: what noise hides
    drift_diffs: int = 0
    noise_diffs: int = 0
    ignored_diffs: int = 0
    noise_pairs: int = 0  # sampled pairs compared for noise (S's denominator)
    # Per side (recorded, baseline, staging = the candidate): response times in µs.
    latency: dict[str, LatencyHistogram] = field(
        default_factory=lambda: {side: LatencyHistogram() for side in LATENCY_SIDES}
    )

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "latency"}
        out["body_skipped"] = dict(sorted(self.body_skipped.items()))
        out["latency"] = {side: self.latency[side].to_json() for side in LATENCY_SIDES}
        for q in (50, 95, 99):
            out[f"p{q}_ms"] = {
                side: self.latency[side].quantile_ms(q / 100) for side in LATENCY_SIDES
            }
        return out


@dataclass
class DiffSummary:
    out: Path
    comparison: dict[str, Any]
    rows: int
    diff_rows: int
    routes: dict[str, RouteStats]
    decisions: list[PathDecision]
    noise_pairs: int
    unmatched_samples: int  # pass-2 rows without a pass-1 twin (or the other way round)
    payload: dict[str, Any]


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


def options_json(opts: DiffOptions) -> dict[str, Any]:
    """Every option that changes a diff's content, as stored in summary.json: `report`
    reuses a diff only when these equal the ones it was asked for."""
    return {
        "headers": sorted(opts.compare.headers),
        "key_fields": list(opts.compare.key_fields),
        "value_limit": opts.compare.value_limit,
        "max_diffs": opts.compare.max_diffs,
        "min_request_rate": opts.thresholds.min_request_rate,
        "min_contrast": opts.thresholds.min_contrast,
        "pinned_rules": [asdict(r) for r in opts.pinned.rules],
        "routes": [[t.method, t.path] for t in opts.routes.templates],
    }


def default_out(results: Path) -> Path:
    """RESULTS/_diff; beside a single results file, its directory's _diff."""
    return results.with_name(DIFF_DIRNAME) if results.is_file() else results / DIFF_DIRNAME


def earlier_diff(out: Path) -> str | None:
    """None when `out` holds what diff writes (a diff dataset and its summary), so a new diff
    may replace it; else why not."""
    if any(out.iterdir()) and not (out / SUMMARY_NAME).is_file():
        return f"holds no {SUMMARY_NAME}, so it is not a shadowtape diff"
    return schema.foreign_content(out, [schema.KIND_DIFFS], extra_names=[SUMMARY_NAME])


def _check_out(results: Path, out: Path) -> None:
    if out.exists() and out.is_dir():
        reason = earlier_diff(out)
        if reason is not None:
            raise InputError(
                f"{out}: {reason}; choose another --out (shadowtape replaces only a diff it wrote)"
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

    def __init__(self, writer: schema.DatasetWriter, size: int, reference: str) -> None:
        self.writer = writer
        self.size = size
        # The reference side's value goes in recorded_value or baseline_value (`Difference`
        # calls its two sides recorded and staging); the other stays empty.
        self.reference_column = f"{reference}_value"
        self.empty_column = "recorded_value" if reference == BASELINE else "baseline_value"
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
        c[self.reference_column].append(d.recorded)
        c["staging_value"].append(d.staging)
        c["classification"].append(classification)
        c["reason"].append(reason)
        c[self.empty_column].append(None)
        self.rows += 1
        if len(c["exchange_id"]) >= self.size:
            self.flush()

    def flush(self) -> None:
        if not self.cols["exchange_id"]:
            return
        arrays = [pa.array(self.cols[f.name], type=f.type) for f in schema.DIFF_SCHEMA]
        self.writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema.DIFF_SCHEMA))
        self.cols = {n: [] for n in schema.DIFF_SCHEMA.names}


class _Batch:
    """One batch of results as Python lists, each column converted once (see columns.py)."""

    def __init__(self, batch: pa.RecordBatch, wanted: frozenset[str]) -> None:
        col = batch.column
        self.ids: list[str] = col("id").to_pylist()
        self.replay_ids = col("replay_id").to_pylist()
        self.passes = col("replay_pass").to_pylist()
        self.outcomes = col("outcome").to_pylist()
        self.methods = col("method").to_pylist()
        self.paths = col("path").to_pylist()
        self.routes = col("route").to_pylist()
        self.started_at = columns.integers(col("started_at"))
        self.request_sent_at = columns.integers(col("request_sent_at"))
        self.response_ended_at = columns.integers(col("response_ended_at"))
        self.sent_at = columns.integers(col("sent_at"))
        self.done_at = columns.integers(col("done_at"))
        self.status = col("status").to_pylist()
        self.staging_status = col("staging_status").to_pylist()
        self.staging_error = col("staging_error").to_pylist()
        self.staging_headers = columns.header_maps(col("staging_headers"), wanted)
        self.staging_body = col("staging_body").to_pylist()
        self.staging_truncated = col("staging_body_truncated").to_pylist()
        self.recorded_headers = columns.header_maps(col("response_headers"), wanted)
        self.recorded_body = col("response_body").to_pylist()
        self.recorded_truncated = col("response_body_truncated").to_pylist()
        self.query = columns.name_value_pairs(col("query"))
        self.request_body = col("request_body").to_pylist()
        self.baseline_outcome = col("baseline_outcome").to_pylist()
        self.baseline_sent_at = columns.integers(col("baseline_sent_at"))
        self.baseline_done_at = columns.integers(col("baseline_done_at"))
        self.baseline_status = col("baseline_status").to_pylist()
        self.baseline_error = col("baseline_error").to_pylist()
        # Decoded (and their header maps built) only when this batch has baseline answers.
        has_baseline = col("baseline_outcome").null_count < batch.num_rows
        self.baseline_headers = (
            columns.header_maps(col("baseline_headers"), wanted) if has_baseline else None
        )
        self.baseline_body = col("baseline_body").to_pylist() if has_baseline else None
        self.baseline_truncated = (
            col("baseline_body_truncated").to_pylist() if has_baseline else None
        )

    def staging(self, i: int) -> Side:
        """The staging answer; httpx already took its Content-Encoding off."""
        return Side(
            self.staging_status[i],
            self.staging_headers[i],
            self.staging_body[i] or b"",
            bool(self.staging_truncated[i]),
        )

    def baseline(self, i: int) -> Side | None:
        """The baseline's answer, decoded like staging's; None when it gave none."""
        if self.baseline_outcome[i] != "sent" or self.baseline_status[i] is None:
            return None
        assert self.baseline_headers is not None and self.baseline_body is not None
        assert self.baseline_truncated is not None
        return Side(
            self.baseline_status[i],
            self.baseline_headers[i],
            self.baseline_body[i] or b"",
            bool(self.baseline_truncated[i]),
        )


def _decode_recorded(body: bytes, encoding: str, stats: RouteStats) -> bytes:
    """A recorded body freed of the Content-Encoding it crossed the wire in."""
    try:
        return bodies.decode_content(body, encoding)
    except bodies.BodyDecodeError:
        # Compared as the bytes they are; counted, since a difference found on an
        # undecodable body may only be its encoding.
        stats.body_undecodable += 1
        return body


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
        # What the candidate is compared with: the baseline when the results have one.
        self.reference = RECORDED
        # id -> (route, reference response) of a sampled exchange, until its twin arrives.
        self._sample_first: dict[str, tuple[str | None, Side | None]] = {}
        self._twins: dict[tuple[Any, ...], Side] = {}

    # -- pass 0: which exchanges were sent twice, and whether there is a baseline ---------

    def _find_sampled(self, files: list[Path]) -> None:
        for batch in columns.read_batches(files, ["id", "replay_pass", "baseline_outcome"]):
            second = pc.equal(batch.column("replay_pass"), 2)
            self.sampled_ids.update(pc.filter(batch.column("id"), second).to_pylist())
            if batch.column("baseline_outcome").null_count < batch.num_rows:
                self.reference = BASELINE

    # -- pass 1 ---------------------------------------------------------------------------

    def _stats(self, route: str) -> RouteStats:
        stats = self.routes.get(route)
        if stats is None:
            stats = self.routes[route] = RouteStats(route)
        return stats

    def _observe_same_side(self, route: str, first: Side, second: Side) -> None:
        """Two answers to one request from the same side: what differs there is noise."""
        comparison = compare_sides(first, second, self.options.compare)
        self.model.observe_replay_pair(route, comparison.diffs)
        self._stats(route).noise_pairs += 1
        self.noise_pairs += 1

    def _pair_sample(self, ex_id: str, route: str | None, resp: Side | None) -> None:
        first = self._sample_first.pop(ex_id, None)
        if first is None:
            self._sample_first[ex_id] = (route, resp)
            return
        first_route, first_resp = first
        route = route or first_route
        if route is None or resp is None or first_resp is None:
            return
        self._observe_same_side(route, first_resp, resp)

    def _first_pass(self, files: list[Path], work: schema.DatasetWriter) -> None:
        opts = self.options
        buffer = _RowBuffer(work, opts.row_group_rows, self.reference)
        wanted = wanted_headers(opts.compare) | _CONTENT_ENCODING
        for batch in columns.read_batches(files, _COLUMNS):
            self._first_pass_batch(_Batch(batch, wanted), buffer)
            self.progress(self.rows)
        buffer.flush()
        for route, stats in self.routes.items():
            if stats.compared:
                self.model.observe_request(route, stats.compared)

    def _first_pass_batch(self, b: _Batch, buffer: _RowBuffer) -> None:
        """One batch of results: counts per route, noise evidence, differences to `buffer`.
        Every row passes through here, so the loop reads the batch's lists directly."""
        compare = self.options.compare
        route_of = self.options.routes.route
        get_stats = self.routes.get
        sampled = self.sampled_ids
        model = self.model
        twins = self._twins
        max_twins = self.options.max_recorded_twins
        against_baseline = self.reference == BASELINE
        # (side, route, µs): a batch's latencies, counted into the histograms at the end.
        latencies: list[tuple[str, str, int]] = []
        (methods, paths, outcomes, passes, status, staging_status, started_at, sent_at) = (
            b.methods, b.paths, b.outcomes, b.passes, b.status, b.staging_status, b.started_at,
            b.sent_at,
        )  # fmt: skip
        staging_headers, staging_body, staging_truncated = (
            b.staging_headers, b.staging_body, b.staging_truncated,
        )  # fmt: skip
        recorded_headers, recorded_body, recorded_truncated = (
            b.recorded_headers, b.recorded_body, b.recorded_truncated,
        )  # fmt: skip
        self.rows += len(b.ids)
        for i, ex_id in enumerate(b.ids):
            route = route_of(methods[i], paths[i], b.routes[i])
            stats = get_stats(route) or self._stats(route)
            outcome = outcomes[i]
            if passes[i] == 2:
                # A second answer of the reference system to the same request.
                if against_baseline:
                    self._pair_sample(ex_id, route, b.baseline(i))
                else:
                    self._pair_sample(ex_id, route, b.staging(i) if outcome == "sent" else None)
                continue
            stats.requests += 1
            baseline = b.baseline(i) if against_baseline else None
            if against_baseline:
                base_status = b.baseline_status[i]
                if b.baseline_outcome[i] == "failed" or (base_status or 0) >= 500:
                    stats.baseline_errors += 1
                if baseline is not None:
                    base_sent, base_done = b.baseline_sent_at[i], b.baseline_done_at[i]
                    if base_sent is not None and base_done is not None:
                        latencies.append((BASELINE, route, base_done - base_sent))
            if outcome != "sent":
                if outcome == "skipped":
                    stats.skipped += 1
                    continue
                stats.failed += 1
                stats.staging_errors += 1
                if ex_id in sampled:
                    self._pair_sample(ex_id, route, baseline)
                continue
            stats.sent += 1
            stg_status = staging_status[i]
            if stg_status is None or stg_status >= 500 or b.staging_error[i]:
                stats.staging_errors += 1
            if stg_status is not None and stg_status >= 500:
                stats.server_errors += 1
            rec_status = status[i]
            if rec_status is not None and rec_status >= 500:
                stats.recorded_errors += 1
            started = started_at[i]
            ended = b.response_ended_at[i]
            if ended is not None:
                latencies.append((RECORDED, route, ended - (started or b.request_sent_at[i])))
            staged_at = sent_at[i]
            done = b.done_at[i]
            if done is not None and staged_at is not None:
                latencies.append((STAGING, route, done - staged_at))
            stg = Side(
                stg_status, staging_headers[i], staging_body[i] or b"", bool(staging_truncated[i])
            )
            if against_baseline:
                if ex_id in sampled:
                    self._pair_sample(ex_id, route, baseline)
                if baseline is None:
                    stats.not_compared += 1
                    continue
                ref, ref_at = baseline, b.baseline_sent_at[i]
            else:
                if ex_id in sampled:
                    self._pair_sample(ex_id, route, stg)
                if rec_status is None:
                    stats.not_compared += 1
                    continue
                headers = recorded_headers[i]
                body = recorded_body[i] or b""
                encoding = headers.get("content-encoding")
                if encoding and body:
                    body = _decode_recorded(body, encoding, stats)
                ref, ref_at = Side(rec_status, headers, body, bool(recorded_truncated[i])), started
                # A request recorded twice: its two recordings are noise evidence.
                key = (methods[i], paths[i], b.query[i], b.request_body[i])
                first = twins.get(key)
                if first is None:
                    if len(twins) < max_twins:
                        twins[key] = ref
                else:
                    self._observe_same_side(route, first, ref)
            comparison = compare_sides(ref, stg, compare)
            stats.compared += 1  # also the model's N, handed over once the pass is done
            if comparison.body_skipped:
                why = comparison.body_skipped
                stats.body_skipped[why] = stats.body_skipped.get(why, 0) + 1
            if not comparison.diffs:
                continue
            volatile = [volatile_kind(d, ref_at, staged_at) for d in comparison.diffs]
            model.observe_differences(route, comparison.diffs, volatile)
            replay_id = b.replay_ids[i]
            for d, why in zip(comparison.diffs, volatile, strict=True):
                buffer.add(ex_id, replay_id, route, d, None, why)
        # Histograms count values, so a batch's latencies go in as (value, how many).
        for (side, route, micros), count in Counter(latencies).items():
            self.routes[route].latency[side].add_many(micros, count)

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
        for batch in columns.read_batches(files, None):
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
        roll = schema.RollPolicy(row_group_rows=self.options.row_group_rows)
        # The old diff stays in place until the new one is complete, then the two swap.
        with (
            staged_directory(self.out, check=earlier_diff, overwrite=True) as new_dir,
            scratch_directory(self.out) as work_dir,
        ):
            work = schema.DatasetWriter(
                work_dir, schema.KIND_DIFFS, roll=roll, prefix="work", compression="lz4"
            )
            with work:
                self._find_sampled(files)
                self._first_pass(files, work)
            final = schema.DatasetWriter(
                new_dir,
                schema.KIND_DIFFS,
                roll=roll,
                prefix="diff",
                metadata=lineage_metadata("diff", datasets=[self.results]),
            )
            with final:
                written = self._second_pass(work_dir, final)
            decisions = self.model.decisions()
            unmatched = len(self._sample_first)
            comparison = self._comparison(files)
            payload = self._payload(files, decisions, written, unmatched, comparison)
            write_json_atomic(new_dir / SUMMARY_NAME, payload)
        return DiffSummary(
            out=self.out,
            comparison=comparison,
            rows=self.rows,
            diff_rows=written,
            routes=self.routes,
            decisions=decisions,
            noise_pairs=self.noise_pairs,
            unmatched_samples=unmatched,
            payload=payload,
        )

    def _comparison(self, files: list[Path]) -> dict[str, Any]:
        """What was compared with what, for every output to say: the reference (baseline or
        recorded), the systems' URLs as the replay recorded them, and where noise came from."""
        targets: dict[str, str] = {}
        meta = schema.read_files(files[-1])[0].metadata.get(schema.META_REPLAY)
        if meta:
            try:
                config = json.loads(meta).get("config") or {}
            except ValueError:
                config = {}
            for side, key in (
                ("candidate", "target"),
                ("baseline", "baseline"),
                ("baseline-2", "baseline_2"),
            ):
                if config.get(key):
                    targets[side] = str(config[key])
        baseline = self.reference == BASELINE
        if baseline:
            label = "baseline vs candidate"
            noise = (
                "baseline vs second baseline"
                if "baseline-2" in targets
                else "the baseline asked twice (replay --noise-sample)"
            )
        else:
            label = "recorded vs target"
            noise = "staging asked twice (replay --noise-sample) and requests recorded twice"
        return {
            "reference": self.reference,
            "candidate": "staging",
            "label": label,
            "targets": targets,
            "noise_from": noise if self.noise_pairs else "no sampled pairs",
        }

    def _payload(
        self,
        files: list[Path],
        decisions: list[PathDecision],
        written: int,
        unmatched: int,
        comparison: dict[str, Any],
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
            "server_errors",
            "baseline_errors",
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
        return {
            "kind": SUMMARY_KIND,
            "version": SUMMARY_VERSION,
            "comparison": comparison,
            "latency_format": LATENCY_FORMAT,
            "results": str(self.results),
            "results_files": results_fingerprint(self.results),
            "options": options_json(self.options),
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
