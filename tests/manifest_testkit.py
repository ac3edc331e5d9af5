"""The manifest `shadowtape sanitize` writes, for tests that build sanitized datasets by hand."""

from __future__ import annotations

import json
from pathlib import Path

from shadowtape.manifest_check import MANIFEST_FORMAT, file_digest
from shadowtape.schema import read_files


def write_manifest(directory: Path) -> None:
    """The manifest `shadowtape sanitize` writes beside its files, which replay checks."""
    files = [
        {"name": i.path.relative_to(directory).as_posix(), "rows": i.num_rows,
         "row_groups": i.num_row_groups, "sha256": file_digest(i.path)}
        for i in read_files(directory)
    ]  # fmt: skip
    doc = {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "rows": sum(f["rows"] for f in files),
        "files": files,
    }
    (directory / "_manifest.json").write_text(json.dumps(doc))
