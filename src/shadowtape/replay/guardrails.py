"""What stops a replay that is doing harm, and what it refuses to read (where it may send
lives in shadowtape.targets)."""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from shadowtape.errors import InputError
from shadowtape.replay.config import BreakerPolicy

# sanitize's output contract: OUT/_manifest.json lists every file it wrote, with its row and
# row-group counts (sanitize/manifest.py writes it; stages do not import each other).
SANITIZE_MANIFEST = "_manifest.json"
SANITIZE_MANIFEST_FORMAT = "shadowtape.sanitize-manifest"


def check_manifest(source: str, files: Iterable[tuple[Path, int, int]]) -> None:
    """A dataset flagged sanitized must be what sanitize wrote: its manifest there, listing
    exactly these files with these row and row-group counts (and, where the manifest has
    them, these SHA-256 digests). Files added, removed or
    replaced since (a copy in part, a raw file dropped in) are refused: the sanitized flag in
    their metadata alone vouches for nothing."""
    src = Path(source)
    base = src if src.is_dir() else src.parent
    path = base / SANITIZE_MANIFEST
    fix = "sanitize it again, or pass --allow-unsanitized if it holds no real user data"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(
            f"{source}: flagged sanitized but has no {SANITIZE_MANIFEST} (sanitize writes one "
            f"beside its files); {fix}"
        ) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable manifest ({exc}); {fix}") from None
    if not isinstance(doc, dict) or doc.get("format") != SANITIZE_MANIFEST_FORMAT:
        raise InputError(f"{path}: not a sanitize manifest; {fix}")
    listed: dict[str, tuple[int, int]] = {}
    digests: dict[str, str] = {}
    for entry in doc.get("files") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InputError(f"{path}: a files entry without a name; {fix}")
        listed[entry["name"]] = (entry.get("rows"), entry.get("row_groups"))
        if entry.get("sha256"):
            digests[entry["name"]] = str(entry["sha256"])
    present = {}
    for f, rows, groups in files:
        present[f.relative_to(base).as_posix()] = (rows, groups)
    for name, counts in present.items():
        if name not in listed:
            raise InputError(f"{source}: {name} is not in {SANITIZE_MANIFEST}; {fix}")
        if listed[name] != counts:
            raise InputError(
                f"{source}: {name} has {counts[0]} rows in {counts[1]} row groups, "
                f"{SANITIZE_MANIFEST} says {listed[name][0]} in {listed[name][1]}; {fix}"
            )
        if name in digests and _sha256(base / name) != digests[name]:
            raise InputError(
                f"{source}: {name} is not the file sanitize wrote (its SHA-256 differs from "
                f"{SANITIZE_MANIFEST}'s); {fix}"
            )
    if src.is_dir():
        absent = sorted(set(listed) - set(present))
        if absent:
            raise InputError(
                f"{source}: {SANITIZE_MANIFEST} lists {absent[0]}, which is missing"
                + (f" (and {len(absent) - 1} more)" if len(absent) > 1 else "")
                + f"; {fix}"
            )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class BreakerTrip:
    reason: str


class CircuitBreaker:
    """Stops a run that is hurting or failing against the target.

    Two signals, each enough: the share of 5xx answers and transport failures among the last
    `window` attempts (once `min_requests` have been seen), and a run of consecutive failed
    connection attempts, which says the target is down and waiting on it is pointless.
    """

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self._window: deque[bool] = deque(maxlen=policy.window)
        self._errors = 0
        self._consecutive_connect = 0
        self.trip: BreakerTrip | None = None

    @property
    def open(self) -> bool:
        return self.trip is not None

    def record(self, *, error: bool, connect_failure: bool = False) -> None:
        if self.trip is not None:
            return
        if len(self._window) == self._window.maxlen and self._window[0]:
            self._errors -= 1
        self._window.append(error or connect_failure)
        if error or connect_failure:
            self._errors += 1
        self._consecutive_connect = self._consecutive_connect + 1 if connect_failure else 0
        p = self.policy
        if p.connection_failures and self._consecutive_connect >= p.connection_failures:
            self.trip = BreakerTrip(
                f"{self._consecutive_connect} connection attempts in a row failed"
            )
        elif len(self._window) >= p.min_requests and self._errors / len(self._window) >= (
            p.error_rate
        ):
            self.trip = BreakerTrip(
                f"error rate {self._errors}/{len(self._window)} over the last attempts "
                f"reached {p.error_rate:.0%}"
            )
