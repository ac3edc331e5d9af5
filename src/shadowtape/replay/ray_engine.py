"""Replay from N sender actors on Ray: the `--shard I/N` loop, N times, on one schedule.

Sessions are split by a stable hash of their id (`plan.in_shard`), so each sender owns whole
sessions and keeps their order; each runs the local `run_replay` on its shard, and all share
one `start_at`, so the recorded schedule (speed or overall rate) holds across senders. Each
shard writes its own files (`results-shard-I-of-N-*`) into the one results directory, under
one run id, so the directory reads as one results dataset.

The driver only watches: it polls the actors for progress, sums their counts, and relays a
stop. When a shard's circuit breaker opens, or on Ctrl-C, every sender is told to stop (a
second Ctrl-C stops them at once, as it does locally).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shadowtape.errors import InputError, ShadowtapeError
from shadowtape.ray_session import ray_session, unwrap_remote_error
from shadowtape.replay.config import ReplayConfig
from shadowtape.replay.correlate import load_rules
from shadowtape.replay.results import prepare_out_dir, same_dataset
from shadowtape.replay.runner import Progress, StopSwitch, check_config, run_replay
from shadowtape.replay.stats import ReplayCounts, ReplaySummary
from shadowtape.schema import uuid7
from shadowtape.telemetry import merge_telemetry

# Seconds between all senders being placed and the shared schedule origin: time for each to
# read its first row group. A late start is not hidden: it shows as lateness in the results.
START_LEAD_S = 3.0
POLL_S = 0.25
READY_TIMEOUT_S = 120.0


class ShardSender:
    """A Ray actor (threaded, two calls at once) that runs one shard's replay; the second
    thread answers `progress` and `stop` while `run` is busy."""

    def __init__(self) -> None:
        self._switch = StopSwitch()
        self._lock = threading.Lock()
        self._progress: Progress | None = None

    def ready(self) -> str:
        return os.uname().nodename

    def run(self, config: ReplayConfig) -> ReplaySummary:
        return run_replay(config, progress=self._record, stop=self._switch)

    def _record(self, progress: Progress) -> None:
        with self._lock:
            self._progress = progress

    def progress(self) -> Progress | None:
        with self._lock:
            return self._progress

    def stop(self, reason: str) -> None:
        self._switch.request(reason)


def merge_counts(parts: list[ReplayCounts]) -> ReplayCounts:
    """Counts of disjoint shards add up, field by field."""
    total = ReplayCounts()
    for f in dataclasses.fields(ReplayCounts):
        values = [getattr(p, f.name) for p in parts]
        if values and isinstance(values[0], Counter):
            merged: Counter[str] = Counter()
            for v in values:
                merged.update(v)
            setattr(total, f.name, merged)
        else:
            setattr(total, f.name, sum(values))
    return total


def merge_progress(parts: list[Progress | None], elapsed: float) -> Progress:
    seen = [p for p in parts if p is not None]
    return Progress(
        done=sum(p.done for p in seen),
        total=sum(p.total for p in seen),
        sent=sum(p.sent for p in seen),
        in_flight=sum(p.in_flight for p in seen),
        errors=sum(p.errors for p in seen),
        rate=sum(p.rate for p in seen),
        lateness_p99_us=max((p.lateness_p99_us for p in seen), default=0),
        elapsed_s=elapsed,
    )


def merge_summaries(
    shards: list[ReplaySummary],
    config: ReplayConfig,
    elapsed: float,
    interrupted: bool,
    tripped_first: int | None = None,
) -> ReplaySummary:
    """One summary for the run. Lateness quantiles cannot be merged from quantiles: the
    figures are the worst shard's (an upper bound); the exact ones are in the results.
    `tripped_first` is the shard whose breaker opened first: its reason is the run's (the
    others say only that they were stopped)."""
    tripped = [s for s in shards if s.status == "circuit_open"]
    if tripped_first is not None:
        tripped.insert(0, shards[tripped_first])
    if tripped:
        status, reason = "circuit_open", tripped[0].reason
    elif interrupted or any(s.status == "interrupted" for s in shards):
        status, reason = "interrupted", "interrupted (Ctrl-C)"
    else:
        status = "complete"
        reason = next((s.reason for s in shards if s.reason), None)
    data = config.to_json()
    data["engine"] = {"name": "ray", "senders": len(shards)}
    return ReplaySummary(
        run_id=shards[0].run_id,
        status=status,
        reason=reason,
        counts=merge_counts([s.counts for s in shards]),
        lateness_p50_us=max(s.lateness_p50_us for s in shards),
        lateness_p99_us=max(s.lateness_p99_us for s in shards),
        lateness_max_us=max(s.lateness_max_us for s in shards),
        elapsed_s=round(elapsed, 3),
        files=sorted(f for s in shards for f in s.files),
        config=data,
        correlation_rules=max(s.correlation_rules for s in shards),
        telemetry=merge_telemetry([s.telemetry for s in shards if s.telemetry]),
    )


def run_replay_ray(
    config: ReplayConfig,
    senders: int,
    *,
    address: str | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> ReplaySummary:
    """Replay `config` from `senders` Ray actors; one merged summary, one results directory.

    Refusals (target, allowlist, unsanitized input, an output in use) happen here on the
    driver, before any actor starts. The output directory must be one every sender can
    write to at the same path (a shared file system on a multi-node cluster).
    """
    if senders < 1:
        raise InputError(f"--senders {senders}: use 1 or more")
    if config.shard_count != 1:
        raise InputError("--shard and --engine ray both given: Ray makes the shards; drop --shard")
    check_config(config)
    if config.correlate not in ("auto", "off"):
        load_rules(config.correlate)  # a bad rules file is reported once, here, not by N senders
    if same_dataset(config.source, config.out):
        raise InputError(f"--out {config.out}: is the input dataset; write results elsewhere")
    # Every shard's prefix starts with "results": one check covers earlier runs of any kind.
    prepare_out_dir(config.out, "results", config.overwrite)
    run_id = config.run_id or uuid7()
    with ray_session(address) as ray:
        cpus = ray.cluster_resources().get("CPU", 0)
        if senders > cpus:
            raise InputError(
                f"--senders {senders}: the Ray cluster has {cpus:g} CPUs and each sender "
                "takes one; use fewer senders or a bigger cluster"
            )
        actor_class = ray.remote(num_cpus=1, max_concurrency=2)(ShardSender)
        actors = [actor_class.remote() for _ in range(senders)]
        try:
            return _drive(ray, actors, config, run_id, progress)
        finally:
            for actor in actors:
                ray.kill(actor)


def _drive(
    ray: Any,
    actors: list[Any],
    config: ReplayConfig,
    run_id: str,
    progress: Callable[[Progress], None] | None,
) -> ReplaySummary:
    n = len(actors)
    ready = [a.ready.remote() for a in actors]
    done, _ = ray.wait(ready, num_returns=n, timeout=READY_TIMEOUT_S)
    if len(done) < n:
        raise ShadowtapeError(
            f"only {len(done)} of {n} Ray senders started within {READY_TIMEOUT_S:g} s; "
            "check the cluster's free CPUs (`ray status`)"
        )
    started = time.monotonic()
    start_at = config.start_at if config.start_at is not None else time.time() + START_LEAD_S
    shard_configs = [
        dataclasses.replace(
            config,
            **_absolute_paths(config),
            shard_index=i,
            shard_count=n,
            start_at=start_at,
            run_id=run_id,
            handle_signals=False,  # the driver takes Ctrl-C and relays it
        )
        for i in range(n)
    ]
    pending = {
        a.run.remote(c): i for i, (a, c) in enumerate(zip(actors, shard_configs, strict=True))
    }
    summaries: list[ReplaySummary | None] = [None] * n
    latest: list[Progress | None] = [None] * n
    interrupts = 0
    tripped_first: int | None = None
    failure: BaseException | None = None

    def stop_all(reason: str) -> None:
        for i, actor in enumerate(actors):
            if summaries[i] is None:
                actor.stop.remote(reason)

    while pending:
        try:
            finished, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            for ref in finished:
                i = pending.pop(ref)
                try:
                    summaries[i] = ray.get(ref)
                except Exception as exc:
                    # The others stop as on Ctrl-C, so their results files are finished
                    # before the error is reported.
                    failure = failure or _shard_error(exc, i, n)
                    stop_all("interrupted")
                    continue
                if summaries[i].status == "circuit_open" and tripped_first is None:
                    tripped_first = i
                    stop_all("circuit_open")
            if progress is not None:
                polls = [a.progress.remote() for a in actors]
                got, _ = ray.wait(polls, num_returns=n, timeout=POLL_S)
                if len(got) == n:
                    latest = ray.get(polls)
                progress(merge_progress(latest, time.monotonic() - started))
        except KeyboardInterrupt:
            # First: stop dispatching, in-flight requests get the grace period; second: stop
            # now (rows not yet written are counted); third: give up waiting.
            interrupts += 1
            if interrupts > 2:
                raise
            stop_all("interrupted")
    if failure is not None:
        raise failure
    return merge_summaries(
        [s for s in summaries if s is not None],
        config,
        time.monotonic() - started,
        interrupted=interrupts > 0,
        tripped_first=tripped_first,
    )


def _absolute_paths(config: ReplayConfig) -> dict[str, str]:
    """The config's paths as the driver sees them: an actor's working directory is not the
    driver's (on another node it is not even the same machine)."""
    paths = {"source": str(Path(config.source).resolve()), "out": str(Path(config.out).resolve())}
    if config.correlate not in ("auto", "off"):
        paths["correlate"] = str(Path(config.correlate).resolve())
    return paths


def _shard_error(exc: Exception, index: int, count: int) -> BaseException:
    """A sender's failure as the one-line error it raised, naming the sender."""
    original = unwrap_remote_error(exc)
    if isinstance(original, ShadowtapeError):
        error = type(original)(f"sender {index} of {count}: {original}")
        return error
    return exc
