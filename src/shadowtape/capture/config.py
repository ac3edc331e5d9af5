"""Capture settings, validated once, from mitmproxy options or the command line alike."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shadowtape.capture.bodies import DEFAULT_MAX_BODY
from shadowtape.capture.sessions import DEFAULT_GAP_SECONDS, SessionKey
from shadowtape.capture.writer import DEFAULT_QUEUE_SIZE, DEFAULT_ROLL_BYTES, DEFAULT_ROLL_SECONDS
from shadowtape.errors import InputError
from shadowtape.governance.access import FileAccess


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    out_dir: Path
    key_file: Path | None = None
    filter_host: re.Pattern[str] | None = None
    filter_path: re.Pattern[str] | None = None
    sample: float = 1.0
    seed: int = 0
    max_body: int = DEFAULT_MAX_BODY
    roll_bytes: int = DEFAULT_ROLL_BYTES
    roll_seconds: float | None = DEFAULT_ROLL_SECONDS
    session_key: SessionKey = field(default_factory=SessionKey)
    session_gap: float = DEFAULT_GAP_SECONDS
    redact_headers: tuple[str, ...] = ()
    queue_size: int = DEFAULT_QUEUE_SIZE
    capture_id: str | None = None
    access: FileAccess = field(default_factory=FileAccess)


def compile_filter(what: str, pattern: str) -> re.Pattern[str] | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise InputError(f"{what} {pattern!r} is not a valid regular expression: {exc}") from None


def parse_number(
    what: str, text: str | float, minimum: float, maximum: float | None = None
) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise InputError(f"{what} {text!r} is not a number") from None
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum:g}" if maximum is not None else ""
        raise InputError(f"{what} is {value:g}; it must be at least {minimum:g}{upper}")
    return value


def build_config(
    *,
    out_dir: str | Path,
    key_file: str | Path | None = None,
    filter_host: str = "",
    filter_path: str = "",
    sample: str | float = 1.0,
    seed: int = 0,
    max_body: int = DEFAULT_MAX_BODY,
    roll_bytes: int = DEFAULT_ROLL_BYTES,
    roll_seconds: str | float | None = DEFAULT_ROLL_SECONDS,
    session_key: str = "auto",
    session_gap: str | float = DEFAULT_GAP_SECONDS,
    redact_headers: Sequence[str] = (),
    queue_size: int = DEFAULT_QUEUE_SIZE,
    capture_id: str | None = None,
    group: str | None = None,
) -> CaptureConfig:
    """Every check in one place, each failing with a line that names the setting."""
    if not str(out_dir):
        raise InputError("no output directory: give --out DIR (shadowtape_out for mitmdump)")
    if max_body < 0:
        raise InputError(f"max body {max_body} is negative; give 0 to keep no bodies")
    if roll_bytes < 1024:
        raise InputError(f"roll size {roll_bytes} bytes is too small; use at least 1024")
    if queue_size < 1:
        raise InputError(f"queue size {queue_size} must be at least 1")
    roll = None
    if roll_seconds not in (None, "", 0, "0"):
        roll = parse_number("roll interval", roll_seconds, 0.05)  # type: ignore[arg-type]
    return CaptureConfig(
        out_dir=Path(out_dir),
        key_file=Path(key_file) if key_file else None,
        filter_host=compile_filter("host filter", filter_host),
        filter_path=compile_filter("path filter", filter_path),
        sample=parse_number("sample fraction", sample, 0.0, 1.0),
        seed=seed,
        max_body=max_body,
        roll_bytes=roll_bytes,
        roll_seconds=roll,
        session_key=SessionKey.parse(session_key),
        session_gap=parse_number("session gap", session_gap, 0.0),
        redact_headers=tuple(h for h in redact_headers if h),
        queue_size=queue_size,
        capture_id=capture_id or None,
        access=FileAccess.private(group or None),
    )
