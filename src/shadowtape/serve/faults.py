"""Seeded choices: which requests get an injected fault, and what latency each is given.

"Same seed, same behaviour" has to survive concurrency, so no shared random stream is drawn
from (whose order would depend on which request the event loop reached first). Every choice is
a keyed hash of (seed, route, the request's arrival index on that route, purpose): the Nth
request to `POST /v1/charges` gets the same fault and the same sampled latency in every run
with the same seed, whatever else is in flight. Rates therefore hold per route, and a run's
faults can be predicted from its seed alone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from shadowtape.serve.matchers import FaultRates

LATENCY_MODES = ("recorded", "distribution", "none")
FAULT_ERROR = "error"
FAULT_TIMEOUT = "timeout"
FAULT_RESET = "reset"
_SCALE = float(1 << 64)


def unit(seed: int, route: str, arrival: int, purpose: str) -> float:
    """A uniform number in [0, 1), a pure function of its inputs."""
    h = hashlib.blake2b(f"{seed}\x00{route}\x00{arrival}\x00{purpose}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "big") / _SCALE


def injected_fault(seed: int, rates: FaultRates, route: str, arrival: int) -> str | None:
    """One draw decides, so each rate is exactly its own share: reset, then timeout, then
    error, stacked on [0, 1)."""
    if not rates.any:
        return None
    u = unit(seed, route, arrival, "fault")
    if u < rates.reset:
        return FAULT_RESET
    if u < rates.reset + rates.timeout:
        return FAULT_TIMEOUT
    if u < rates.reset + rates.timeout + rates.error:
        return FAULT_ERROR
    return None


def recorded_fault(status: int | None, error: str | None) -> str | None:
    """How a recorded failure without a response is reproduced: a timeout holds the
    connection, anything else (reset, refused, killed, closed early) resets it."""
    if status is not None or not error:
        return None
    text = error.lower()
    if "timeout" in text or "timed out" in text:
        return FAULT_TIMEOUT
    return FAULT_RESET


@dataclass(frozen=True, slots=True)
class LatencyModel:
    """What delay a matched answer is sent after, measured from the request's first byte."""

    mode: str = "recorded"
    scale: float = 1.0
    seed: int = 0

    def delay_us(
        self, recorded_us: int | None, route_latencies: list[int], route: str, arrival: int
    ) -> int:
        if self.mode == "none":
            return 0
        if self.mode == "distribution" and route_latencies:
            u = unit(self.seed, route, arrival, "latency")
            base = route_latencies[min(int(u * len(route_latencies)), len(route_latencies) - 1)]
        elif recorded_us is not None:
            base = recorded_us
        elif route_latencies:
            # An exchange recorded without timings gets its route's median, not zero.
            base = route_latencies[len(route_latencies) // 2]
        else:
            base = 0
        return max(0, round(base * self.scale))
