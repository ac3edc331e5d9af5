"""`replay --workers N`: N local sender processes on one schedule, one results dataset.

One Python process sends from one core. Here each of N processes runs the ordinary loop
(`run_replay`) on its share of the sessions, split by the stable hash `--shard` uses, so each
owns whole sessions and keeps their order; within a `--shard I/N` the split goes one level
down (worker j of W replays shard I + N*j of N*W, which lies inside shard I/N).

One run, not N: the supervisor (this module, in the parent process) learns correlation rules
once and hands them over; splits a `--limit` so the same rows are sent as by one process;
holds every worker at a start gate until all have read their first rows, then gives all one
schedule origin; merges their progress into one line and their summaries into one, with
lateness merged from the distributions (`replay.merge`); relays Ctrl-C and a tripped circuit
breaker to all. Workers write into a hidden staging directory inside `--out` (readers skip
hidden paths); at the end their files are merged, row group by row group, into the one file a
single process would have written, published by one atomic rename, with the run's summary in
its footer. A worker that dies is reported with the rows it took with it, the others are
stopped, what they wrote is kept and marked incomplete, and the run exits non-zero.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import shutil
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shadowtape.errors import InputError, ShadowtapeError
from shadowtape.publish import scratch_directory
from shadowtape.replay.config import ReplayConfig
from shadowtape.replay.correlate import dump_rules, learn_rules, load_rules
from shadowtape.replay.merge import merge_progress, merge_summaries
from shadowtape.replay.plan import in_shard, stable_hash
from shadowtape.replay.results import META_REPLAY, prepare_out_dir, same_dataset
from shadowtape.replay.runner import Progress, StopSwitch, check_config, run_replay
from shadowtape.replay.scan import iter_rows, scan_dataset
from shadowtape.replay.stats import ReplayCounts, ReplaySummary
from shadowtape.schema import (
    KIND_EXCHANGES,
    KIND_RESULTS,
    META_KIND,
    META_VERSION,
    DatasetWriter,
    RollPolicy,
    dataset_files,
    iter_batches,
    uuid7,
)
from shadowtape.supervision import SignalCounter, how_it_ended, messages

POLL_S = 0.25
# Between the last worker being ready and the shared origin: the "start" message's way there.
START_LEAD_S = 0.2
READY_TIMEOUT_S = 300.0
STATUS_WORKER_LOST = "worker_lost"


# --- the worker process ----------------------------------------------------------------------


def _worker_main(config: ReplayConfig, conn: Connection) -> None:
    """One worker: the ordinary replay loop, told when to start and when to stop."""
    # Ctrl-C reaches the whole process group; the supervisor decides what it means.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    switch = StopSwitch()
    go = threading.Event()
    origin: list[float] = []
    lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with lock:
            conn.send(message)

    def listen() -> None:
        while True:
            try:
                kind, value = conn.recv()
            except (EOFError, OSError):
                # The supervisor is gone: nobody will publish these results; stop sending.
                switch.request("interrupted")
                origin.append(time.time())
                go.set()
                return
            if kind == "start":
                origin.append(value)
                go.set()
            elif kind == "stop":
                switch.request(value)

    def gate() -> float:
        send(("ready", None))
        go.wait()
        return origin[0]

    threading.Thread(target=listen, name="shadowtape-worker-control", daemon=True).start()
    try:
        summary = run_replay(
            config, progress=lambda p: send(("progress", p)), stop=switch, start_gate=gate
        )
    except ShadowtapeError as exc:
        send(("error", (type(exc).__name__, str(exc), exc.exit_code)))
        return
    except BaseException:  # a bug: the supervisor reports it, with the traceback
        send(("error", ("BUG", traceback.format_exc(), 1)))
        return
    send(("done", summary))


# --- the supervisor --------------------------------------------------------------------------


_MESSAGE_FIELDS = {"progress": "progress", "done": "summary", "error": "error"}


@dataclass
class _Worker:
    index: int
    config: ReplayConfig
    process: Any = None
    conn: Connection | None = None
    ready: bool = False
    progress: Progress | None = None
    summary: ReplaySummary | None = None
    error: tuple[str, str, int] | None = None
    exitcode: int | None = None

    @property
    def finished(self) -> bool:
        return self.exitcode is not None

    @property
    def lost(self) -> bool:
        return self.finished and self.summary is None and self.error is None


@dataclass
class _Outcome:
    workers: list[_Worker]
    interrupts: int = 0
    tripped_first: int | None = None
    lost_reported: list[str] = field(default_factory=list)


class _Supervisor:
    def __init__(
        self,
        configs: list[ReplayConfig],
        progress: Callable[[Progress], None] | None,
        on_event: Callable[[str], None] | None,
    ) -> None:
        self.workers = [_Worker(i, c) for i, c in enumerate(configs)]
        self.progress = progress
        self.on_event = on_event
        self.outcome = _Outcome(self.workers)
        self.signals = SignalCounter()
        self._handled_interrupts = 0
        self._started_at: float | None = None
        self._origin_sent = False

    def run(self) -> _Outcome:
        ctx = multiprocessing.get_context("spawn")
        with self.signals.installed():
            self._supervise(ctx)
        self.outcome.interrupts = self.signals.count
        return self.outcome

    def _supervise(self, ctx: Any) -> None:
        try:
            for w in self.workers:
                parent, child = ctx.Pipe()
                w.process = ctx.Process(
                    target=_worker_main,
                    args=(w.config, child),
                    name=f"shadowtape-replay-worker-{w.index}",
                    daemon=True,
                )
                w.process.start()
                child.close()
                w.conn = parent
            self._started_at = time.monotonic()
            last_progress = 0.0
            while not all(w.finished for w in self.workers):
                self._step()
                self._relay_interrupts()
                self._maybe_start()
                now = time.monotonic()
                if self.progress is not None and now - last_progress >= POLL_S:
                    last_progress = now
                    self.progress(
                        merge_progress([w.progress for w in self.workers], now - self._started_at)
                    )
        finally:
            for w in self.workers:
                if w.process is not None and w.process.is_alive():
                    w.process.kill()
                    w.process.join(5)

    def _step(self) -> None:
        live = [w for w in self.workers if not w.finished]
        handles: dict[Any, _Worker] = {}
        for w in live:
            handles[w.conn] = w
            handles[w.process.sentinel] = w
        for ready in wait(list(handles), timeout=POLL_S):
            w = handles[ready]
            self._drain(w)
            if ready is w.process.sentinel or not w.process.is_alive():
                w.process.join()
                self._drain(w)
                w.exitcode = w.process.exitcode
                self._ended(w)

    def _drain(self, w: _Worker) -> None:
        assert w.conn is not None
        for kind, value in messages(w.conn):
            if kind == "ready":
                w.ready = True
            else:
                setattr(w, _MESSAGE_FIELDS[kind], value)

    def _ended(self, w: _Worker) -> None:
        if w.summary is not None:
            if w.summary.status == "circuit_open" and self.outcome.tripped_first is None:
                self.outcome.tripped_first = w.index
                self._stop_all("circuit_open")
            return
        if w.error is not None:
            self._stop_all("interrupted")
            return
        line = f"worker {w.index} of {len(self.workers)} (pid {w.process.pid}) {_death(w)}"
        self.outcome.lost_reported.append(line)
        if self.on_event is not None:
            self.on_event(line + "; stopping the others")
        self._stop_all(STATUS_WORKER_LOST)
        self._maybe_start(force=True)

    def _maybe_start(self, force: bool = False) -> None:
        """One origin for all, once every worker has read its first rows (or is gone)."""
        if self._origin_sent:
            return
        waiting = [w for w in self.workers if not w.finished and not w.ready]
        if waiting and not force:
            assert self._started_at is not None
            if time.monotonic() - self._started_at < READY_TIMEOUT_S:
                return
            self._stop_all("interrupted")  # a worker that never gets ready: give up, counted
        self._origin_sent = True
        # A --start-at shared with other machines' senders wins; else now, for all.
        given = self.workers[0].config.start_at
        self._broadcast("start", given if given is not None else time.time() + START_LEAD_S)

    def _stop_all(self, reason: str) -> None:
        self._broadcast("stop", reason)

    def _broadcast(self, kind: str, value: Any) -> None:
        for w in self.workers:
            if not w.finished and w.conn is not None:
                # One that is exiting cannot hear it; its sentinel will say how it ended.
                with contextlib.suppress(OSError):
                    w.conn.send((kind, value))

    # Ctrl-C and SIGTERM: counted (supervision.SignalCounter); relayed here. First: stop
    # dispatching, in-flight requests get the grace period; second: stop now; third: kill.
    def _relay_interrupts(self) -> None:
        while self._handled_interrupts < self.signals.count:
            self._handled_interrupts += 1
            if self._handled_interrupts <= 2:
                self._stop_all("interrupted")
                self._maybe_start(force=True)
            else:
                for w in self.workers:
                    if not w.finished:
                        w.process.kill()


def _death(w: _Worker) -> str:
    if (w.exitcode or 0) < 0:
        return f"died ({how_it_ended(w.exitcode)})"
    return f"{how_it_ended(w.exitcode)} without a summary"


# --- splitting the work ----------------------------------------------------------------------


def worker_configs(
    config: ReplayConfig, workers: int, run_id: str, staging: Path
) -> list[ReplayConfig]:
    """The N configs: one shard each, inside the run's own shard."""
    n = config.shard_count
    base = dataclasses.replace(
        config,
        source=str(Path(config.source).resolve()),
        out=str(staging),
        shard_count=n * workers,
        run_id=run_id,
        handle_signals=False,
        overwrite=False,
    )
    if config.concurrency < workers:
        raise InputError(
            f"--concurrency {config.concurrency} with --workers {workers}: the connections are "
            "split among the workers and each needs one; raise --concurrency or use fewer workers"
        )
    # The connection bound is the run's, like --rate: split, so N workers open what one would.
    c = config.concurrency
    return [
        dataclasses.replace(
            base,
            shard_index=config.shard_index + n * j,
            concurrency=c // workers + (j < c % workers),
        )
        for j in range(workers)
    ]


