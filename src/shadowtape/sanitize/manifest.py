"""The sanitize manifest: what was found and done, as counts (never values), beside the data.

It is written as `_manifest.json` (the underscore makes dataset readers skip it) and holds no
clock or path, so the same input, policy and key give a byte-identical manifest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shadowtape.manifest_check import MANIFEST_FORMAT, MANIFEST_NAME, file_digest

__all__ = ["MANIFEST_FORMAT", "MANIFEST_NAME", "file_digest"]  # where readers of the format find it

MANIFEST_VERSION = 1


@dataclass(frozen=True, slots=True)
class FileEntry:
    name: str
    rows: int
    row_groups: int
    # The file's bytes as sanitize wrote them: verify reports any file changed afterwards.
    sha256: str = ""


@dataclass(slots=True)
class ManifestData:
    policy_fingerprint: str
    key_fingerprint: str
    nlp_model: str | None
    entities: tuple[str, ...]
    unavailable_entities: tuple[str, ...]
    # The marker redacted values became: verify accepts it wherever a value was removed.
    redact_marker: str = "[REDACTED]"
    files: list[FileEntry] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "policy_fingerprint": self.policy_fingerprint,
            "key_fingerprint": self.key_fingerprint,
            "nlp_model": self.nlp_model,
            "entities": list(self.entities),
            "unavailable_entities": list(self.unavailable_entities),
            "redact_marker": self.redact_marker,
            "rows": self.rows,
            "files": [
                {"name": f.name, "rows": f.rows, "row_groups": f.row_groups, "sha256": f.sha256}
                for f in self.files
            ],
            "counts": nest_counts(self.counts),
        }


def nest_counts(flat: Mapping[str, int]) -> dict[str, Any]:
    """`detected|EMAIL_ADDRESS|response_body: 3` -> {"detected": {"EMAIL_ADDRESS": {...}}}."""
    out: dict[str, Any] = {}
    for key in sorted(flat):
        *parents, leaf = key.split("|")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = node.get(leaf, 0) + flat[key]
    return out


def totals_by(flat: Mapping[str, int], kind: str, level: int = 1) -> dict[str, int]:
    """Counts of one kind summed over everything below `level` (per entity, per action)."""
    out: dict[str, int] = {}
    for key, n in flat.items():
        parts = key.split("|")
        if parts[0] == kind and len(parts) > level:
            out[parts[level]] = out.get(parts[level], 0) + n
    return dict(sorted(out.items()))
