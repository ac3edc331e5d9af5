"""The sanitize job: an exchange dataset in, a scrubbed one of the same schema out.

`sanitize_batch` is the unit of work: a pure function of a record batch and a frozen, picklable
config, so a process pool here (and Ray Data) can run it anywhere. Its only state is a
per-process cache of the built scrubber and of per-value results.

With value propagation (the default) the job makes two passes over the data: the first
scrubs every row group and learns the values it replaced, the driver merges what each unit
learned (order-free: the same set whatever the worker count), and the second replaces those
values wherever they still occur. The first pass's output is an intermediate dataset beside
the output, removed when the job ends; both passes keep the input's layout.

The job keeps the input's file names and row-group layout (one output row group per input row
group), so the output does not depend on how many workers ran, and writes into a hidden
directory that is renamed into place only when everything, manifest included, is written: an
interrupted job leaves nothing that looks like a finished dataset (shadowtape.publish). An
existing OUT is replaced (--overwrite) only when it holds an earlier sanitize output.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shadowtape import schema
from shadowtape.errors import DatasetError, InputError
from shadowtape.governance.lineage import lineage_metadata
from shadowtape.keyed import Key, Keyed
from shadowtape.publish import (
    check_replaceable,
    scratch_directory,
    staged_directory,
    write_json_atomic,
)
from shadowtape.sanitize.detectors import Detector, check_nlp_model, unavailable_entities
from shadowtape.sanitize.literals import LiteralCollector, LiteralMatcher, LiteralSet, merge
from shadowtape.sanitize.manifest import MANIFEST_NAME, FileEntry, ManifestData, file_digest
from shadowtape.sanitize.policy import Policy, PolicyRules
from shadowtape.sanitize.scrub import (
    READ_COLUMNS,
    REWRITTEN_COLUMNS,
    ExchangeScrubber,
    LiteralApplier,
    _Walker,
)


@dataclass(frozen=True, slots=True)
class SanitizeConfig:
    """Everything that decides the output besides the data: the same config and input give
    byte-identical output."""

    policy: Policy
    key: Key
    nlp_model: str | None = None
    # Whether our pseudonym markers are believed: only for input that sanitize wrote under
    # the same key (sanitize_dataset decides; see markers.py).
    trust_markers: bool = False

    @property
    def cache_key(self) -> tuple[str, str, str | None, bool]:
        return (self.policy.fingerprint, self.key.fingerprint, self.nlp_model, self.trust_markers)


# Per process: building Presidio takes seconds, so each process builds one scrubber per config.
_SCRUBBERS: dict[tuple[str, str, str | None, bool], ExchangeScrubber] = {}
_APPLIERS: dict[tuple[Any, ...], LiteralApplier] = {}


def scrubber_for(config: SanitizeConfig) -> ExchangeScrubber:
    scrubber = _SCRUBBERS.get(config.cache_key)
    if scrubber is None:
        detector = Detector(
            config.policy.entities,
            config.policy.score_threshold,
            config.nlp_model,
            trust_markers=config.trust_markers,
        )
        scrubber = ExchangeScrubber(PolicyRules(config.policy), Keyed(config.key), detector)
        _SCRUBBERS[config.cache_key] = scrubber
    return scrubber


def applier_for(config: SanitizeConfig, literals: LiteralSet) -> LiteralApplier:
    key = (config.cache_key, literals.fingerprint)
    applier = _APPLIERS.get(key)
    if applier is None:
        scrubber = scrubber_for(config)
        _APPLIERS.clear()  # one literal set at a time: they can be large
        applier = LiteralApplier(scrubber.rules, scrubber, LiteralMatcher(literals.literals))
        _APPLIERS[key] = applier
    return applier


UnitResult = tuple[pa.RecordBatch, dict[str, int], dict[str, str] | None]


def _walk_batch(batch: pa.RecordBatch, walker: _Walker) -> tuple[pa.RecordBatch, dict[str, int]]:
    missing = [c for c in READ_COLUMNS if c not in batch.schema.names]
    if missing:
        raise DatasetError(f"record batch lacks columns {', '.join(missing)}; not exchanges")
    counts: Counter[str] = Counter()
    cols = {name: read_column(batch, name) for name in READ_COLUMNS}
    out: dict[str, list[Any]] = {name: [] for name in REWRITTEN_COLUMNS}
    for i in range(batch.num_rows):
        row = {name: cols[name][i] for name in READ_COLUMNS}
        scrubbed = walker.exchange(row, counts)
        for name in REWRITTEN_COLUMNS:
            out[name].append(scrubbed.get(name, row[name]))
    rewritten = [f for f in batch.schema if f.name in out or f.name in _REWRITTEN_RAW]
    values = {
        name: [_as_tuples(v) for v in vals] if name in _PAIR_COLUMNS else vals
        for name, vals in out.items()
    }
    made = dict(
        zip(
            (f.name for f in rewritten),
            schema.columns_to_arrays(pa.schema(rewritten), values),
            strict=True,
        )
    )
    arrays = [made.get(f.name, batch.column(f.name)) for f in batch.schema]
    return pa.RecordBatch.from_arrays(arrays, schema=batch.schema), dict(counts)


def sanitize_batch(
    batch: pa.RecordBatch, config: SanitizeConfig, literals: LiteralCollector | None = None
) -> tuple[pa.RecordBatch, dict[str, int]]:
    """One batch of exchanges scrubbed under `config`, and the counts of what was done; what
    it replaced is added to `literals` when given."""
    scrubber = scrubber_for(config)
    scrubber.collector = literals
    try:
        out, counts = _walk_batch(batch, scrubber)
    finally:
        scrubber.collector = None
    counts["rows"] = counts.get("rows", 0) + batch.num_rows
    return out, counts


def propagate_batch(
    batch: pa.RecordBatch, config: SanitizeConfig, literals: LiteralSet
) -> tuple[pa.RecordBatch, dict[str, int]]:
    """The second pass over one scrubbed batch: every literal still in it replaced."""
    return _walk_batch(batch, applier_for(config, literals))


@dataclass(frozen=True, slots=True)
class ScrubTask:
    """The first pass over one unit (input row group): scrub, and learn when propagating."""

    config: SanitizeConfig

    def __call__(self, source: str, row_group: int) -> UnitResult:
        prop = self.config.policy.propagation
        collector = (
            LiteralCollector(prop.min_length, prop.name_part_min_length) if prop.enabled else None
        )
        batch, counts = sanitize_batch(_read_unit(source, row_group), self.config, collector)
        return batch, counts, collector.literals if collector is not None else None


@dataclass(frozen=True, slots=True)
class PropagateTask:
    """The second pass over one unit (a row group of the first pass's output)."""

    config: SanitizeConfig
    literals: LiteralSet

    def __call__(self, source: str, row_group: int) -> UnitResult:
        batch, counts = propagate_batch(_read_unit(source, row_group), self.config, self.literals)
        return batch, counts, None


# Scrubbing works on pairs as {"name", "value"} dicts holding wire text (surrogateescape);
# the schema turns them into Arrow's display text plus exact bytes and back.
_PAIR_COLUMNS = frozenset(c for c in READ_COLUMNS if c.endswith("headers") or c == "query")
_REWRITTEN_RAW = frozenset(
    schema.RAW_COMPANIONS[c] for c in REWRITTEN_COLUMNS if c in schema.RAW_COMPANIONS
)


def read_column(batch: pa.RecordBatch, name: str) -> list[Any]:
    """One column of a batch as scrubbing (and verify) reads it."""
    if name in _PAIR_COLUMNS:
        return [
            [{"name": n, "value": v} for n, v in pairs]
            for pairs in schema.pairs_column(batch.column(name))
        ]
    return schema.text_column(batch, name)


def _as_tuples(pairs: list[dict[str, str]] | None) -> list[tuple[str, str]] | None:
    return None if pairs is None else [(p["name"], p["value"]) for p in pairs]


# --- the job --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SanitizeResult:
    output: Path
    manifest: ManifestData

    @property
    def rows(self) -> int:
        return self.manifest.rows


Progress = Callable[[int, int], None]
# Where units are worked on: (units, task, workers) -> the task's result per unit, in unit
# order. The local process pool is the default; sanitize/ray_engine.py supplies one that runs
# on Ray. A results function that is also a context manager is entered once for the whole job
# (both passes share one Ray session).
ResultsFn = Callable[..., Generator[UnitResult, None, None]]
Task = ScrubTask | PropagateTask


@dataclass(frozen=True, slots=True)
class _Unit:
    source: Path
    row_group: int
    rows: int


def _read_unit(source: str, row_group: int) -> pa.RecordBatch:
    """Runs in a worker: reads its own row group, so only results cross processes."""
    pf = pq.ParquetFile(source)
    try:
        table = pf.read_row_group(row_group)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetError(f"{source}: row group {row_group} unreadable ({exc})") from None
    finally:
        pf.close()
    # A version-1 input is scrubbed, and written, in the current schema.
    table = schema.upgrade(table, schema.KIND_EXCHANGES).combine_chunks()
    batches = table.to_batches()
    return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)


