"""The sanitize job: an exchange dataset in, a scrubbed one of the same schema out.

`sanitize_batch` is the unit of work: a pure function of a record batch and a frozen, picklable
config, so a process pool here (and Ray Data later) can run it anywhere. Its only state is a
per-process cache of the built scrubber and of per-value results.

The job keeps the input's file names and row-group layout (one output row group per input row
group), so the output does not depend on how many workers ran, and writes into a hidden
directory that is renamed into place only when everything, manifest included, is written: an
interrupted job leaves nothing that looks like a finished dataset.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shadowtape import schema
from shadowtape.errors import DatasetError, InputError
from shadowtape.keyed import Key, Keyed
from shadowtape.sanitize.detectors import Detector, check_nlp_model, unavailable_entities
from shadowtape.sanitize.manifest import MANIFEST_NAME, FileEntry, ManifestData
from shadowtape.sanitize.policy import Policy, PolicyRules
from shadowtape.sanitize.scrub import READ_COLUMNS, REWRITTEN_COLUMNS, ExchangeScrubber

META_KEY_FINGERPRINT = "shadowtape.key_fingerprint"


@dataclass(frozen=True, slots=True)
class SanitizeConfig:
    """Everything that decides the output besides the data: the same config and input give
    byte-identical output."""

    policy: Policy
    key: Key
    nlp_model: str | None = None

    @property
    def cache_key(self) -> tuple[str, str, str | None]:
        return (self.policy.fingerprint, self.key.fingerprint, self.nlp_model)


# Per process: building Presidio takes seconds, so each process builds one scrubber per config.
_SCRUBBERS: dict[tuple[str, str, str | None], ExchangeScrubber] = {}


def scrubber_for(config: SanitizeConfig) -> ExchangeScrubber:
    scrubber = _SCRUBBERS.get(config.cache_key)
    if scrubber is None:
        detector = Detector(config.policy.entities, config.policy.score_threshold, config.nlp_model)
        scrubber = ExchangeScrubber(PolicyRules(config.policy), Keyed(config.key), detector)
        _SCRUBBERS[config.cache_key] = scrubber
    return scrubber


def sanitize_batch(
    batch: pa.RecordBatch, config: SanitizeConfig
) -> tuple[pa.RecordBatch, dict[str, int]]:
    """One batch of exchanges scrubbed under `config`, and the counts of what was done."""
    missing = [c for c in READ_COLUMNS if c not in batch.schema.names]
    if missing:
        raise DatasetError(f"record batch lacks columns {', '.join(missing)}; not exchanges")
    scrubber = scrubber_for(config)
    counts: Counter[str] = Counter()
    cols = {name: read_column(batch, name) for name in READ_COLUMNS}
    out: dict[str, list[Any]] = {name: [] for name in REWRITTEN_COLUMNS}
    for i in range(batch.num_rows):
        row = {name: cols[name][i] for name in READ_COLUMNS}
        scrubbed = scrubber.exchange(row, counts)
        for name in REWRITTEN_COLUMNS:
            out[name].append(scrubbed.get(name, row[name]))
    counts["rows"] += batch.num_rows
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
# Where units are scrubbed: (units, config, workers) -> (batch, counts) per unit, in unit order.
# The local process pool is the default; sanitize/ray_engine.py supplies one that runs on Ray.
ResultsFn = Callable[..., Generator[tuple[pa.RecordBatch, dict[str, int]], None, None]]


@dataclass(frozen=True, slots=True)
class _Unit:
    source: Path
    row_group: int
    rows: int


def _sanitize_unit(
    source: str, row_group: int, config: SanitizeConfig
) -> tuple[pa.RecordBatch, dict[str, int]]:
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
    batch = batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)
    return sanitize_batch(batch, config)


def _check_paths(src: Path, dst: Path, overwrite: bool) -> None:
    src_r, dst_r = src.resolve(), dst.resolve()
    if dst_r == src_r or src_r in dst_r.parents:
        raise InputError(f"{dst}: the output may not be the input or inside it; choose another")
    if dst_r in src_r.parents:
        raise InputError(f"{dst}: the output may not contain the input; choose another")
    if dst.exists() and not overwrite:
        raise InputError(
            f"{dst}: already exists; choose a new output directory or pass --overwrite"
        )


def _output_metadata(pf: pq.ParquetFile, info: schema.DatasetFile, config: SanitizeConfig) -> dict:
    meta: dict[bytes, bytes] = dict(pf.schema_arrow.metadata or {})
    # Capture keeps running counters in the footer; they describe the data and are kept.
    for k, v in info.metadata.items():
        meta[k.encode()] = v.encode()
    meta[schema.META_VERSION.encode()] = str(schema.SCHEMA_VERSION).encode()
    meta[schema.META_SANITIZED.encode()] = b"true"
    meta[schema.META_POLICY.encode()] = config.policy.fingerprint.encode()
    meta[META_KEY_FINGERPRINT.encode()] = config.key.fingerprint.encode()
    return meta


def _results(
    units: list[_Unit], config: SanitizeConfig, workers: int
) -> Iterator[tuple[pa.RecordBatch, dict[str, int]]]:
    """Results in unit order; at most 2 x workers units in flight, so memory stays bounded."""
    queue = iter(units)
    methods = multiprocessing.get_all_start_methods()
    forking = "fork" in methods
    if workers <= 1 or forking:
        # With fork, the first row group runs here before the pool starts: workers inherit
        # the built scrubber and its warm caches (the values that recur in every row group:
        # users, tokens), instead of each analysing them again.
        for u in queue:
            yield _sanitize_unit(str(u.source), u.row_group, config)
            if workers > 1:
                break
    if workers <= 1:
        return
    ctx = multiprocessing.get_context("fork" if forking else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        pending: deque[Future] = deque()
        for u in queue:
            pending.append(pool.submit(_sanitize_unit, str(u.source), u.row_group, config))
            if len(pending) >= 2 * workers:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(queue, None)
            if nxt is not None:
                pending.append(pool.submit(_sanitize_unit, str(nxt.source), nxt.row_group, config))
            yield result


def sanitize_dataset(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    config: SanitizeConfig,
    *,
    workers: int = 1,
    overwrite: bool = False,
    progress: Progress | None = None,
    results_fn: ResultsFn | None = None,
) -> SanitizeResult:
    src_p, dst_p = Path(src), Path(dst)
    files = schema.dataset_files(src_p)
    if not files:
        raise InputError(f"{src_p}: no Parquet files; is this a captured dataset directory?")
    _check_paths(src_p, dst_p, overwrite)
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

    manifest = ManifestData(
        policy_fingerprint=config.policy.fingerprint,
        key_fingerprint=config.key.fingerprint,
        nlp_model=config.nlp_model,
        entities=config.policy.entities,
        unavailable_entities=unavailable_entities(config.policy.entities, config.nlp_model),
    )
    dst_p.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst_p.parent / f".{dst_p.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    counts: Counter[str] = Counter()
    results = (results_fn or _results)(units, config, workers)
    try:
        done = 0
        for info in infos:
            rel = info.path.relative_to(base)
            out_path = tmp / rel
            out_path.parent.mkdir(parents=True, exist_ok=True)
            pf = pq.ParquetFile(info.path)
            in_schema = pf.schema_arrow
            if info.version < schema.SCHEMA_VERSION:
                in_schema = schema.upgrade(in_schema.empty_table(), schema.KIND_EXCHANGES).schema
            out_schema = in_schema.with_metadata(_output_metadata(pf, info, config))
            pf.close()
            with pq.ParquetWriter(
                out_path, out_schema, compression="zstd", write_statistics=True
            ) as writer:
                for _ in range(info.num_row_groups):
                    batch, batch_counts = next(results)
                    table = pa.Table.from_batches([batch]).replace_schema_metadata(
                        out_schema.metadata
                    )
                    writer.write_table(table, row_group_size=max(table.num_rows, 1))
                    counts.update(batch_counts)
                    done += batch.num_rows
                    if progress:
                        progress(done, total)
            manifest.files.append(FileEntry(str(rel), info.num_rows, info.num_row_groups))
        manifest.counts = dict(counts)
        schema.write_json_atomic(tmp / MANIFEST_NAME, manifest.to_json())
        _publish(tmp, dst_p)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        results.close()  # an engine's workers (a Ray session) stop now, not at garbage collection
    return SanitizeResult(dst_p, manifest)


def _publish(tmp: Path, dst: Path) -> None:
    """Rename the finished directory into place; an old output (--overwrite) is moved aside
    first and removed only after the new one is in place."""
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        os.replace(dst, old)
    os.replace(tmp, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
