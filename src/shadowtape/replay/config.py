"""Every replay option in one frozen, picklable value, and the parsers that build it.

`ReplayConfig` is what `run_replay` takes, so a CLI, a test or a Ray actor on another machine
drive the same loop with the same options; it holds no callables and no open resources.
The parsers turn the CLI's strings into typed values and raise `InputError` with one line that
names the option and the fix.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from shadowtape.errors import InputError
from shadowtape.governance.scenarios import SessionFilter
from shadowtape.targets import DEFAULT_ALLOWED_HOSTS, check_target_url

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class Timing:
    """When requests are dispatched: recorded offsets / speed, a fixed rate, or at once."""

    mode: str  # speed | rate | max
    speed: float = 1.0
    rate: float = 0.0

    def describe(self) -> str:
        if self.mode == "speed":
            return f"speed x{self.speed:g}"
        if self.mode == "rate":
            return f"rate {self.rate:g} req/s"
        return "speed max"


@dataclass(frozen=True, slots=True)
class RewriteRule:
    """`host` rules send a recorded host to another base URL; `path` rules swap a prefix."""

    kind: str  # host | path
    match: str
    replace: str


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0
    read: float = 30.0
    total: float = 60.0


# --start-at is a shared origin for senders started together; further ahead is a typo (ms for
# seconds) that would wait silently for days.
MAX_START_AHEAD_S = 3600.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    # Total tries, the first included. What is retried (sender.py): requests that never
    # reached staging (connection refused, connect timeout), and idempotent requests answered
    # 502/503/504 or cut off by a connection error. Timeouts after the request was sent are
    # not retried: a hung staging would answer the retry no better, and each try costs a
    # whole --read-timeout.
    attempts: int = 3
    backoff: float = 0.1  # first wait, seconds; doubles per retry
    max_backoff: float = 2.0


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    error_rate: float = 0.5  # 5xx and transport failures over the window
    window: int = 50
    min_requests: int = 20
    connection_failures: int = 10  # consecutive failed connection attempts


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    source: str
    target: str
    out: str
    # Diffy-style comparison: every request also goes to a baseline (the current version) and,
    # optionally, to a second baseline, whose differences from the first are noise.
    baseline: str | None = None
    baseline_2: str | None = None
    timing: Timing = field(default_factory=lambda: Timing("speed", 1.0))
    concurrency: int = 32
    limit: int | None = None
    sessions: int | None = None
    seed: int = 0
    duration: float | None = None
    max_gap: float | None = None
    http: str = "auto"  # 1.1 | 2 | auto
    http1_engine: str = "auto"  # auto | httptools | h11 (see replay.engine)
    keep_host: bool = False
    tls_verify: bool = True
    headers: tuple[tuple[str, str], ...] = ()
    rewrites: tuple[RewriteRule, ...] = ()
    allow_hosts: tuple[str, ...] = DEFAULT_ALLOWED_HOSTS
    allow_unsanitized: bool = False
    allow_writes: bool = False
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    grace: float = 10.0
    max_body: int = 10 * 1024 * 1024
    correlate: str = "auto"  # auto | off | a rules file
    on_miss: str = "send-recorded"  # send-recorded | skip-session
    noise_sample: int = 0
    shard_index: int = 0
    shard_count: int = 1
    start_at: float | None = None  # Unix seconds: a schedule origin shared by several senders
    session_timeout: float = 1800.0  # recorded seconds after which an idle session is forgotten
    reorder_limit: int = 200_000  # rows held to put out-of-order records back in order
    overwrite: bool = False
    run_id: str | None = None
    handle_signals: bool = True
    # Only the sessions of these scenarios are sent (the rest: skipped, not_in_scenario).
    session_filter: SessionFilter | None = None
    # OTLP base URL for traces and metrics; None: the OTEL_EXPORTER_OTLP_* variables, or off.
    otlp_endpoint: str | None = None
    # Results files are finalized this often, so a kill -9 loses at most this much.
    roll_interval: float = 10.0

    @property
    def prefix(self) -> str:
        """File name prefix; shards differ so N senders can share one results directory."""
        if self.shard_count == 1:
            return "results"
        return f"results-shard-{self.shard_index}-of-{self.shard_count}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("handle_signals")
        if self.session_filter is not None:  # compiled patterns: shown as written
            data["session_filter"] = [s.summary() for s in self.session_filter.scenarios]
        return data


# --- parsers for the CLI's strings -------------------------------------------------------


def parse_timing(speed: str | None, rate: float | None) -> Timing:
    if speed is not None and rate is not None:
        raise InputError("--speed and --rate both given; pick one timing mode")
    if rate is not None:
        if rate <= 0:
            raise InputError(f"--rate {rate:g}: must be a positive number of requests per second")
        return Timing("rate", rate=float(rate))
    if speed is None or speed == "1":
        return Timing("speed", 1.0)
    if speed.strip().lower() == "max":
        return Timing("max")
    try:
        value = float(speed)
    except ValueError:
        raise InputError(f"--speed {speed!r}: give a factor such as 2 or 0.5, or `max`") from None
    if not value > 0:
        raise InputError(f"--speed {speed!r}: must be greater than 0")
    return Timing("speed", value)


def parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return 0, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise InputError(f"--shard {text!r}: write it as I/N, e.g. 0/4 for the first of 4 shards")
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1 or index >= count:
        raise InputError(f"--shard {text!r}: I must be in 0..N-1 and N at least 1")
    return index, count


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if (
        not sep
        or not name.strip()
        or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name.strip())
    ):
        raise InputError(f"--header {text!r}: write it as 'Name: value'")
    return name.strip(), value.strip()


def parse_rewrite(text: str) -> RewriteRule:
    match, sep, replace = text.partition("=")
    if not sep or not match:
        raise InputError(
            f"--rewrite {text!r}: write FROM=TO, e.g. api.example.com=http://127.0.0.1:8000 "
            "or /v1/=/v2/"
        )
    if match.startswith("/"):
        if not replace.startswith("/"):
            raise InputError(f"--rewrite {text!r}: a path prefix must be replaced by a path")
        return RewriteRule("path", match, replace)
    check_target_url(replace, option="--rewrite")
    return RewriteRule("host", match.lower(), replace.rstrip("/"))


def check_numbers(config: ReplayConfig, now: float) -> None:
    """Every number of a run, checked before anything is read or sent: NaN, infinity, and
    values that would make a healthy target look broken (a zero breaker rate, a zero
    timeout) are refused with the option's name. `now` is the wall clock (Unix seconds)."""

    def number(flag: str, value: float | None, *, low: float, open_low: bool) -> None:
        if value is None:
            return
        if not math.isfinite(value):
            raise InputError(f"{flag} {value}: give a finite number")
        if value < low or (open_low and value == low):
            bound = f"greater than {low:g}" if open_low else f"at least {low:g}"
            raise InputError(f"{flag} {value:g}: must be {bound}")

    t = config.timing
    number("--rate", t.rate if t.mode == "rate" else None, low=0, open_low=True)
    number("--speed", t.speed if t.mode == "speed" else None, low=0, open_low=True)
    number("--connect-timeout", config.timeouts.connect, low=0, open_low=True)
    number("--read-timeout", config.timeouts.read, low=0, open_low=True)
    number("--total-timeout", config.timeouts.total, low=0, open_low=True)
    number("--duration", config.duration, low=0, open_low=True)
    number("--max-gap", config.max_gap, low=0, open_low=False)
    number("--grace", config.grace, low=0, open_low=False)
    number("--roll-interval", config.roll_interval, low=0, open_low=True)
    b = config.breaker
    number("--breaker-error-rate", b.error_rate, low=0, open_low=True)
    if b.error_rate > 1:
        raise InputError(
            f"--breaker-error-rate {b.error_rate:g}: a share of attempts, between 0 (excluded) "
            "and 1; 1 opens the breaker only when every recent attempt failed"
        )
    if b.connection_failures < 0:
        raise InputError(f"--breaker-failures {b.connection_failures}: must be 0 (off) or more")
    for flag, value, low in (
        ("--concurrency", config.concurrency, 1),
        ("--limit", config.limit, 1),
        ("--sessions", config.sessions, 1),
        ("--noise-sample", config.noise_sample, 0),
        ("--max-body", config.max_body, 1),
        ("--retries", config.retry.attempts - 1, 0),
    ):
        if value is not None and value < low:
            raise InputError(f"{flag} {value}: must be at least {low}")
    if config.start_at is not None:
        number("--start-at", config.start_at, low=0, open_low=False)
        ahead = config.start_at - now
        if ahead > MAX_START_AHEAD_S:
            raise InputError(
                f"--start-at {config.start_at:g}: {ahead:,.0f} s from now; a shared origin "
                f"is at most {MAX_START_AHEAD_S:g} s ahead (Unix seconds, e.g. "
                "$(($(date +%s) + 10)))"
            )