# The task a worker process runs, installed once per process: a literal set can be large,
# so it crosses to each worker once, not once per unit.
_INSTALLED: list[Task] = []


def _install(task: Task) -> None:
    _INSTALLED[:] = [task]


def _run_installed(source: str, row_group: int) -> UnitResult:
    return _INSTALLED[0](source, row_group)


def _check_paths(src: Path, dst: Path) -> None:
    src_r, dst_r = src.resolve(), dst.resolve()
    if dst_r == src_r or src_r in dst_r.parents:
        raise InputError(f"{dst}: the output may not be the input or inside it; choose another")
    if dst_r in src_r.parents:
        raise InputError(f"{dst}: the output may not contain the input; choose another")


def earlier_output(dst: Path) -> str | None:
    """None when `dst` holds what sanitize writes (a sanitized exchanges dataset and its
    manifest), so --overwrite may replace it; else why not."""
    return schema.foreign_content(
        dst, [schema.KIND_EXCHANGES], sanitized=True, extra_names=[MANIFEST_NAME]
    )


def _output_metadata(
    pf: pq.ParquetFile,
    info: schema.DatasetFile,
    config: SanitizeConfig,
    lineage: Mapping[str, str] | None = None,
) -> dict:
    meta: dict[bytes, bytes] = dict(pf.schema_arrow.metadata or {})
    # Capture keeps running counters in the footer; they describe the data and are kept.
    # The input's lineage is replaced by this output's, which nests it.
    for k, v in {**info.metadata, **(lineage or {})}.items():
        meta[k.encode()] = v.encode()
    meta[schema.META_VERSION.encode()] = str(schema.SCHEMA_VERSION).encode()
    meta[schema.META_SANITIZED.encode()] = b"true"
    meta[schema.META_POLICY.encode()] = config.policy.fingerprint.encode()
    meta[schema.META_KEY_FINGERPRINT.encode()] = config.key.fingerprint.encode()
    return meta