def split_limit(
    config: ReplayConfig, workers: int, sampled: frozenset[str] | None = None
) -> list[int]:
    """Each worker's share of `--limit`: one process sends the first `limit` sendable rows in
    recorded order (started_at, session, seq); each worker gets the count of those that are
    its own, so together they send exactly those rows. Bounded memory: the running first
    `limit` rows only."""
    assert config.limit is not None
    limit = config.limit
    if limit <= 0:
        return [0] * workers
    if sampled is None and (config.sessions or config.session_filter is not None):
        sampled = scan_dataset(config).sampled
    n, i = config.shard_count, config.shard_index
    total = n * workers
    columns = ["session_id", "started_at", "seq", "method", "request_body_truncated"]
    best: pa.Table | None = None
    for batch in iter_batches(config.source, KIND_EXCHANGES, columns=columns):
        rows = batch.to_pydict()
        keep_sid, keep_start, keep_seq, keep_worker = [], [], [], []
        for sid, start, seq, method, truncated in zip(
            rows["session_id"],
            batch.column("started_at").cast(pa.int64()).to_pylist(),
            rows["seq"],
            rows["method"],
            rows["request_body_truncated"],
            strict=True,
        ):
            if not in_shard(sid, i, n) or (sampled is not None and sid not in sampled):
                continue
            if truncated or (not config.allow_writes and method.upper() in _WRITES):
                continue
            keep_sid.append(sid)
            keep_start.append(start)
            keep_seq.append(seq)
            keep_worker.append((stable_hash("shard", sid) % total - i) // n)
        part = pa.table(
            {
                "started_at": pa.array(keep_start, pa.int64()),
                "session_id": pa.array(keep_sid, pa.string()),
                "seq": pa.array(keep_seq, pa.int64()),
                "worker": pa.array(keep_worker, pa.int32()),
            }
        )
        best = part if best is None else pa.concat_tables([best, part])
        order = [("started_at", "ascending"), ("session_id", "ascending"), ("seq", "ascending")]
        best = best.sort_by(order).slice(0, limit)
    shares = [0] * workers
    if best is not None:
        for w in best.column("worker").to_pylist():
            shares[w] += 1
    return shares


_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


# --- the whole run ---------------------------------------------------------------------------


def run_replay_workers(
    config: ReplayConfig,
    workers: int,
    progress: Callable[[Progress], None] | None = None,
    on_event: Callable[[str], None] | None = None,
) -> ReplaySummary:
    """Replay `config` from `workers` local processes; one results file, one summary.

    Refusals happen here, once, before any worker starts. `on_event` hears, at once, of a
    worker that died.
    """
    if workers == 1:
        return run_replay(config, progress=progress)
    check_config(config)
    if config.correlate not in ("auto", "off"):
        load_rules(config.correlate)  # a bad rules file is reported once, here
    if same_dataset(config.source, config.out):
        raise InputError(f"--out {config.out}: is the input dataset; write results elsewhere")
    # Refusals a scan finds (no rows, a scenario that selects nothing) come once, from here.
    sampled = scan_dataset(config).sampled
    out_dir = prepare_out_dir(config.out, config.prefix, config.overwrite)
    run_id = config.run_id or uuid7()
    staging = out_dir / f".workers-{run_id}"
    staging.mkdir()
    started = time.monotonic()
    stack = contextlib.ExitStack()
    try:
        configs = worker_configs(config, workers, run_id, staging)
        if config.correlate == "auto":
            # Learned once from the whole dataset, as one process would, and handed over; kept
            # beside the output, not in it, which must hold results only.
            rules_dir = stack.enter_context(scratch_directory(out_dir, "rules"))
            rules_file = rules_dir / "correlation-rules.yaml"
            dump_rules(learn_rules(iter_rows(config.source)), rules_file)
            configs = [dataclasses.replace(c, correlate=str(rules_file)) for c in configs]
        if config.limit is not None:
            shares = split_limit(config, workers, sampled)
            configs = [
                dataclasses.replace(c, limit=s) for c, s in zip(configs, shares, strict=True)
            ]
        outcome = _Supervisor(configs, progress, on_event).run()
        return _finish(config, outcome, out_dir, staging, time.monotonic() - started)
    finally:
        stack.close()
        shutil.rmtree(staging, ignore_errors=True)


def _finish(
    config: ReplayConfig, outcome: _Outcome, out_dir: Path, staging: Path, elapsed: float
) -> ReplaySummary:
    workers = outcome.workers
    failed = [w for w in workers if w.error is not None]
    if failed:
        name, message, code = failed[0].error  # type: ignore[misc]
        prefix = f"worker {failed[0].index} of {len(workers)}: "
        if name == "BUG":
            raise RuntimeError(prefix + message)
        error = InputError(prefix + message) if code == 2 else ShadowtapeError(prefix + message)
        raise error
    done = [w.summary for w in workers if w.summary is not None]
    files = sorted(f for f in dataset_files(staging) if f.name.endswith(".parquet"))
    lost_rows = 0
    for w in workers:
        if w.lost:
            # What it finalized before dying is whole and kept; the rest of its rows are not.
            kept = sum(
                pq.ParquetFile(f).metadata.num_rows
                for f in files
                if f.name.startswith(w.config.prefix + "-")
            )
            lost_rows += scan_dataset(w.config).shard_rows - kept
    data = config.to_json()
    data["engine"] = {"name": "workers", "workers": len(workers)}
    if done:
        summary = merge_summaries(
            done, data, elapsed, interrupted=outcome.interrupts > 0,
            tripped_first=_position(done, workers, outcome.tripped_first),
        )  # fmt: skip
    else:
        summary = ReplaySummary(
            run_id=workers[0].config.run_id or "", status="interrupted", reason=None,
            counts=ReplayCounts(), lateness_p50_us=0, lateness_p99_us=0,
            lateness_max_us=0, elapsed_s=round(elapsed, 3), files=[], config=data,
        )  # fmt: skip
    summary.counts.rows_not_written += lost_rows
    if outcome.lost_reported:
        summary.status = STATUS_WORKER_LOST
        summary.reason = "; ".join(outcome.lost_reported) + f"; {lost_rows} rows not written"
    published = _publish(config, files, out_dir, summary)
    summary.files = [str(p) for p in published]
    return summary


def _position(done: list[ReplaySummary], workers: list[_Worker], index: int | None) -> int | None:
    if index is None:
        return None
    summary = workers[index].summary
    return next(i for i, s in enumerate(done) if s is summary)


def _publish(
    config: ReplayConfig, files: list[Path], out_dir: Path, summary: ReplaySummary
) -> list[Path]:
    """The workers' files as the one file one process writes: same name, the run's summary in
    its footer, made visible by one rename."""
    if not files:
        return []
    first = pq.ParquetFile(files[0])
    file_meta = {
        k.decode(): v.decode()
        for k, v in (first.schema_arrow.metadata or {}).items()
        if k.decode() not in (META_VERSION, META_KIND)
    }
    footer = json.loads((first.metadata.metadata or {}).get(META_REPLAY.encode(), b"{}"))
    first.close()
    data = summary.to_json()
    data.pop("files")
    footer.update(data)
    footer["complete"] = summary.counts.rows_not_written == 0
    writer = DatasetWriter(
        out_dir,
        KIND_RESULTS,
        metadata=file_meta,
        prefix=config.prefix,
        roll=RollPolicy(max_rows=2**62, max_bytes=2**62),
    )
    try:
        for batch in iter_batches(out_dir, KIND_RESULTS, files=files):
            writer.write_batch(batch)
        writer.set_file_metadata({META_REPLAY: json.dumps(footer, sort_keys=True, default=str)})
        return writer.close()
    except BaseException:
        writer.abort()
        raise
