"""Dataset lineage: each dataset's files say, in their metadata, what it was made from.

`shadowtape.lineage` holds one JSON object per dataset:

    {"stage": "replay", "inputs": [
        {"fingerprint": "sha256:...", "kind": "exchanges", "sanitized": true, "rows": 300,
         "lineage": {"stage": "sanitize", "inputs": [
            {"fingerprint": "sha256:...", "kind": "exchanges", "sanitized": false, "rows": 300,
             "lineage": {"stage": "capture", "inputs": [{"upstream": "http://..."}]}}]}}]}

An input's own lineage is copied in, so one dataset answers raw -> clean -> results without
its ancestors being at hand. Paths are left out on purpose: the same inputs must give
byte-identical outputs wherever they sit on disk; the audit log maps fingerprints to paths.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from shadowtape.governance.fingerprint import dataset_fingerprint, file_fingerprint
from shadowtape.schema import dataset_metadata

META_LINEAGE = "shadowtape.lineage"
MAX_FILES = 100  # an import of thousands of HAR files names the first 100 and counts the rest


def dataset_input(path: str | os.PathLike[str]) -> dict[str, Any]:
    """An input dataset as a lineage entry: its fingerprint and its own lineage."""
    fp = dataset_fingerprint(path)
    entry: dict[str, Any] = {
        "fingerprint": fp.fingerprint,
        "kind": fp.kind,
        "sanitized": fp.sanitized,
        "rows": fp.rows,
    }
    parent = read_lineage(dataset_metadata(path))
    if parent is not None:
        entry["lineage"] = parent
    return entry


def lineage_metadata(
    stage: str,
    datasets: Sequence[str | os.PathLike[str]] = (),
    files: Sequence[str | os.PathLike[str]] = (),
    upstream: str | None = None,
) -> dict[str, str]:
    """The metadata entry a stage adds to every file it writes."""
    inputs: list[dict[str, Any]] = [dataset_input(d) for d in datasets]
    for f in list(files)[:MAX_FILES]:
        p = Path(f)
        inputs.append(
            {"file": p.name, "fingerprint": file_fingerprint(p), "size": p.stat().st_size}
        )
    doc: dict[str, Any] = {"stage": stage, "inputs": inputs}
    if len(files) > MAX_FILES:
        doc["more_files"] = len(files) - MAX_FILES
    if upstream is not None:
        inputs.append({"upstream": upstream})
    return {META_LINEAGE: json.dumps(doc, sort_keys=True, separators=(",", ":"))}


def read_lineage(meta: Mapping[str, str]) -> dict[str, Any] | None:
    raw = meta.get(META_LINEAGE)
    if not raw:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return {"stage": "?", "inputs": [], "error": "unreadable lineage metadata"}
    return doc if isinstance(doc, dict) else None


def _short(fingerprint: str) -> str:
    return fingerprint.removeprefix("sha256:")[:12]


def _describe(entry: Mapping[str, Any]) -> str:
    if "upstream" in entry:
        return f"traffic to {entry['upstream']}"
    if "file" in entry:
        return f"file {entry['file']} ({_short(entry['fingerprint'])})"
    state = "sanitized" if entry.get("sanitized") else "raw"
    kind = entry.get("kind") or "dataset"
    return f"{state} {kind} {_short(entry['fingerprint'])} ({entry.get('rows')} rows)"


def lineage_lines(doc: Mapping[str, Any] | None, indent: str = "  ") -> list[str]:
    """Human lines, newest first: `<- replay of sanitized exchanges 3f2a... (300 rows)`."""
    if not doc:
        return []
    lines = []
    inputs = doc.get("inputs") or []
    if not inputs:
        lines.append(f"{indent}<- {doc.get('stage')} (no recorded inputs)")
    for entry in inputs:
        lines.append(f"{indent}<- {doc.get('stage')} of {_describe(entry)}")
        lines += lineage_lines(entry.get("lineage"), indent + "  ")
    if doc.get("more_files"):
        lines.append(f"{indent}   ... and {doc['more_files']} more files")
    return lines
