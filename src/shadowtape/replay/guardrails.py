"""What stops a replay that is doing harm (where it may send lives in shadowtape.targets,
what it may read in shadowtape.manifest_check)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from shadowtape.replay.config import BreakerPolicy


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
