"""The systems one run sends to, and what each keeps to itself.

Without a baseline there is one side, the candidate (`--target`). With `--baseline` every
request also goes to the baseline under the same schedule, and with `--baseline-2` to a second
baseline, whose differences from the first tell the diff stage what is noise (Diffy's primary,
secondary and candidate). Each side owns what must not be shared between systems: its target
map, its circuit breaker (a baseline that is down stops the run as surely as a candidate that
is), its sender (connection pool and in-flight bound, so each system sees the load it would
see alone) and, per session, its correlation bindings (a token the baseline minted goes only
to the baseline).

Where a side's answer lands in the results: the candidate's in the staging_* columns of the
replay_pass 1 row, the baseline's in the baseline_* columns of the same row, the second
baseline's in the baseline_* columns of a replay_pass 2 row (see `schema.RESULT_SCHEMA`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from shadowtape.errors import InputError
from shadowtape.replay.config import ReplayConfig, check_target_url
from shadowtape.replay.guardrails import CircuitBreaker, check_target_allowed
from shadowtape.replay.plan import stable_hash
from shadowtape.replay.sender import Sender, TargetMap

CANDIDATE = "candidate"
BASELINE = "baseline"
BASELINE_2 = "baseline-2"


@dataclass(frozen=True, slots=True)
class SideSpec:
    name: str  # candidate | baseline | baseline-2
    url: str
    option: str  # the option that named it, for messages
    replay_pass: int  # the results row its answers go in

    @property
    def is_candidate(self) -> bool:
        return self.name == CANDIDATE


def side_specs(config: ReplayConfig) -> tuple[SideSpec, ...]:
    specs = [SideSpec(CANDIDATE, config.target, "--target", 1)]
    if config.baseline is not None:
        specs.append(SideSpec(BASELINE, config.baseline, "--baseline", 1))
    if config.baseline_2 is not None:
        specs.append(SideSpec(BASELINE_2, config.baseline_2, "--baseline-2", 2))
    return tuple(specs)


def check_sides(config: ReplayConfig) -> None:
    """The refusals a baseline comparison adds: every target checked like --target, and no
    combination whose results could not be compared like with like."""
    if config.baseline_2 is not None and config.baseline is None:
        raise InputError("--baseline-2 needs --baseline: it is the baseline's second instance")
    if config.baseline is None:
        return
    specs = side_specs(config)
    seen: dict[str, str] = {}
    for spec in specs:
        if not spec.is_candidate:
            check_target_url(spec.url, option=spec.option)
            check_target_allowed(spec.url, config.allow_hosts, option=spec.option)
        same = seen.get(spec.url.rstrip("/"))
        if same is not None:
            # One server would get every request (and every write) twice, and the comparison
            # would compare the server with itself.
            raise InputError(
                f"{spec.option} {spec.url}: the same URL as {same}; each side must be its own "
                "deployment"
            )
        seen[spec.url.rstrip("/")] = spec.option
    if any(r.kind == "host" for r in config.rewrites):
        raise InputError(
            "--rewrite HOST=URL sends a recorded host to one fixed URL, which would send the "
            "baseline's requests to that URL too; with --baseline use path rewrites only "
            "(/old/=/new/), which apply to every side"
        )
    if config.baseline_2 is not None and config.noise_sample:
        raise InputError(
            "--noise-sample with --baseline-2: the second baseline already answers every "
            "request for the noise comparison; drop one of them"
        )


class Side:
    """One system of the run, with its own target map, breaker and sender."""

    def __init__(self, spec: SideSpec, config: ReplayConfig, now: Callable[[], float]) -> None:
        self.spec = spec
        # Host rewrites are refused with a baseline (check_sides); path rewrites apply to all.
        self.targets = TargetMap(spec.url, config.rewrites)
        self.breaker = CircuitBreaker(config.breaker)
        self.sender = Sender(config, self.breaker, now=now, targets=self.targets)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def is_candidate(self) -> bool:
        return self.spec.is_candidate

    def trip_reason(self) -> str | None:
        trip = self.breaker.trip
        if trip is None:
            return None
        if self.is_candidate:
            return trip.reason
        return f"{self.spec.option} {self.spec.url}: {trip.reason}"

    def retry_key(self, exchange_id: str, replay_pass: int) -> str:
        # The candidate's key is what it was before baselines existed: the same run config
        # waits the same way on a retry.
        base = f"{exchange_id}/{replay_pass}"
        return base if self.is_candidate else f"{base}/{self.name}"


def send_order(exchange_id: str, count: int) -> list[int]:
    """The order the sides' requests of one exchange are started in: rotated per exchange by
    a stable hash, so that whichever send the event loop serves first is not always the same
    side's, and the latency comparison cannot favour one of them."""
    if count < 2:
        return list(range(count))
    first = stable_hash("send-order", exchange_id) % count
    return [(first + k) % count for k in range(count)]
