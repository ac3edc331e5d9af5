"""A live status line for long work: redrawn in place on a terminal, silent otherwise.

Logs and CI output stay clean (no carriage returns) while a person at a terminal sees
progress; the final summary is always printed by the command itself.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class LiveLine:
    def __init__(
        self, stream: TextIO | None = None, interval: float = 0.2, enabled: bool | None = None
    ) -> None:
        self.stream = stream or sys.stderr
        self.interval = interval
        if enabled is None:
            enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.enabled = enabled
        self._last = 0.0
        self._width = 0

    def update(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        pad = max(0, self._width - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._width = len(text)

    def clear(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0
