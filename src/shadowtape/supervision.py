"""What a parent process that supervises local worker processes needs, whatever the stage
(`capture --workers`, `replay --workers`): Ctrl-C and SIGTERM counted, not acted on inside a
signal handler, and one way to say how a worker ended."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any


class SignalCounter:
    """SIGINT and SIGTERM, counted; the supervisor's loop relays them to its workers (a
    handler that talked to pipes could interrupt the loop in the middle of talking to one)."""

    def __init__(self) -> None:
        self.count = 0

    @contextmanager
    def installed(self) -> Iterator[SignalCounter]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals reach the main thread only; its owner relays them
            return

        def handler(signum: int, frame: Any) -> None:
            self.count += 1

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def how_it_ended(exitcode: int | None) -> str:
    """`killed by SIGKILL`, `exited with status 3`: a worker's end, for a report line."""
    code = exitcode or 0
    return f"killed by {signal_name(-code)}" if code < 0 else f"exited with status {code}"


def messages(conn: Connection) -> list[tuple[str, Any]]:
    """What a worker has sent so far, without waiting; what it sent before it went."""
    got = []
    try:
        while conn.poll():
            got.append(conn.recv())
    except (EOFError, OSError):
        pass  # the worker is gone; its sentinel says how
    return got
