"""Dataset fingerprints: one short identity per dataset version, cheap on big datasets.

    fingerprint = sha256 over the sorted lines "RELPATH\\0SIZE\\0sha256(FOOTER)\\n"

for every finalized Parquet file of the dataset (the files `schema.dataset_files` lists), where
FOOTER is the Parquet footer: the trailing FileMetaData block (row groups, column chunk offsets
and compressed sizes, statistics, key/value metadata such as the policy fingerprint and the
lineage), plus the lines "NAME\\0SIZE\\0sha256(FILE)\\n" of the small JSON sidecars at the
top of the directory (sanitize's `_manifest.json`, diff's `summary.json`, which `report`
reads), hashed whole. It costs one small read at the end of each Parquet file, so
fingerprinting a terabyte costs what fingerprinting a megabyte does; hashing every byte would
cost a full read on every command that the audit trail records.

What it guarantees: any file added, removed or renamed, any change of size, row count, row
group layout, column statistics or metadata changes the fingerprint, and so does nearly every
content change (Parquet's compressed sizes and min/max statistics move with the data). Same
bytes give the same fingerprint, wherever the dataset is copied. What it does not: it is an
identity for lineage and audit records, not a seal against a deliberate edit crafted to keep
every size and statistic; the audit log itself is the tamper-evident part.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shadowtape.errors import DatasetError
from shadowtape.schema import META_KIND, META_SANITIZED, dataset_files, open_file

PREFIX = "sha256:"
SIDECAR_LIMIT = 16 * 1024 * 1024  # manifests and summaries; anything bigger is not one
_MAGIC = b"PAR1"


def _footer_digest(path: Path, size: int) -> str:
    """sha256 of the Parquet footer (the FileMetaData block before the last 8 bytes)."""
    try:
        with open(path, "rb") as fh:
            if size < 12:
                raise DatasetError(f"{path}: {size} bytes, too short to be a Parquet file")
            fh.seek(size - 8)
            tail = fh.read(8)
            if tail[4:] != _MAGIC:
                raise DatasetError(f"{path}: no Parquet footer (truncated or not Parquet)")
            (length,) = struct.unpack("<I", tail[:4])
            if length > size - 12:
                raise DatasetError(f"{path}: Parquet footer length {length} exceeds the file")
            fh.seek(size - 8 - length)
            return hashlib.sha256(fh.read(length)).hexdigest()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror})") from None


@dataclass(frozen=True, slots=True)
class DatasetFingerprint:
    """A dataset's identity plus the few facts an audit record shows beside it."""

    path: str
    fingerprint: str
    files: int
    rows: int
    kind: str | None
    sanitized: bool | None
    modes: tuple[int, ...] = field(default=(), repr=False)  # st_mode of the dir and files

    def to_json(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if k != "modes"}


def dataset_fingerprint(path: str | os.PathLike[str]) -> DatasetFingerprint:
    """Fingerprint a dataset directory (or one Parquet file); raises DatasetError if unreadable."""
    root = Path(path)
    files = dataset_files(root)
    lines = []
    rows = 0
    kinds: set[str] = set()
    flags: set[str] = set()
    modes = [root.stat().st_mode] if root.is_dir() else []
    for f in files:
        st = f.stat()
        modes.append(st.st_mode)
        rel = f.name if f == root else f.relative_to(root).as_posix()
        lines.append(f"{rel}\0{st.st_size}\0{_footer_digest(f, st.st_size)}\n")
        pf, info = open_file(f)
        pf.close()
        rows += info.num_rows
        kinds.add(info.metadata.get(META_KIND, "exchanges"))
        flags.add(info.metadata.get(META_SANITIZED, "false"))
    if root.is_dir():
        for side in sorted(root.glob("*.json")):
            if side.is_file() and side.stat().st_size <= SIDECAR_LIMIT:
                digest_hex = file_fingerprint(side).removeprefix(PREFIX)
                lines.append(f"{side.name}\0{side.stat().st_size}\0{digest_hex}\n")
    digest = hashlib.sha256("".join(sorted(lines)).encode("utf-8", "surrogateescape"))
    return DatasetFingerprint(
        path=str(root),
        fingerprint=PREFIX + digest.hexdigest(),
        files=len(files),
        rows=rows,
        kind=kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else None),
        sanitized=(flags == {"true"}) if flags else None,
        modes=tuple(modes),
    )


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """sha256 of a whole file: for inputs that are not datasets (HAR, flow files, reports)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror})") from None
    return PREFIX + h.hexdigest()
