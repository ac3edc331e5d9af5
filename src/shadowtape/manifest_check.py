"""Does a dataset flagged sanitized hold exactly what sanitize wrote? One check for every
reader that must know: `verify` reports each problem as a finding, `replay` refuses to send
on the first one.

Sanitize writes `_manifest.json` beside its files (sanitize/manifest.py): every file with its
row count, row-group count and SHA-256, and the total rows. The `shadowtape.sanitized` flag in
a file's metadata alone vouches for nothing: a raw file copied in keeps whatever flag it was
given, so a file added, removed, cut or replaced since sanitize is a problem here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shadowtape.errors import InputError

MANIFEST_NAME = "_manifest.json"
MANIFEST_FORMAT = "shadowtape.sanitize-manifest"

# What is known of a file found in the dataset: (rows, row groups), or None where its footer
# could not be read.
FileCounts = tuple[int, int] | None


@dataclass(frozen=True, slots=True)
class ManifestProblem:
    code: str  # MANIFEST_MISSING, MANIFEST_UNREADABLE, MANIFEST_UNLISTED_FILE, ...
    name: str  # the file it is about, relative to the dataset; "" for the manifest itself
    detail: str  # what is wrong, for a person


@dataclass(slots=True)
class ManifestCheck:
    manifest: dict[str, Any]  # {} where there is none to read
    problems: list[ManifestProblem]


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_path(dataset: Path) -> Path:
    return (dataset if dataset.is_dir() else dataset.parent) / MANIFEST_NAME


def check_manifest(dataset: Path, present: Mapping[str, FileCounts]) -> ManifestCheck:
    """Every problem of the manifest beside `dataset` against the files `present` there (by
    name relative to the manifest's directory), in a stable order."""
    path = manifest_path(dataset)
    base = path.parent
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return ManifestCheck(
            {},
            [
                ManifestProblem(
                    "MANIFEST_MISSING",
                    "",
                    f"flagged sanitized but has no {MANIFEST_NAME} (sanitize writes one beside "
                    "its files)",
                )
            ],
        )
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return _unreadable(f"unreadable {MANIFEST_NAME} ({exc})")
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        return _unreadable(f"{MANIFEST_NAME} is not a sanitize manifest")
    listed: dict[str, dict[str, Any]] = {}
    for entry in doc.get("files") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            return _unreadable(f"{MANIFEST_NAME} has a files entry without a name")
        listed[entry["name"]] = entry
    problems: list[ManifestProblem] = []
    for name in sorted(set(present) - set(listed)):
        problems.append(
            ManifestProblem("MANIFEST_UNLISTED_FILE", name, f"{name} is not in {MANIFEST_NAME}")
        )
    for name, entry in sorted(listed.items()):
        if name not in present or not (base / name).is_file():
            problems.append(
                ManifestProblem(
                    "MANIFEST_MISSING_FILE", name, f"{MANIFEST_NAME} lists {name}, which is missing"
                )
            )
            continue
        counts = present[name]
        if counts is None:
            problems.append(
                ManifestProblem("MANIFEST_UNREADABLE_FILE", name, f"{name} is not readable Parquet")
            )
            continue
        # Rows are compared for a clear line; the digest below catches every other change.
        if counts[0] != entry.get("rows"):
            problems.append(
                ManifestProblem(
                    "MANIFEST_ROW_COUNT",
                    name,
                    f"{name} has {counts[0]} rows, {MANIFEST_NAME} says {entry.get('rows')}",
                )
            )
        digest = entry.get("sha256")
        if not digest or digest != file_digest(base / name):
            problems.append(
                ManifestProblem(
                    "MANIFEST_ALTERED_FILE",
                    name,
                    f"{name} is not the file sanitize wrote (its SHA-256 "
                    + ("differs from" if digest else "is not in")
                    + f" {MANIFEST_NAME})",
                )
            )
    total = sum(e["rows"] for e in listed.values() if isinstance(e.get("rows"), int))
    if doc.get("rows") != total:
        problems.append(
            ManifestProblem(
                "MANIFEST_ROW_COUNT",
                "",
                f"{MANIFEST_NAME} says {doc.get('rows')} rows in all, its files {total}",
            )
        )
    return ManifestCheck(doc, problems)


def require_manifest(source: str, files: Iterable[tuple[Path, int, int]]) -> None:
    """For the stages that take sanitized data where it is used (replay sends it to staging,
    serve answers tests with it): refuse it on its first manifest problem, in one line."""
    src = Path(source)
    base = manifest_path(src).parent
    present = {f.relative_to(base).as_posix(): (rows, groups) for f, rows, groups in files}
    problems = check_manifest(src, present).problems
    if problems:
        more = len(problems) - 1
        raise InputError(
            f"{source}: {problems[0].detail}"
            + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")
            + "; sanitize it again, or pass --allow-unsanitized if it holds no real user data"
        )


def _unreadable(detail: str) -> ManifestCheck:
    return ManifestCheck({}, [ManifestProblem("MANIFEST_UNREADABLE", "", detail)])
