"""The replay loop: read, order, schedule, send, record; `run_replay(config)` is the one entry.

Rows stream from the dataset (a worker thread reads row groups), pass a reorder buffer, and are
handed to per-session lanes at their due time; every row yields exactly one results row, sent,
skipped or failed, even when the run stops early. With a baseline each row is sent to every
side at once (`sides.py`: each with its own breaker, sender and correlation state) and its row
holds every side's answer; a second baseline's answers are replay_pass 2 rows. The loop takes
a frozen, picklable `ReplayConfig`, so a CLI, a test or a remote worker (a Ray actor) run the
same code.
"""

from __future__ import annotations

import asyncio
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from shadowtape.errors import InputError
from shadowtape.governance.lineage import META_LINEAGE, lineage_metadata
from shadowtape.governance.routes import route_label
from shadowtape.latency import LatencyHistogram
from shadowtape.manifest_check import require_manifest
from shadowtape.replay.config import ReplayConfig, Timing, check_numbers
from shadowtape.replay.correlate import CorrelationRule, learn_rules, load_rules, parts_of
from shadowtape.replay.engine import choose_engine, run_loop
from shadowtape.replay.plan import (
    OffsetClock,
    ReorderBuffer,
    in_shard,
    is_write,
    planned_duration,
    step_key,
)
from shadowtape.replay.results import (
    BASELINE_ONLY,
    ResultSink,
    as_baseline,
    count_values,
    in_sample,
    prepare_out_dir,
    result_row,
    same_dataset,
    skip_reasons,
    skipped_batch,
)
from shadowtape.replay.scan import DatasetScan, iter_rows, scan_dataset
from shadowtape.replay.scheduler import Clock, Lane, MonotonicClock, SessionScheduler, Work
from shadowtape.replay.sender import (
    OutgoingRequest,
    RequestParts,
    SendOutcome,
    TargetMap,
    UnsendableRequest,
    build_request,
    describe_error,
)
from shadowtape.replay.sides import BASELINE, Side, check_sides, send_order, side_specs
from shadowtape.replay.stats import ReplayCounts, ReplaySummary
from shadowtape.replay.substitute import Correlator, SessionBindings, Substitution
from shadowtape.schema import (
    EXCHANGE_COLUMNS,
    KIND_EXCHANGES,
    META_POLICY,
    META_SANITIZED,
    RollPolicy,
    batch_to_rows,
    check_sanitized,
    dataset_metadata,
    iter_batches,
    read_files,
    uuid7,
)
from shadowtape.targets import check_target_allowed, check_target_url
from shadowtape.telemetry import NO_TELEMETRY, RequestSpan, Telemetry, open_telemetry
from shadowtape.traceparent import span_id, trace_id, traceparent

REPLAY_ID_HEADER = "X-Shadowtape-Replay-Id"


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """What a run would do, for `--dry-run`: nothing is sent."""

    sessions: int
    requests: int
    to_send: int
    skipped_writes: int
    skipped_limit: int
    not_sampled: int
    duration_s: float | None
    timing: str
    correlation_rules: int
    shard: str
    sides: tuple[str, ...] = ("candidate",)  # each request is sent to every side


@dataclass(frozen=True, slots=True)
class Progress:
    done: int
    total: int
    sent: int
    in_flight: int
    errors: int
    rate: float
    lateness_p99_us: int
    elapsed_s: float
    lateness: LatencyHistogram | None = None  # the distribution, so senders' progress merges


# --- checks before anything is read or sent --------------------------------------------------


def check_config(config: ReplayConfig) -> dict[str, str]:
    """Every refusal that needs no sending; returns the input dataset's metadata."""
    check_target_url(config.target)
    targets = TargetMap(config.target, config.rewrites)
    for base in targets.bases():
        check_target_allowed(base, config.allow_hosts)
    check_numbers(config, time.time())
    check_sides(config)
    if config.on_miss not in ("send-recorded", "skip-session"):
        raise InputError(f"--on-miss {config.on_miss!r}: use skip-session or send-recorded")
    infos = read_files(config.source, KIND_EXCHANGES)
    meta = dataset_metadata(config.source, KIND_EXCHANGES)
    if not meta:
        raise InputError(f"{config.source}: dataset has no Parquet files")
    sanitized = meta.get(META_SANITIZED) == "true"
    check_sanitized(config.source, sanitized, config.allow_unsanitized)
    # A results dataset as input carries its replay's (checked) flag and has no manifest.
    if sanitized and not config.allow_unsanitized and any(i.kind == KIND_EXCHANGES for i in infos):
        require_manifest(config.source, [(i.path, i.num_rows, i.num_row_groups) for i in infos])
    return meta


def load_correlation(config: ReplayConfig) -> list[CorrelationRule]:
    mode = config.correlate
    if mode == "off":
        return []
    if mode == "auto":
        return learn_rules(iter_rows(config.source))
    return load_rules(mode)


