"""`--workers N|auto` for the commands that run several local processes (capture, replay)."""

from __future__ import annotations

import os

from shadowtape.errors import InputError


def cores() -> int:
    """The cores this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def parse_workers(text: str | None) -> int:
    """A count of processes, or `auto` for one per core; 1 when not given."""
    if text is None:
        return 1
    if text.strip().lower() == "auto":
        return cores()
    try:
        count = int(text)
    except ValueError:
        raise InputError(f"--workers {text!r}: give a number of processes or `auto`") from None
    if count < 1:
        raise InputError(f"--workers {count}: use 1 or more (or `auto`)")
    return count
