"""Every serve option in one frozen value, checked once, with one-line errors.

`ServeConfig` is what `run_serve` and `start_double` take, so the CLI, the pytest plugin and a
test drive the same double with the same options and the same defaults.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shadowtape.errors import InputError
from shadowtape.keyed import DEFAULT_KEY_ENV
from shadowtape.serve.faults import LATENCY_MODES
from shadowtape.serve.matchers import FaultRates
from shadowtape.serve.selection import EXHAUSTED_POLICIES
from shadowtape.sessions import SessionKey
from shadowtape.targets import DEFAULT_ALLOWED_HOSTS, check_target_allowed, check_target_url

ON_MISS = ("404", "502", "fallback")
DEFAULT_PORT = 8900


@dataclass(frozen=True, slots=True)
class ServeConfig:
    source: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    allow_unsanitized: bool = False
    matchers: str | None = None  # matcher file (YAML or JSON)
    routes: str | None = None  # route templates or OpenAPI file
    session_key: str = "auto"
    exhausted: str = "repeat-last"
    latency: str = "recorded"
    latency_scale: float = 1.0
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    reset_rate: float = 0.0
    error_status: int = 503
    hold_s: float = 30.0  # how long a timeout holds a connection before the double closes it
    seed: int = 0
    on_miss: str | None = None  # None: fallback when --fallback is given, else 404
    fallback: str | None = None
    allow_hosts: tuple[str, ...] = DEFAULT_ALLOWED_HOSTS
    record: str | None = None  # dataset for fallback exchanges
    served: str | None = None  # served-requests dataset
    max_body: int = 64 * 1024  # request body bytes kept in the served dataset
    certfile: str | None = None
    keyfile: str | None = None
    key_file: str | None = None
    key_env: str = DEFAULT_KEY_ENV
    redact_headers: tuple[str, ...] = ()  # more credential headers, as capture's option
    grace_s: float = 5.0
    otlp_endpoint: str | None = None  # None: OTEL_EXPORTER_OTLP_* from the environment, or off
    roll_seconds: float = 10.0  # how long served rows wait before their file is finalized

    @property
    def miss_policy(self) -> str:
        if self.on_miss is not None:
            return self.on_miss
        return "fallback" if self.fallback else "404"

    @property
    def rates(self) -> FaultRates:
        return FaultRates(self.error_rate, self.timeout_rate, self.reset_rate)

    @property
    def parsed_session_key(self) -> SessionKey:
        return SessionKey.parse(self.session_key)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> ServeConfig:
        """Raises InputError naming the option and the fix; returns self for chaining."""
        if not 0 <= self.port <= 65535:
            raise InputError(f"--listen port {self.port}: give 0..65535 (0 picks a free port)")
        self.parsed_session_key  # noqa: B018 - raises on a bad spec
        if self.exhausted not in EXHAUSTED_POLICIES:
            raise InputError(
                f"--exhausted {self.exhausted!r}: expected one of cycle, repeat-last, miss"
            )
        if self.latency not in LATENCY_MODES:
            raise InputError(f"--latency {self.latency!r}: expected recorded, distribution or none")
        if not self.latency_scale >= 0:
            raise InputError(f"--latency-scale {self.latency_scale}: give a factor >= 0")
        for name, rate in (
            ("--error-rate", self.error_rate),
            ("--timeout-rate", self.timeout_rate),
            ("--reset-rate", self.reset_rate),
        ):
            if not 0.0 <= rate <= 1.0:
                raise InputError(f"{name} {rate}: give a share between 0 and 1")
        if self.error_rate + self.timeout_rate + self.reset_rate > 1.0:
            raise InputError("--error-rate, --timeout-rate and --reset-rate add up to more than 1")
        if not 400 <= self.error_status <= 599:
            raise InputError(f"--error-status {self.error_status}: give a 4xx or 5xx status")
        if not self.hold_s > 0:
            raise InputError(f"--hold {self.hold_s}: give a number of seconds > 0")
        policy = self.miss_policy
        if policy not in ON_MISS:
            raise InputError(f"--on-miss {policy!r}: expected 404, 502 or fallback")
        if policy == "fallback" and not self.fallback:
            raise InputError("--on-miss fallback needs --fallback URL (the real service)")
        if self.fallback:
            if policy != "fallback":
                raise InputError(
                    f"--fallback is used only with --on-miss fallback (not {policy}); drop one"
                )
            check_target_url(self.fallback, option="--fallback")
            check_target_allowed(self.fallback, self.allow_hosts, option="--fallback")
        if self.record and not self.fallback:
            raise InputError("--record DIR records what --fallback answers; give --fallback URL")
        if bool(self.certfile) != bool(self.keyfile):
            raise InputError("TLS needs both --certfile and --keyfile")
        for option, value in (("--certfile", self.certfile), ("--keyfile", self.keyfile)):
            if value and not Path(value).is_file():
                raise InputError(f"{option} {value}: no such file")
        for option, value in (("--record", self.record), ("--served", self.served)):
            if value and Path(value).resolve() == Path(self.source).resolve():
                raise InputError(f"{option} {value}: is the dataset being served; choose another")
        if self.max_body < 0:
            raise InputError(f"--max-body {self.max_body}: give a number of bytes >= 0")
        return self