def plan_replay(config: ReplayConfig) -> ReplayPlan:
    check_config(config)
    scan = scan_dataset(config, with_times=True)
    rules = load_correlation(config)
    times = scan.send_times_us or ()
    sendable = scan.selected_rows - (0 if config.allow_writes else scan.writes)
    return ReplayPlan(
        sessions=scan.sessions,
        requests=scan.shard_rows,
        to_send=len(times),
        skipped_writes=0 if config.allow_writes else scan.writes,
        skipped_limit=sendable - len(times),
        not_sampled=scan.shard_rows - scan.selected_rows,
        duration_s=planned_duration(config.timing, times, scan.origin_us, config.max_gap),
        timing=config.timing.describe(),
        correlation_rules=len(rules),
        shard=f"{config.shard_index}/{config.shard_count}",
        sides=tuple(f"{spec.name} {spec.url}" for spec in side_specs(config)),
    )


class StopSwitch:
    """Stops a run from another thread (a Ray actor's second call, a supervisor): the
    request acts like Ctrl-C ("interrupted": stop dispatch, wait for in-flight requests up to
    the grace period) or, with another reason such as "circuit_open" (a sibling shard's
    breaker opened), stops dispatch and skips the rest with that reason."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reason: str | None = None
        self._notify: Callable[[], None] | None = None

    @property
    def reason(self) -> str | None:
        return self._reason

    def request(self, reason: str = "interrupted") -> None:
        with self._lock:
            if self._reason is None:
                self._reason = reason
            notify = self._notify
        if notify is not None:
            notify()

    def _attach(self, notify: Callable[[], None]) -> None:
        with self._lock:
            self._notify = notify
            pending = self._reason is not None
        if pending:
            notify()

    def _detach(self) -> None:
        with self._lock:
            self._notify = None


def run_replay(
    config: ReplayConfig,
    progress: Callable[[Progress], None] | None = None,
    clock: Clock | None = None,
    stop: StopSwitch | None = None,
    start_gate: Callable[[], float] | None = None,
) -> ReplaySummary:
    """Replay `config.source` against `config.target`; results land in `config.out`.

    Raises InputError for refusals (nothing is sent then). A run stopped by the circuit
    breaker, by Ctrl-C or through `stop` returns normally with its status; its results are
    complete files. `start_gate`, called (on a worker thread) once the first rows are read,
    returns the schedule origin (Unix seconds) that a supervisor shares among its senders.
    """
    meta = check_config(config)
    if same_dataset(config.source, config.out):
        raise InputError(f"--out {config.out}: is the input dataset; write results elsewhere")
    scan = scan_dataset(config)
    rules = load_correlation(config)
    out_dir = prepare_out_dir(config.out, config.prefix, config.overwrite)
    meta = {**meta, **lineage_metadata("replay", datasets=[config.source])}
    run = _Replay(config, scan, rules, out_dir, meta, progress, clock or MonotonicClock())
    run.start_gate = start_gate
    # The run id is the same on every span: a resource attribute, encoded once per export.
    run.telemetry = open_telemetry(config.otlp_endpoint, resource={"shadowtape.run_id": run.run_id})
    try:
        return run_loop(run.run(stop), choose_engine(config.http1_engine))
    finally:
        run.telemetry.shutdown()  # flushed on every exit: complete, Ctrl-C, breaker, error


# --- the run -------------------------------------------------------------------------------


@dataclass(slots=True)
class _SessionState:
    trace_id: str
    # One per side: what each system minted is carried to that system only.
    bindings: list[SessionBindings] = field(default_factory=list)
    last_seq: int = -(2**62)
    aborted: str | None = None


@dataclass(slots=True)
class _SideRequest:
    """One side's copy of a recorded request, after that side's correlation."""

    side: Side
    parts: RequestParts
    substitutions: list[dict[str, str]]
    missed: bool


class _Replay:
    def __init__(
        self,
        config: ReplayConfig,
        scan: DatasetScan,
        rules: list[CorrelationRule],
        out_dir: Path,
        input_meta: dict[str, str],
        progress: Callable[[Progress], None] | None,
        clock: Clock,
    ) -> None:
        self.config = config
        self.scan = scan
        self.rules = rules
        self.correlator = Correlator(rules)
        self.out_dir = out_dir
        self.input_meta = input_meta
        self.progress = progress
        self.clock = clock
        self.run_id = config.run_id or uuid7()
        # Replay ids need uniqueness, not secrecy: one seeding from the OS, then no syscall
        # per request.
        self._id_random = random.Random()
        self.counts = ReplayCounts()
        self.lateness = LatencyHistogram()
        self.stop_reason: str | None = None
        self.interrupted = False
        self.abandon_tail = False
        self.sendable = 0
        self.pass1_rows = 0
        self.timer: asyncio.Future[None] | None = None
        self.start_at = config.start_at
        self.start_gate: Callable[[], float] | None = None
        self.origin: float | None = None  # set once the first rows are read
        self.signal: int | None = None
        self.telemetry: Telemetry = NO_TELEMETRY

    # time: one origin, monotonic for scheduling and wall clock for the results
    def _set_origin(self) -> None:
        """Fix the schedule origin (and start the --duration timer from it)."""
        mono = self.clock.now()
        wall_us = time.time_ns() // 1000
        self._mono0, self._wall0_us = mono, wall_us
        if self.start_at is not None:
            self.origin = mono + (self.start_at - wall_us / 1_000_000)
        else:
            self.origin = mono
        if self.config.duration is not None and self.timer is None:
            self.timer = asyncio.ensure_future(self._stop_after(self.origin + self.config.duration))

    def wall_us(self, t: float | None) -> int | None:
        if t is None:
            return None
        return self._wall0_us + round((t - self._mono0) * 1_000_000)

    async def run(self, switch: StopSwitch | None = None) -> ReplaySummary:
        cfg = self.config
        started = time.monotonic()
        self.stop = asyncio.Event()
        # The candidate first: its answers are the staging_* columns.
        self.sides = [Side(spec, cfg, self.clock.now) for spec in side_specs(cfg)]
        self.baseline = next((s for s in self.sides if s.name == BASELINE), None)
        metadata = {"shadowtape.run_id": self.run_id}
        for key in (META_SANITIZED, META_POLICY, META_LINEAGE):
            if key in self.input_meta:
                metadata[key] = self.input_meta[key]
        for side in self.sides:
            self.telemetry.observe_breaker(lambda breaker=side.breaker: breaker.open)
        # Files roll on a timer (see _roll_files), not by size: each carries the figures of
        # the run so far, the last one the final figures. SIGINT and SIGTERM finalize the
        # open file; a hard kill loses at most one roll interval.
        by_timer = RollPolicy(max_rows=2**62, max_bytes=2**62)
        self.sink = ResultSink(self.out_dir, cfg.prefix, metadata, roll=by_timer)
        self.sink.set_summary({"run_id": self.run_id, "status": "running", "config": cfg.to_json()})
        self.scheduler = SessionScheduler(
            self.clock,
            self._handle,
            new_state=lambda sid: _SessionState(
                trace_id(self.run_id, sid), [SessionBindings() for _ in self.sides]
            ),
            abandon=self._abandon,
            max_pending=max(1024, cfg.concurrency * 8),
            idle_us=int(cfg.session_timeout * 1_000_000),
            stop=self.stop,
        )
        restore = self._install_signals()
        if switch is not None:
            loop = asyncio.get_running_loop()
            switch._attach(lambda: loop.call_soon_threadsafe(self._on_switch, switch))
        ticker = asyncio.ensure_future(self._tick(started))
        roller = asyncio.ensure_future(self._roll_files(started))
        try:
            await self._dispatch_all()
            await self.scheduler.join()
            if self.scheduler.failure is not None:
                raise self.scheduler.failure
        except BaseException:
            self.scheduler.cancel_all()
            await self.scheduler.join_cancelled()
            await self._close_senders()
            self.sink.abort()
            raise
        finally:
            restore()
            if switch is not None:
                switch._detach()
            ticker.cancel()
            roller.cancel()
            if self.timer is not None:
                self.timer.cancel()
        await self._close_senders()
        self.counts.sessions = self.scheduler.lanes_created
        if self.abandon_tail:
            self.counts.rows_not_written = self.scan.shard_rows - self.pass1_rows
        summary = self._summary(time.monotonic() - started, [])
        self.telemetry.shutdown()  # before the summary, so it holds the export counts
        summary.telemetry = self.telemetry.summary()
        self.sink.set_summary(self._metadata(summary))
        files = await self.sink.close()
        summary.files = [str(f) for f in files]
        if self.progress is not None:
            self.progress(self._snapshot(time.monotonic() - started, 0.0))
        return summary

    async def _close_senders(self) -> None:
        for side in self.sides:
            await side.sender.aclose()

    def _trip_reason(self) -> str | None:
        """Why a breaker opened: the first side's (in side order) whose breaker did."""
        return next((r for r in (s.trip_reason() for s in self.sides) if r is not None), None)

    def _summary(self, elapsed: float, files: list[str]) -> ReplaySummary:
        tripped = self._trip_reason()
        if self.interrupted:
            how = signal.Signals(self.signal).name if self.signal else "Ctrl-C"
            status, reason = "interrupted", f"interrupted ({how})"
        elif tripped is not None:
            status, reason = "circuit_open", tripped
        elif self.stop_reason == "circuit_open":
            status, reason = "circuit_open", "stopped on request: another sender's breaker opened"
        else:
            status = "complete"
            reason = "duration reached" if self.stop_reason == "duration" else None
        return ReplaySummary(
            run_id=self.run_id,
            status=status,
            reason=reason,
            counts=self.counts,
            lateness_p50_us=self._lateness(0.5),
            lateness_p99_us=self._lateness(0.99),
            lateness_max_us=round(self.lateness.high or 0),
            lateness=self.lateness,
            elapsed_s=round(elapsed, 3),
            files=files,
            config=self.config.to_json(),
            correlation_rules=len(self.rules),
            signal=self.signal,
        )

    def _lateness(self, q: float) -> int:
        return round(self.lateness.quantile_us(q) or 0)

    def _metadata(self, summary: ReplaySummary) -> dict[str, Any]:
        data = summary.to_json()
        data.pop("files")
        data["schedule"] = {
            "origin_recorded_us": self.scan.origin_us,
            "origin_wall_us": self.wall_us(self.origin),
            "reorder_window_us": self.scan.disorder_us,
        }
        data["correlation"] = [r.to_yaml() for r in self.rules]
        data["staging_body"] = "decoded (Content-Encoding removed by the client)"
        data["http1"] = self.sides[0].sender.engine.describe()
        data["complete"] = self.counts.rows_not_written == 0
        return data

    # --- signals, timers, progress ------------------------------------------------------

    def _install_signals(self) -> Callable[[], None]:
        if not self.config.handle_signals or threading.current_thread() is not (
            threading.main_thread()
        ):
            return lambda: None
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on_signal, signum)

        def restore() -> None:
            loop.remove_signal_handler(signal.SIGINT)
            loop.remove_signal_handler(signal.SIGTERM)

        return restore

    def _on_signal(self, signum: int) -> None:
        if self.signal is None:
            self.signal = signum
        self._on_sigint()

    def _on_sigint(self) -> None:
        loop = asyncio.get_running_loop()
        if not self.interrupted:
            # First Ctrl-C: stop dispatching, let in-flight requests finish within the grace.
            self.interrupted = True
            self._request_stop("interrupted")
            loop.call_later(self.config.grace, self.scheduler.cancel_all)
        else:
            # Second: stop now; rows not yet accounted are counted as not written.
            self.abandon_tail = True
            self.scheduler.cancel_all()

    def _on_switch(self, switch: StopSwitch) -> None:
        reason = switch.reason or "interrupted"
        if reason == "interrupted":
            self._on_sigint()
        else:
            self._request_stop(reason)

    def _request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stop.set()

    async def _stop_after(self, deadline: float) -> None:
        await self.clock.sleep_until(deadline)
        self._request_stop("duration")

    async def _roll_files(self, started: float) -> None:
        while True:
            await asyncio.sleep(self.config.roll_interval)
            running = self._metadata(self._summary(time.monotonic() - started, []))
            running["status"] = "running"
            running["complete"] = False
            self.sink.roll(running)

    def _snapshot(self, elapsed: float, rate: float) -> Progress:
        return Progress(
            done=self.pass1_rows,
            total=self.scan.shard_rows,
            sent=self.counts.sent,
            in_flight=sum(side.sender.in_flight for side in self.sides),
            errors=self.counts.failed + self.counts.status_classes.get("5xx", 0),
            rate=rate,
            lateness_p99_us=self._lateness(0.99),
            elapsed_s=elapsed,
            lateness=self.lateness,
        )

    async def _tick(self, started: float) -> None:
        if self.progress is None:
            return
        last_t, last_sent = time.monotonic(), 0
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            rate = (self.counts.sent - last_sent) / max(now - last_t, 1e-9)
            last_t, last_sent = now, self.counts.sent
            self.progress(self._snapshot(now - started, rate))

    # --- dispatch ------------------------------------------------------------------------

    def _batches(self) -> Iterator[pa.RecordBatch]:
        cfg = self.config
        # Exchange columns only: a results dataset given as input must not carry its old
        # replay columns into the new results.
        for batch in iter_batches(cfg.source, KIND_EXCHANGES):
            batch = batch.select(EXCHANGE_COLUMNS)
            if cfg.shard_count > 1:
                mask = [
                    in_shard(sid, cfg.shard_index, cfg.shard_count)
                    for sid in batch.column("session_id").to_pylist()
                ]
                batch = batch.filter(pa.array(mask, pa.bool_()))
            yield batch

    def _tail_reason(self) -> str | None:
        """Why every row still to come is skipped, once nothing more will be sent."""
        if self.stop_reason is not None:
            return self.stop_reason
        limit = self.config.limit
        if limit is not None and self.sendable >= limit:
            return "limit"
        return None

    async def _skip_batch(self, batch: pa.RecordBatch, default_reason: str | None) -> None:
        """Skipped rows straight from Arrow to Arrow: streaming the rest of a big dataset
        after a stop, a --limit or outside a --sessions sample costs no per-row Python."""
        if batch.num_rows == 0:
            return
        reasons = skip_reasons(
            batch,
            default_reason,
            sampled=self.scan.sampled,
            allow_writes=self.config.allow_writes,
            scenario=self.scan.scenario_sessions,
        )
        for reason, n in count_values(reasons).items():
            self.counts.skipped[reason] += n
        if self.scan.noise_ids:
            chosen = pc.is_in(batch.column("id"), value_set=pa.array(sorted(self.scan.noise_ids)))
            self.counts.noise_not_sent += pc.sum(chosen).as_py() or 0
        self.counts.rows += batch.num_rows
        self.pass1_rows += batch.num_rows
        await self.sink.add_batch(
            skipped_batch(batch, reasons, self.run_id, baseline=self.baseline is not None)
        )

    async def _dispatch_all(self) -> None:
        cfg = self.config
        reorder = ReorderBuffer(self.scan.disorder_us, cfg.reorder_limit)
        timing = cfg.timing
        if timing.mode == "rate" and cfg.shard_count > 1:
            # --rate is the overall rate: each of N senders takes its share.
            timing = Timing("rate", rate=timing.rate / cfg.shard_count)
        self.offsets = OffsetClock(timing, self.scan.origin_us, cfg.max_gap)
        sampled = self.scan.sampled
        batches = self._batches()
        first = True
        while not self.abandon_tail:
            batch = await asyncio.to_thread(next, batches, None)
            if first:
                # The origin is set once the first rows are here, so reading the first row
                # group does not make the first requests late.
                if self.start_gate is not None:
                    self.start_at = await asyncio.to_thread(self.start_gate)
                self._set_origin()
                first = False
            if batch is None:
                break
            tail = self._tail_reason()
            if tail is not None:
                await self._skip_batch(batch, tail)
                continue
            if sampled is not None:
                chosen = in_sample(batch, sampled)
                await self._skip_batch(batch.filter(pc.invert(chosen)), None)
                batch = batch.filter(chosen)
            for row in await asyncio.to_thread(batch_to_rows, batch):
                if self.abandon_tail:
                    break
                for ready in reorder.push(row):
                    await self._dispatch(ready)
        for ready in reorder.drain():
            if self.abandon_tail:
                break
            await self._dispatch(ready)
        self.counts.reorder_forced = reorder.forced

    async def _dispatch(self, row: dict[str, Any]) -> None:
        cfg = self.config
        if self.stop_reason is not None:
            await self._skip(row, self.stop_reason)
            return
        sid = row["session_id"]
        skip = None
        if is_write(row["method"]) and not cfg.allow_writes:
            skip = "write_not_allowed"
        elif row.get("request_body_truncated"):
            skip = "request_body_truncated"
        if skip is not None:
            # Through the lane, so the session's later requests know this step gave no value.
            await self.scheduler.submit(Work(sid, row, None, skip), row["started_at"])
            return
        if cfg.limit is not None and self.sendable >= cfg.limit:
            await self._skip(row, "limit")
            return
        self.sendable += 1
        offset = self.offsets.offset(row["started_at"])
        due = None
        if cfg.timing.mode != "max":
            if cfg.duration is not None and offset > cfg.duration:
                self._request_stop("duration")
                await self._skip(row, "duration")
                return
            due = self.origin + offset
        if not await self.scheduler.submit(Work(sid, row, due), row["started_at"]):
            await self._skip(row, self.stop_reason or "interrupted")

    # --- per request ---------------------------------------------------------------------

    async def _skip(
        self,
        row: dict[str, Any],
        reason: str,
        substitutions: list[dict[str, str]] | None = None,
    ) -> None:
        await self.sink.add(self._skip_row(row, reason, substitutions))

    def _skip_row(
        self, row: dict[str, Any], reason: str, substitutions: list[dict[str, str]] | None = None
    ) -> dict[str, Any]:
        self.counts.skipped[reason] += 1
        self.counts.rows += 1
        self.pass1_rows += 1
        if row["id"] in self.scan.noise_ids:
            self.counts.noise_not_sent += 1
        extra = {} if self.baseline is None else {"baseline_outcome": "skipped"}
        return result_row(
            row,
            run_id=self.run_id,
            replay_pass=1,
            outcome="skipped",
            skip_reason=reason,
            attempts=0,
            retries=0,
            substitutions=substitutions or [],
            **extra,
        )

    def _abandon(self, lane: Lane, work: Work) -> None:
        self.sink.add_nowait(self._skip_row(work.row, work.skip_reason or "interrupted"))

    def _learn(
        self,
        state: _SessionState,
        row: dict[str, Any],
        outcomes: list[SendOutcome | None] | None,
    ) -> None:
        """Each side binds the recorded values to what it answered itself (None: no answer)."""
        if not self.correlator:
            return
        step = step_key(row["method"], row.get("path"), row.get("route"))
        for k, bindings in enumerate(state.bindings):
            outcome = outcomes[k] if outcomes is not None else None
            staged = outcome is not None and outcome.status is not None
            self.correlator.learn(
                bindings,
                step,
                row.get("response_headers") or [],
                row.get("response_body"),
                outcome.headers if staged and outcome else None,
                outcome.body if staged and outcome else None,
            )

    def _correlate(
        self, side: Side, bindings: SessionBindings, row: dict[str, Any]
    ) -> _SideRequest:
        parts = parts_of(row)
        subs: list[Substitution] = []
        if self.correlator:
            subs = self.correlator.apply(bindings, parts)
            c = self.counts
            for s in subs:
                miss = s.outcome == "miss"
                if side.is_candidate:
                    (c.misses if miss else c.substitutions)[s.rule] += 1
                else:
                    (c.baseline_misses if miss else c.baseline_substitutions)[side.name] += 1
        return _SideRequest(
            side, parts, [s.as_row() for s in subs], any(s.outcome == "miss" for s in subs)
        )

    async def _handle(self, lane: Lane, work: Work) -> None:
        row, state = work.row, lane.state
        reason = work.skip_reason or state.aborted or self.stop_reason
        if reason is not None:
            self._learn(state, row, None)
            await self._skip(row, reason)
            return
        if row["seq"] < state.last_seq:
            self.counts.out_of_order += 1
        state.last_seq = max(state.last_seq, row["seq"])
        try:
            requests = [
                self._correlate(side, state.bindings[k], row) for k, side in enumerate(self.sides)
            ]
        except Exception as exc:
            # A row this replayer cannot make a request of: one failed row, the run goes on.
            self._learn(state, row, None)
            await self._not_sent(row, state.trace_id, [], None, exc)
            return
        if self.config.on_miss == "skip-session" and any(r.missed for r in requests):
            # The rest of the session, after the miss (on any side: a comparison needs both).
            state.aborted = "session_aborted"
            self.counts.sessions_skipped_on_miss += 1
            self._learn(state, row, None)
            await self._skip(row, "correlation_miss", requests[0].substitutions)
            return
        # With no schedule (--speed max) a request is due when its session's turn comes, so
        # lateness is the wait for a free connection, not the time spent queued behind it.
        scheduled = work.scheduled if work.due is not None else self.clock.now()
        # The twin's copy is taken now: the first send's results row takes `row` over.
        twin = dict(row) if row["id"] in self.scan.noise_ids else None
        outcomes = await self._send(row, requests, state.trace_id, scheduled)
        self._learn(state, row, outcomes)
        if twin is not None:
            await self._send_twin(twin, requests, state.trace_id, outcomes)

    async def _not_sent(
        self,
        row: dict[str, Any],
        trace: str,
        sub_rows: list[dict[str, str]],
        scheduled: float | None,
        exc: Exception,
        url: str | None = None,
    ) -> SendOutcome:
        """A request that cannot be sent: one failed row with the reason, counted. With a
        baseline no side was sent (a comparison needs both), and the row says so for each."""
        reason = str(exc) if isinstance(exc, UnsendableRequest) else describe_error(exc)
        self.counts.failed += 1
        self.counts.unsendable += 1
        self._count_row(1)
        baseline: dict[str, Any] = {}
        if self.baseline is not None:
            baseline = {
                "baseline_outcome": "failed",
                "baseline_error": f"not sent: {reason}",
                "baseline_attempts": 0,
                "baseline_retries": 0,
            }
            for side in self.sides[1:]:
                self.counts.baseline_failed[side.name] += 1
        await self.sink.add(
            result_row(
                row,
                run_id=self.run_id,
                replay_pass=1,
                trace_id=trace,
                outcome="failed",
                target_url=url,
                scheduled_at=self.wall_us(scheduled),
                staging_error=f"not sent: {reason}",
                attempts=0,
                retries=0,
                substitutions=sub_rows,
                **baseline,
            )
        )
        return SendOutcome(error=reason)

    async def _send(
        self,
        row: dict[str, Any],
        requests: list[_SideRequest],
        trace: str,
        scheduled: float | None,
        replay_pass: int | None = None,
    ) -> list[SendOutcome | None]:
        """Send one recorded request to every side in `requests` at once, then write its
        results rows; the outcomes come back in the order of `requests`.

        Each side's answer goes in its own row (`replay_pass` None: the candidate's and the
        baseline's in pass 1, the second baseline's in pass 2), or every answer in a pass-2
        row (`replay_pass` 2: a noise twin)."""
        cfg = self.config
        passes = [replay_pass or r.side.spec.replay_pass for r in requests]
        replay_ids = {p: uuid7(rand=self._id_random.randbytes(10)) for p in sorted(set(passes))}
        spans: list[str] = []
        outgoing: list[OutgoingRequest] = []
        for r, p in zip(requests, passes, strict=True):
            span = span_id(
                self.run_id, row["id"] if r.side.is_candidate else f"{row['id']}/{r.side.name}", p
            )
            extra = (
                *cfg.headers,
                ("traceparent", traceparent(trace, span)),
                (REPLAY_ID_HEADER, replay_ids[p]),
            )
            spans.append(span)
            try:
                outgoing.append(
                    build_request(
                        r.parts, r.side.targets, keep_host=cfg.keep_host, extra_headers=extra
                    )
                )
            except Exception as exc:  # UnsendableRequest, or a recorded row the builder chokes on
                # Not sent to any side: what one side cannot be sent, the comparison lacks.
                if replay_pass == 2:
                    self.counts.noise_not_sent += 1
                    return [SendOutcome(error=str(exc))] * len(requests)
                unsendable = isinstance(exc, UnsendableRequest) and r.side.is_candidate
                url = exc.url if unsendable else None
                lost = await self._not_sent(
                    row, trace, requests[0].substitutions, scheduled, exc, url
                )
                return [lost] * len(requests)
        # A row per pass; a copy for the second, taken before the first row takes `row` over.
        bases = {p: row if i == 0 else dict(row) for i, p in enumerate(replay_ids)}
        outcomes: list[SendOutcome | None] = [None] * len(requests)

        async def send(k: int) -> None:
            side = requests[k].side
            key = side.retry_key(row["id"], passes[k])
            outcomes[k] = await side.sender.send(outgoing[k], retry_key=key)

        def rows() -> list[dict[str, Any]]:
            out = []
            for p, base in bases.items():
                members = [
                    (requests[k], outgoing[k], outcomes[k], spans[k])
                    for k in range(len(requests))
                    if passes[k] == p
                ]
                out.append(self._result(base, p, replay_ids[p], trace, scheduled, members))
            return out

        try:
            if len(requests) == 1:
                await send(0)
            else:
                await asyncio.gather(*(send(k) for k in send_order(row["id"], len(requests))))
        except asyncio.CancelledError:
            # Still in flight when the grace period ended: the rows say so, whole.
            for result in rows():
                self.sink.add_nowait(result)
            raise
        if any(side.breaker.open for side in self.sides):
            self._request_stop("circuit_open")
        for result in rows():
            await self.sink.add(result)
        return outcomes

    def _result(
        self,
        base: dict[str, Any],
        replay_pass: int,
        replay_id: str,
        trace: str,
        scheduled: float | None,
        members: list[tuple[_SideRequest, OutgoingRequest, SendOutcome | None, str]],
    ) -> dict[str, Any]:
        """One results row: the recorded exchange, then each member side's answer in its
        columns; a row without the candidate says the candidate was not sent."""
        fields: dict[str, Any] = {
            "run_id": self.run_id,
            "replay_id": replay_id,
            "replay_pass": replay_pass,
            "trace_id": trace,
            "scheduled_at": self.wall_us(scheduled),
        }
        has_candidate = False
        for request, outgoing, outcome, span in members:
            side_fields: dict[str, Any] = {
                "target_url": outgoing.url,
                "span_id": span,
                "substitutions": request.substitutions,
            }
            side_fields.update(self._outcome_fields(request.side, outcome, scheduled, replay_pass))
            if outcome is not None and self.telemetry.enabled:
                self._emit(base, fields, side_fields, request.side, outcome)
            if request.side.is_candidate:
                has_candidate = True
                fields.update(side_fields)
            else:
                fields.update(as_baseline(side_fields))
        if not has_candidate:
            fields.update(
                outcome="skipped",
                skip_reason=BASELINE_ONLY,
                attempts=0,
                retries=0,
                substitutions=[],
            )
        self._count_row(replay_pass)
        return result_row(base, **fields)

    def _emit(
        self,
        row: dict[str, Any],
        common: dict[str, Any],
        fields: dict[str, Any],
        side: Side,
        outcome: SendOutcome,
    ) -> None:
        """One span for one send, and for the candidate's sends the metrics. The span's ids
        are the traceparent's, so the target's server span is its child; the diff verdict is
        not known yet and is joined later by trace and span id (results columns trace_id and
        span_id, baseline_span_id for a baseline's send). The metrics stay the candidate's
        (staging's latency and errors), as without a baseline; a baseline's spans say
        `shadowtape.side`."""
        tel = self.telemetry
        method = row["method"]
        route = route_label(method, row.get("path"), row.get("route"))
        start_us = fields["sent_at"] or common["scheduled_at"] or time.time_ns() // 1000
        end_us = fields["done_at"] or fields["first_byte_at"] or start_us
        status = outcome.status
        error = outcome.error if status is None else None
        span = RequestSpan(
            route,
            trace_id=common["trace_id"],
            span_id=fields["span_id"],
            start_ns=start_us * 1000,
            end_ns=end_us * 1000,
            error=error,
            attributes={
                "http.request.method": method,
                "http.route": route,
                "url.full": fields["target_url"],
                "http.response.status_code": status,
                "error.type": ("send_failed" if status is None else None),
                "shadowtape.outcome": fields["outcome"],
                "shadowtape.retries": outcome.retries,
                "shadowtape.replay_pass": common["replay_pass"],
                "shadowtape.replay_id": common["replay_id"],
                "shadowtape.exchange_id": row["id"],
                "shadowtape.session_id": row["session_id"],
                "shadowtape.recorded_status": row.get("status"),
                "shadowtape.side": None if side.is_candidate else side.name,
            },
        )
        tel.span_for_request(span)
        if not side.is_candidate:
            return
        if fields["sent_at"] is not None and fields["done_at"] is not None:
            tel.record_latency(route, method, status, (end_us - start_us) / 1000)
        if status is None:
            tel.add_error(route, "send_failed")
        elif status >= 500:
            tel.add_error(route, f"{status // 100}xx")
        tel.add_retries(route, outcome.retries)

    def _count_row(self, replay_pass: int) -> None:
        self.counts.rows += 1
        if replay_pass == 1:
            self.pass1_rows += 1
        else:
            self.counts.noise_rows += 1

    def _outcome_fields(
        self, side: Side, outcome: SendOutcome | None, scheduled: float | None, replay_pass: int
    ) -> dict[str, Any]:
        """One side's answer as result fields (candidate column names), counted. `outcome`
        None: the send was still in flight when the run was cut short."""
        c = self.counts
        # A side's own row, or a noise twin (a second send of the same request to the side).
        main = replay_pass == side.spec.replay_pass
        noise = replay_pass == 2
        if outcome is None:
            if main and side.is_candidate:
                c.failed += 1
            elif main:
                c.baseline_failed[side.name] += 1
            c.noise_failed += noise
            return {
                "outcome": "failed",
                "staging_error": "interrupted: still in flight when the grace period ended",
                "attempts": 1,
                "retries": 0,
            }
        if side.is_candidate:
            c.retries += outcome.retries
        else:
            c.baseline_retries[side.name] += outcome.retries
        sent_us = self.wall_us(outcome.sent_at)
        scheduled_us = self.wall_us(scheduled)
        lateness = None
        if sent_us is not None and scheduled_us is not None:
            lateness = sent_us - scheduled_us
            if main and side.is_candidate:  # the noise pass has no schedule to keep
                self.lateness.add(max(0, lateness))
        error = outcome.error
        if outcome.status is None:
            if main and side.is_candidate:
                c.failed += 1
            elif main:
                c.baseline_failed[side.name] += 1
            c.noise_failed += noise
            result = "failed"
        else:
            status_class = f"{outcome.status // 100}xx"
            if main and side.is_candidate:
                c.sent += 1
                c.status_classes[status_class] += 1
            elif main:
                c.baseline_sent[side.name] += 1
                c.baseline_status_classes[f"{side.name} {status_class}"] += 1
            c.noise_sent += noise
            result = "sent"
            if outcome.body_truncated:
                c.staging_body_truncated += 1
            if outcome.undecodable:
                c.undecodable_bodies += 1
                error = "staging body has a Content-Encoding this client cannot decode; not kept"
        return {
            "outcome": result,
            "sent_at": sent_us,
            "first_byte_at": self.wall_us(outcome.first_byte_at),
            "done_at": self.wall_us(outcome.done_at),
            "lateness_us": lateness,
            "attempts": outcome.attempts,
            "retries": outcome.retries,
            "staging_status": outcome.status,
            "staging_reason": outcome.reason,
            "staging_http_version": outcome.http_version,
            "staging_headers": outcome.headers,
            "staging_body": outcome.body,
            "staging_body_truncated": outcome.body_truncated,
            "staging_error": error,
        }

    # --- noise sample: a chosen GET sent a second time, right after its first send ----

    async def _send_twin(
        self,
        row: dict[str, Any],
        requests: list[_SideRequest],
        trace: str,
        first: list[SendOutcome | None],
    ) -> None:
        """Send the request again (replay_pass 2) inside its session, before the session's
        next step, so both answers come from the same session state: the diff stage learns
        which fields differ between two answers of one system, not what a logout changed.
        The system asked again is the one the diff compares against: the baseline when
        there is one, else the candidate.

        It is not a session step: nothing is learned from it for correlation, and it has
        its own counters. The request is the one just sent (same substitutions), with a new
        span and replay id. A first send without an answer, or a stop in between, means no
        second send; that is counted as `noise_not_sent`.
        """
        k = next(
            i
            for i, r in enumerate(requests)
            if (r.side is self.baseline if self.baseline is not None else r.side.is_candidate)
        )
        answer = first[k]
        if answer is None or answer.status is None or self.stop.is_set():
            self.counts.noise_not_sent += 1
            return
        await self._send(row, [requests[k]], trace, self.clock.now(), replay_pass=2)
