"""W3C Trace Context: the ids replay sends, and the `traceparent` serve reads.

Replay's ids derive from the run id and the recorded ids: one trace per replayed session, one
span per request send. A new run gets new ids (its run id is new), and the same run can
recompute them. A double answering a replayed (or any traced) request reads its traceparent,
so its server span joins the caller's trace.
"""

from __future__ import annotations

import hashlib
import re

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


def _hex(nbytes: int, *parts: str | int) -> str:
    h = hashlib.blake2b(digest_size=nbytes)
    for p in parts:
        h.update(str(p).encode("utf-8", "surrogateescape"))
        h.update(b"\x00")
    value = h.hexdigest()
    # All-zero ids are invalid in the spec; astronomically unlikely, but cheap to rule out.
    return value if value.strip("0") else "1".rjust(nbytes * 2, "0")


def trace_id(run_id: str, session_id: str) -> str:
    return _hex(16, "trace", run_id, session_id)


def span_id(run_id: str, exchange_id: str, replay_pass: int) -> str:
    return _hex(8, "span", run_id, exchange_id, replay_pass)


def traceparent(trace: str, span: str, sampled: bool = True) -> str:
    return f"00-{trace}-{span}-{'01' if sampled else '00'}"


def parse_traceparent(value: str | None) -> tuple[str, str] | None:
    """(trace id, parent span id) of a `traceparent` header, or None when it is absent or
    not one (the spec says to ignore a malformed one, all-zero ids included)."""
    m = _TRACEPARENT.match((value or "").strip().lower())
    if m is None or not m.group(1).strip("0") or not m.group(2).strip("0"):
        return None
    return m.group(1), m.group(2)
