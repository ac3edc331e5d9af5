"""A first, cheap pass over a dataset (a few small columns): what a replay will see.

It gives the schedule origin (the earliest recorded request, over all shards, so independent
senders agree), how far rows are stored out of order (the reorder window), which sessions a
`--sessions` sample and a `--shard` select, which requests `--noise-sample` sends twice
(chosen here, before dispatch, so each second send can follow its first inside the session),
and the figures of a dry run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from shadowtape.errors import InputError
from shadowtape.governance.scenarios import SessionFilter
from shadowtape.replay.config import ReplayConfig
from shadowtape.replay.plan import (
    NoiseSampler,
    OrderTracker,
    SessionSampler,
    in_shard,
    is_write,
    step_key,
)
from shadowtape.schema import EXCHANGE_COLUMNS, KIND_EXCHANGES, batch_to_rows, iter_batches


@dataclass(frozen=True, slots=True)
class DatasetScan:
    total_rows: int
    shard_rows: int  # rows this sender accounts for (one results row each)
    selected_rows: int  # of those, in the --sessions sample
    sessions: int  # distinct selected sessions (dry runs only; 0 otherwise)
    writes: int  # selected rows with a write method
    origin_us: int
    disorder_us: int
    sampled: frozenset[str] | None
    send_times_us: tuple[int, ...] | None = None  # sorted; only when asked for (dry run)
    noise_ids: frozenset[str] = frozenset()  # exchange ids to send twice (--noise-sample)
    scenario_sessions: frozenset[str] | None = None  # sessions of --scenario (None: all)


def _column(batch: pa.RecordBatch, name: str) -> list:
    col = batch.column(name)
    if pa.types.is_timestamp(col.type):
        col = col.cast(pa.int64())
    return col.to_pylist()


def scenario_sessions(source: str, session_filter: SessionFilter) -> dict[str, set[str]]:
    """Per scenario, the sessions in `source` that belong to it (one pass, three columns)."""
    members: dict[str, set[str]] = {name: set() for name in session_filter.names}
    for batch in iter_batches(source, KIND_EXCHANGES, columns=["session_id", "method", "path"]):
        for sid, method, path in zip(
            batch.column("session_id").to_pylist(),
            batch.column("method").to_pylist(),
            batch.column("path").to_pylist(),
            strict=True,
        ):
            for name in session_filter.matching(sid, method, path):
                members[name].add(sid)
    return members


def scan_dataset(config: ReplayConfig, with_times: bool = False) -> DatasetScan:
    columns = ["session_id", "started_at", "method"]
    noise = NoiseSampler(config.noise_sample, config.seed) if config.noise_sample > 0 else None
    if noise is not None:
        columns += ["id", "path", "route"]
    tracker = OrderTracker()
    sampler = SessionSampler(config.sessions, config.seed) if config.sessions else None
    in_scenario = None
    if config.session_filter is not None:
        members = scenario_sessions(config.source, config.session_filter)
        config.session_filter.check_counts({n: len(s) for n, s in members.items()}, config.source)
        in_scenario = frozenset().union(*members.values())
    if sampler is not None:
        for batch in iter_batches(config.source, KIND_EXCHANGES, columns=columns):
            for sid in batch.column("session_id").to_pylist():
                if in_scenario is None or sid in in_scenario:  # a sample of the scenario
                    sampler.offer(sid)
    sampled = sampler.selected() if sampler is not None else in_scenario
    shard_rows = selected = writes = 0
    sessions: set[str] = set()
    times: list[np.ndarray] = []
    for batch in iter_batches(config.source, KIND_EXCHANGES, columns=columns):
        started = _column(batch, "started_at")
        tracker.add(started)
        keep: list[int] = []
        n = batch.num_rows
        ids, paths, routes = (
            (_column(batch, c) for c in ("id", "path", "route"))
            if noise is not None
            else ([None] * n,) * 3
        )
        for sid, start, method, xid, path, route in zip(
            batch.column("session_id").to_pylist(),
            started,
            batch.column("method").to_pylist(),
            ids,
            paths,
            routes,
            strict=True,
        ):
            if not in_shard(sid, config.shard_index, config.shard_count):
                continue
            shard_rows += 1
            if sampled is not None and sid not in sampled:
                continue
            selected += 1
            if with_times:  # distinct sessions cost memory per session: dry runs only
                sessions.add(sid)
            write = is_write(method)
            writes += write
            if with_times and (config.allow_writes or not write):
                keep.append(start)
            if noise is not None:
                noise.offer(xid, method, step_key(method, path, route))
        if keep:
            times.append(np.asarray(keep, dtype=np.int64))
    if tracker.count == 0 or tracker.first_us is None:
        raise InputError(f"{config.source}: dataset has no exchanges to replay")
    send_times = None
    if with_times:
        merged = np.sort(np.concatenate(times)) if times else np.empty(0, dtype=np.int64)
        if config.limit is not None:
            merged = merged[: config.limit]
        send_times = tuple(int(v) for v in merged)
    return DatasetScan(
        total_rows=tracker.count,
        shard_rows=shard_rows,
        selected_rows=selected,
        sessions=len(sessions),
        writes=writes,
        origin_us=tracker.first_us,
        disorder_us=tracker.disorder_us,
        sampled=sampled,
        send_times_us=send_times,
        noise_ids=noise.selected() if noise is not None else frozenset(),
        scenario_sessions=in_scenario,
    )


def iter_rows(source: str) -> Iterator[dict[str, Any]]:
    """A dataset's rows as dicts of the exchange columns only, row group by row group."""
    for batch in iter_batches(source, KIND_EXCHANGES):
        yield from batch_to_rows(batch.select(EXCHANGE_COLUMNS))
