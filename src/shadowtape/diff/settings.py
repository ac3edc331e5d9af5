"""DiffOptions from what a user gives on the command line: files are read and checked here,
so a bad ignore or routes file fails before any work with one line naming it."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from shadowtape.diff.compare import DEFAULT_HEADERS, DEFAULT_MAX_DIFFS, CompareOptions
from shadowtape.diff.noise import NoiseThresholds, PinnedRules, load_pinned_rules
from shadowtape.diff.pipeline import (
    SUMMARY_NAME,
    SUMMARY_VERSION,
    DiffOptions,
    options_json,
    results_fingerprint,
)
from shadowtape.errors import InputError
from shadowtape.route_table import RouteTable, load_routes


def build_options(
    *,
    ignore_file: str | os.PathLike[str] | None = None,
    routes_file: str | os.PathLike[str] | None = None,
    headers: str | None = None,
    extra_headers: Sequence[str] = (),
    key_fields: Sequence[str] = (),
    min_request_rate: float | None = None,
    min_contrast: float | None = None,
    max_diffs: int | None = None,
) -> DiffOptions:
    if headers is not None:
        names = {h.strip().lower() for h in headers.split(",") if h.strip()}
    else:
        names = set(DEFAULT_HEADERS)
    names |= {h.strip().lower() for h in extra_headers if h.strip()}
    thresholds = NoiseThresholds()
    for name, value in (("min_request_rate", min_request_rate), ("min_contrast", min_contrast)):
        if value is not None and not 0 <= value <= 1:
            raise InputError(f"--{name.replace('_', '-')} {value}: must lie between 0 and 1")
    thresholds = NoiseThresholds(
        min_request_rate=(
            thresholds.min_request_rate if min_request_rate is None else min_request_rate
        ),
        min_contrast=thresholds.min_contrast if min_contrast is None else min_contrast,
    )
    if max_diffs is not None and max_diffs < 1:
        raise InputError(f"--max-diffs {max_diffs}: must be at least 1")
    compare = CompareOptions(
        headers=frozenset(names),
        key_fields=tuple(k for k in key_fields if k),
        max_diffs=max_diffs or DEFAULT_MAX_DIFFS,
    )
    return DiffOptions(
        compare=compare,
        thresholds=thresholds,
        pinned=load_pinned_rules(ignore_file) if ignore_file else PinnedRules(),
        routes=load_routes(routes_file) if routes_file else RouteTable(),
    )


def diff_is_current(results: Path, out: Path, options: DiffOptions) -> bool:
    """Whether `out` holds a diff of exactly the results files there now, made with exactly
    these options (raises DatasetError when `results` is not a dataset at all). A CI gate's
    verdict must not depend on a diff left over from another run with other options."""
    current = results_fingerprint(results)
    try:
        payload = json.loads((out / SUMMARY_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(payload, dict) or payload.get("version") != SUMMARY_VERSION:
        return False
    stored = json.loads(json.dumps(options_json(options)))  # as JSON gives it back
    return payload.get("results_files") == current and payload.get("options") == stored
