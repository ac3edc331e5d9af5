"""Reading the audit log back: filters for `audit show` and one-line renderings."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shadowtape.errors import InputError

_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> str:
    """`7d`, `12h`, `2026-11-30`, `2026-11-30T08:00` (UTC) -> the record-time string to
    compare with (records' times sort as strings)."""
    now = now or datetime.now(UTC)
    m = _RELATIVE.match(text)
    if m:
        moment = now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    else:
        try:
            moment = datetime.fromisoformat(text.strip().removesuffix("Z"))
        except ValueError:
            raise InputError(
                f"--since {text!r}: use a UTC date or time (2026-11-30, 2026-11-30T08:00) or an "
                "age such as 7d, 12h, 30m"
            ) from None
        if moment.tzinfo is not None:
            moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.replace(tzinfo=None).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class RecordFilter:
    command: str | None = None
    since: str | None = None
    actor: str | None = None
    dataset: str | None = None

    def _dataset_hit(self, record: Mapping[str, Any]) -> bool:
        want = self.dataset or ""
        bare = want.removeprefix("sha256:")
        for entry in [*(record.get("inputs") or []), *(record.get("outputs") or [])]:
            fp = (entry.get("fingerprint") or "").removeprefix("sha256:")
            if (bare and len(bare) >= 6 and fp.startswith(bare)) or entry.get("path") == want:
                return True
            if entry.get("path") and want and entry["path"].rstrip("/") == want.rstrip("/"):
                return True
        return False

    def matches(self, record: Mapping[str, Any]) -> bool:
        if self.command and record.get("command") != self.command:
            return False
        if self.since and str(record.get("time", "")) < self.since:
            return False
        if self.actor and record.get("actor") != self.actor:
            return False
        return not self.dataset or self._dataset_hit(record)


def select_records(
    records: Iterable[dict[str, Any]], flt: RecordFilter
) -> Iterator[dict[str, Any]]:
    return (r for r in records if flt.matches(r))


def _datasets(entries: list[dict[str, Any]]) -> str:
    parts = []
    for e in entries:
        fp = (e.get("fingerprint") or "none").removeprefix("sha256:")[:12]
        parts.append(f"{e.get('path')} {fp}")
    return ", ".join(parts)


def record_line(record: Mapping[str, Any]) -> str:
    who = f"{record.get('user')}@{record.get('host')}"
    if record.get("actor"):
        who += f" ({record['actor']})"
    line = (
        f"#{record.get('seq')} {str(record.get('time', ''))[:19]}Z {who} "
        f"{record.get('command')} exit {record.get('exit_code')}"
    )
    parts = {
        "inputs": lambda v: f"  in: {_datasets(v)}",
        "outputs": lambda v: f"  out: {_datasets(v)}",
        "target": lambda v: f"  target {v}",
        "scenarios": lambda v: f"  scenarios {','.join(v)}",
        "risk_confirmed": lambda v: f" (confirmed {v})",
        "error": lambda v: f"  error: {v}",
    }
    for key, show in parts.items():
        if record.get(key):
            line += show(record[key])
    return line
