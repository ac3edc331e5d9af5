"""W3C Trace Context ids for replayed requests, so staging's traces join to the results.

Ids derive from the run id and the recorded ids: one trace per replayed session, one span per
request send. A new run gets new ids (its run id is new), and the same run can recompute them.
"""

from __future__ import annotations

import hashlib


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