def _results(units: list[_Unit], task: Task, workers: int) -> Iterator[UnitResult]:
    """Results in unit order; at most 2 x workers units in flight, so memory stays bounded."""
    queue = iter(units)
    methods = multiprocessing.get_all_start_methods()
    forking = "fork" in methods
    if workers <= 1 or forking:
        # With fork, the first row group runs here before the pool starts: workers inherit
        # the built scrubber and its warm caches (the values that recur in every row group:
        # users, tokens), instead of each analysing them again.
        for u in queue:
            yield task(str(u.source), u.row_group)
            if workers > 1:
                break
    if workers <= 1:
        return
    _install(task)
    ctx = multiprocessing.get_context("fork" if forking else "spawn")
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_start_worker, initargs=(task,)
    ) as pool:
        pending: deque[Future] = deque()
        try:
            for u in queue:
                pending.append(pool.submit(_run_installed, str(u.source), u.row_group))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                result = pending.popleft().result()
                nxt = next(queue, None)
                if nxt is not None:
                    pending.append(pool.submit(_run_installed, str(nxt.source), nxt.row_group))
                yield result
        except BaseException:
            # Stopped (Ctrl-C, an error, the consumer gone): queued units are not worth running.
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _start_worker(task: Task) -> None:
    """Workers leave Ctrl-C to the parent, which stops the pool and reports it in one line
    (otherwise every worker would print its own KeyboardInterrupt traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _install(task)


def _input_is_ours(infos: list[schema.DatasetFile], config: SanitizeConfig) -> bool:
    """Input that sanitize already wrote under this key: its markers may be trusted."""
    return all(
        info.metadata.get(schema.META_SANITIZED) == "true"
        and info.metadata.get(schema.META_KEY_FINGERPRINT) == config.key.fingerprint
        for info in infos
    )


def sanitize_dataset(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    config: SanitizeConfig,
    *,
    workers: int = 1,
    overwrite: bool = False,
    progress: Progress | None = None,
    results_fn: ResultsFn | None = None,
    compression: str = "zstd",
) -> SanitizeResult:
    """Scrub dataset `src` into `dst`. `compression` is the output's Parquet codec (tests
    write "none" to search the files' bytes for what must not be there)."""
    src_p, dst_p = Path(src), Path(dst)
    files = schema.dataset_files(src_p)
    if not files:
        raise InputError(f"{src_p}: no Parquet files; is this a captured dataset directory?")
    _check_paths(src_p, dst_p)
    check_replaceable(dst_p, earlier_output, overwrite, "--overwrite")
    if workers < 1:
        raise InputError(f"--workers is {workers}; use 1 or more")
    check_nlp_model(config.nlp_model)
    infos = schema.read_files(src_p, schema.KIND_EXCHANGES)
    for info in infos:
        if info.kind != schema.KIND_EXCHANGES:
            raise DatasetError(
                f"{info.path}: a {info.kind} dataset; sanitize reads exchange datasets "
                "(the output of capture or import)"
            )
    base = src_p if src_p.is_dir() else src_p.parent
    units: list[_Unit] = []
    for info in infos:
        pf = pq.ParquetFile(info.path)
        units += [
            _Unit(info.path, i, pf.metadata.row_group(i).num_rows)
            for i in range(info.num_row_groups)
        ]
        pf.close()
    total = sum(u.rows for u in units)
    lineage = lineage_metadata("sanitize", datasets=[src_p])

    config = replace(config, trust_markers=_input_is_ours(infos, config))
    propagation = config.policy.propagation
    manifest = ManifestData(
        policy_fingerprint=config.policy.fingerprint,
        key_fingerprint=config.key.fingerprint,
        nlp_model=config.nlp_model,
        entities=config.policy.entities,
        unavailable_entities=unavailable_entities(config.policy.entities, config.nlp_model),
        redact_marker=config.policy.redact_marker,
    )
    counts: Counter[str] = Counter()
    learned: dict[str, str] = {}
    results_fn = results_fn or _results
    session = results_fn if hasattr(results_fn, "__enter__") else contextlib.nullcontext()
    with (
        staged_directory(dst_p, check=earlier_output, overwrite=overwrite) as tmp,
        (
            scratch_directory(dst_p, role="pass1")
            if propagation.enabled
            else contextlib.nullcontext(tmp)
        ) as first,
    ):
        with session:
            written = _write_pass(
                infos,
                base,
                first,
                results_fn(units, ScrubTask(config), workers),
                config,
                counts,
                lambda batch_literals: merge(
                    learned, batch_literals or {}, propagation.max_literals
                ),
                progress,
                total,
                compression,
                lineage,
            )
            if propagation.enabled:
                literal_set = LiteralSet.of(learned)
                learned.clear()
                counts["propagation|learned"] += len(literal_set)
                second_units = _units_of(first, written)
                _write_pass(
                    infos,
                    base,
                    tmp,
                    results_fn(second_units, PropagateTask(config, literal_set), workers),
                    config,
                    counts,
                    None,
                    progress,
                    total,
                    compression,
                    lineage,
                )
        applied = sum(n for k, n in counts.items() if k.startswith("propagated|"))
        if propagation.enabled:
            counts["propagation|applied"] += applied
        for rel, num_rows, num_row_groups in written:
            manifest.files.append(
                FileEntry(str(rel), num_rows, num_row_groups, file_digest(tmp / rel))
            )
        manifest.counts = dict(counts)
        write_json_atomic(tmp / MANIFEST_NAME, manifest.to_json())
    return SanitizeResult(dst_p, manifest)


