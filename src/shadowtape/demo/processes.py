"""Child processes for the demo: one-shot steps whose output is shown as it comes, and
long-running services (sample APIs, the capture proxy) that announce their URL on stdout.

Every child's output is echoed, indented under the step that started it, so the demo reads as
one transcript; nothing a child says is swallowed.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from shadowtape.errors import ShadowtapeError

Echo = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long the demo waits before calling a child stuck; generous for a loaded 2-core box."""

    ready_s: float = 60.0  # a service printing its URL
    step_s: float = 300.0  # one stage command running to completion
    stop_s: float = 30.0  # a service flushing and exiting after SIGINT


def _pump(stream: object, lines: queue.Queue[str | None], echo: Echo) -> None:
    for raw in iter(stream.readline, ""):  # type: ignore[attr-defined]
        line = raw.rstrip("\n")
        echo(line)
        lines.put(line)
    lines.put(None)


def _spawn(
    argv: Sequence[str], env: dict[str, str], echo: Echo
) -> tuple[subprocess.Popen[str], queue.Queue[str | None], threading.Thread]:
    """Start a child with stdout and stderr merged, read by a thread that echoes each line."""
    proc = subprocess.Popen(
        list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1
    )
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_pump, args=(proc.stdout, lines, echo), daemon=True)
    reader.start()
    return proc, lines, reader


def run_step(
    label: str, argv: Sequence[str], env: dict[str, str], echo: Echo, timeout_s: float
) -> tuple[int, list[str]]:
    """Run a command to completion, echoing its output; returns (exit code, output lines)."""
    proc, lines, reader = _spawn(argv, env, echo)
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        reader.join(timeout=5)
        raise ShadowtapeError(
            f"`{label}` did not finish in {timeout_s:.0f} s and was stopped "
            "(the machine may be overloaded: retry with fewer --requests)"
        ) from None
    reader.join(timeout=10)
    output = []
    while True:
        try:
            item = lines.get_nowait()
        except queue.Empty:
            break
        if item is not None:
            output.append(item)
    return code, output


@dataclass
class Service:
    """A child that keeps running: started, waited on until it prints its URL, stopped."""

    name: str
    proc: subprocess.Popen[str]
    url: str
    output: list[str] = field(default_factory=list)
    _drainer: threading.Thread | None = None

    @classmethod
    def start(
        cls,
        name: str,
        argv: Sequence[str],
        ready: re.Pattern[str],
        env: dict[str, str],
        echo: Echo,
        timeout_s: float,
    ) -> Service:
        """Start and wait for the line matching `ready` (its group 1 is the URL)."""
        proc, lines, reader = _spawn(argv, env, echo)
        seen: list[str] = []
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
                proc.kill()
            if line is None:
                proc.wait()
                last = seen[-1] if seen else "no output"
                raise ShadowtapeError(
                    f"{name} did not start (exit {proc.returncode}; last output: {last})"
                )
            seen.append(line)
            match = ready.search(line)
            if match:
                service = cls(name, proc, match.group(1), seen)
                # Keep draining so a chatty child can never block on a full pipe.
                service._drainer = threading.Thread(
                    target=service._drain, args=(lines,), daemon=True
                )
                service._drainer.start()
                return service

    def _drain(self, lines: queue.Queue[str | None]) -> None:
        while (line := lines.get()) is not None:
            self.output.append(line)

    def stop(self, timeout_s: float) -> int:
        """SIGINT, as Ctrl-C would: services flush and finalize; killed if they hang."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._drainer is not None:
            self._drainer.join(timeout=5)  # ends when the pump has read the child's last line
        return self.proc.returncode
