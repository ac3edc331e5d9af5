"""Every replay option in one frozen, picklable value, and the parsers that build it.

`ReplayConfig` is what `run_replay` takes, so a CLI, a test or a Ray actor on another machine
drive the same loop with the same options; it holds no callables and no open resources.
The parsers turn the CLI's strings into typed values and raise `InputError` with one line that
names the option and the fix.
"""

from __future__ import annotations

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


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 3  # total tries, the first included
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