def _units_of(directory: Path, written: list[tuple[Path, int, int]]) -> list[_Unit]:
    units = []
    for rel, _rows, num_row_groups in written:
        pf = pq.ParquetFile(directory / rel)
        units += [
            _Unit(directory / rel, i, pf.metadata.row_group(i).num_rows)
            for i in range(num_row_groups)
        ]
        pf.close()
    return units


def _write_pass(
    infos: list[schema.DatasetFile],
    base: Path,
    out_dir: Path,
    results: Generator[UnitResult, None, None],
    config: SanitizeConfig,
    counts: Counter[str],
    learn: Callable[[dict[str, str] | None], None] | None,
    progress: Progress | None,
    total: int,
    compression: str,
    lineage: Mapping[str, str],
) -> list[tuple[Path, int, int]]:
    """Writes one pass's results in the input's layout: (relative path, rows, row groups)."""
    written = []
    done = 0
    try:
        for info in infos:
            rel = info.path.relative_to(base)
            out_path = out_dir / rel
            out_path.parent.mkdir(parents=True, exist_ok=True)
            pf = pq.ParquetFile(info.path)
            in_schema = pf.schema_arrow
            if info.version < schema.SCHEMA_VERSION:
                in_schema = schema.upgrade(in_schema.empty_table(), schema.KIND_EXCHANGES).schema
            out_schema = in_schema.with_metadata(_output_metadata(pf, info, config, lineage))
            pf.close()
            with pq.ParquetWriter(
                out_path, out_schema, compression=compression, write_statistics=True
            ) as writer:
                for _ in range(info.num_row_groups):
                    batch, batch_counts, literals = next(results)
                    table = pa.Table.from_batches([batch]).replace_schema_metadata(
                        out_schema.metadata
                    )
                    writer.write_table(table, row_group_size=max(table.num_rows, 1))
                    counts.update(batch_counts)
                    if learn is not None:
                        learn(literals)
                    done += batch.num_rows
                    if progress:
                        progress(done, total)
            written.append((rel, info.num_rows, info.num_row_groups))
    finally:
        results.close()  # an engine's workers stop now, not at garbage collection
    return written
