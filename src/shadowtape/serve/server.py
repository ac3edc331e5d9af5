"""A double's life: load, bind, answer, stop, flush; in the foreground or in a thread.

`run_serve` runs until SIGINT or SIGTERM and returns a summary; both signals stop accepting,
give requests in flight `grace_s` to be answered, then close every connection and flush the
served-requests and fallback datasets, so nothing accepted is lost. `start_double` runs the same
double in a background thread for tests (the pytest plugin uses it).
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httptools
import uvloop

from shadowtape.credentials import CredentialScrubber
from shadowtape.errors import InputError, ShadowtapeError
from shadowtape.http.headers import decode as decode_header
from shadowtape.http.target import query_pairs
from shadowtape.keyed import Key, Keyed
from shadowtape.manifest_check import require_manifest
from shadowtape.route_table import load_routes
from shadowtape.schema import (
    KIND_EXCHANGES,
    KIND_SERVED,
    META_SANITIZED,
    capture_metadata,
    check_sanitized,
    dataset_metadata,
    read_files,
    uuid7,
)
from shadowtape.serve.compare import RequestView
from shadowtape.serve.config import ServeConfig
from shadowtape.serve.deadlines import Deadlines
from shadowtape.serve.decide import FAULT, FORWARD, MATCHED, Decider, Decision, Policy
from shadowtape.serve.fallback import Fallback, Forwarded
from shadowtape.serve.faults import FAULT_ERROR, LatencyModel
from shadowtape.serve.matchers import MatcherSet, load_matchers
from shadowtape.serve.protocol import HOLD, RESET, DoubleProtocol, Incoming, Slot
from shadowtape.serve.recording import LoadStats, Recording, load_recording
from shadowtape.serve.served import BackgroundRows
from shadowtape.serve.stats import ServeCounters
from shadowtape.serve.wire import Rendered, json_response
from shadowtape.sessions import SessionTracker
from shadowtape.telemetry import NO_TELEMETRY, RequestSpan, Telemetry, open_telemetry
from shadowtape.traceparent import parse_traceparent

logger = logging.getLogger(__name__)

INTERNAL_PREFIX = b"/__shadowtape/"
DOUBLE_HEADER = "X-Shadowtape-Double"


@dataclass
class ServeSummary:
    url: str
    run_id: str
    counters: ServeCounters
    load: LoadStats
    elapsed_s: float
    served_files: list[Path] = field(default_factory=list)
    recorded_files: list[Path] = field(default_factory=list)
    served_write_errors: int = 0
    recorded_write_errors: int = 0
    recorded_written: int = 0
    warnings: list[str] = field(default_factory=list)
    telemetry: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "run_id": self.run_id,
            "elapsed_s": round(self.elapsed_s, 3),
            "load": asdict(self.load),
            "counters": self.counters.as_json(),
            "served_files": [str(p) for p in self.served_files],
            "recorded_files": [str(p) for p in self.recorded_files],
            "served_write_errors": self.served_write_errors,
            "recorded_write_errors": self.recorded_write_errors,
            "recorded_written": self.recorded_written,
            "warnings": self.warnings,
            "telemetry": self.telemetry,
        }


@dataclass(frozen=True, slots=True)
class Answered:
    """One request settled: what was asked, what the double decided, what the client got."""

    slot: Slot
    decision: Decision
    view: RequestView
    pairs: list[tuple[str, str]]
    status: int | None  # None: reset, held, or the client left first
    error: str | None


def _ssl_context(config: ServeConfig) -> ssl.SSLContext | None:
    if not config.certfile:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(config.certfile, config.keyfile)
    except (ssl.SSLError, OSError) as exc:
        raise InputError(f"--certfile/--keyfile: cannot load them ({exc})") from None
    context.set_alpn_protocols(["http/1.1"])
    return context


class Double:
    """A recording loaded and ready to answer; `start` binds it, `stop` ends it."""

    def __init__(self, config: ServeConfig, on_miss: Callable[[str], None] | None = None) -> None:
        self.config = config.check()
        meta = dataset_metadata(config.source, KIND_EXCHANGES)
        if not meta:
            raise InputError(f"{config.source}: the dataset has no files; nothing to serve")
        sanitized = meta.get(META_SANITIZED) == "true"
        check_sanitized(config.source, sanitized, config.allow_unsanitized)
        if sanitized and not config.allow_unsanitized:
            infos = read_files(config.source, KIND_EXCHANGES)
            require_manifest(config.source, [(i.path, i.num_rows, i.num_row_groups) for i in infos])
        matchers = load_matchers(config.matchers) if config.matchers else MatcherSet()
        routes = load_routes(config.routes) if config.routes else None
        session_key = config.parsed_session_key
        self.recording: Recording = load_recording(config.source, matchers, session_key, routes)
        self.warnings = [
            f"matcher file names a route the recording lacks: {line}"
            for line in matchers.unknown_routes(set(self.recording.by_route))
        ]
        # Credentials in what the double logs and records are tokenized: with the user's key
        # when there is one (a recording from --record must correlate with capture's), else
        # with a key that lives only as long as this run.
        key = Key.load(config.key_file, env=config.key_env, ephemeral=not config.record)
        self.keyed = Keyed(key)
        self.scrubber = CredentialScrubber(self.keyed, config.redact_headers)
        self.run_id = uuid7()
        self._ids = random.Random(int.from_bytes(self.run_id.encode(), "big"))
        self.counters = ServeCounters()
        policy = Policy(
            exhausted=config.exhausted,
            miss=config.miss_policy,
            rates=config.rates,
            seed=config.seed,
            latency=LatencyModel(config.latency, config.latency_scale, config.seed),
            session_key=session_key,
        )
        self.decider = Decider(self.recording, policy, self.counters)
        self.on_miss = on_miss
        self.connections: set[DoubleProtocol] = set()
        self.url = ""
        self.started_at = 0.0
        self._server: asyncio.AbstractServer | None = None
        self._served: BackgroundRows | None = None
        self._recorder: BackgroundRows | None = None
        self._fallback: Fallback | None = None
        self._forwards: set[asyncio.Task[None]] = set()
        self.telemetry: Telemetry = NO_TELEMETRY
        self._fault_answer = json_response(
            config.error_status,
            {"error": "fault injected by shadowtape serve", "fault": FAULT_ERROR},
            [(DOUBLE_HEADER, "fault=error")],
        )

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> str:
        loop = asyncio.get_running_loop()
        config = self.config
        context = _ssl_context(config)

        deadlines = Deadlines(loop)

        def protocol() -> DoubleProtocol:
            return DoubleProtocol(
                self._handle, config.hold_s, self.connections, self._bad, deadlines
            )

        try:
            self._server = await loop.create_server(
                protocol, config.host, config.port, ssl=context, backlog=1024
            )
        except OSError as exc:
            raise ShadowtapeError(
                f"--listen {config.host}:{config.port}: cannot listen ({exc.strerror or exc}); "
                "pick another port, or 0 for a free one"
            ) from None
        self.telemetry = open_telemetry(
            config.otlp_endpoint,
            prefix="shadowtape.serve",
            resource={"shadowtape.run_id": self.run_id},
        )
        sock = self._server.sockets[0]
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if context else 'http'}://{shown}:{port}"
        self.started_at = time.monotonic()
        if config.served:
            self._served = BackgroundRows(
                config.served,
                KIND_SERVED,
                {"shadowtape.serve.run_id": self.run_id, "shadowtape.serve.source": config.source},
                config.roll_seconds,
                prefix=f"served-{self.run_id}",
            )
        if config.fallback:
            recording = config.record is not None
            if recording:
                self._recorder = BackgroundRows(
                    config.record,  # type: ignore[arg-type]
                    KIND_EXCHANGES,
                    capture_metadata(
                        self.run_id, f"serve-fallback:{config.fallback}", self.keyed.key.fingerprint
                    ),
                    config.roll_seconds,
                    prefix=f"capture-{self.run_id}",
                )
            self._fallback = Fallback(
                config.fallback,
                scrubber=self.scrubber if recording else None,
                sessions=SessionTracker(self.keyed, config.parsed_session_key)
                if recording
                else None,
                capture_id=self.run_id,
            )
        return self.url

    async def stop(self, grace_s: float, hurry: asyncio.Event | None = None) -> ServeSummary:
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and not (hurry is not None and hurry.is_set()):
            busy = any(
                any(s.action != HOLD for s in conn.queue) for conn in self.connections
            ) or bool(self._forwards)
            if not busy:
                break
            await asyncio.sleep(0.02)
        for task in list(self._forwards):
            task.cancel()
        for conn in list(self.connections):
            conn.shutdown()
        # A closing transport reports connection_lost once its buffer is flushed; a client
        # that stopped reading gets a second to take it, then the connection is aborted.
        closing = time.monotonic() + 1.0
        while self.connections and time.monotonic() < closing:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn.shutdown(abort=True)
        aborted = time.monotonic() + 1.0
        while self.connections and time.monotonic() < aborted:
            await asyncio.sleep(0.001)
        if self._fallback is not None:
            await self._fallback.close()
        self.telemetry.shutdown()  # flushed on every way out, before the summary reads it
        summary = ServeSummary(
            self.url,
            self.run_id,
            self.counters,
            self.recording.stats,
            time.monotonic() - self.started_at,
            warnings=list(self.warnings),
            telemetry=self.telemetry.summary(),
        )
        loop = asyncio.get_running_loop()
        if self._served is not None:
            summary.served_files = await loop.run_in_executor(None, self._served.close)
            self.counters.served_rows_written = self._served.written
            self.counters.served_rows_dropped = self._served.dropped
            summary.served_write_errors = self._served.write_errors
        if self._recorder is not None:
            summary.recorded_files = await loop.run_in_executor(None, self._recorder.close)
            summary.recorded_written = self._recorder.written
            summary.recorded_write_errors = self._recorder.write_errors
            self.counters.recorded_rows_dropped = self._recorder.dropped
        if self.decider.truncated_searches:
            summary.warnings.append(
                f"{self.decider.truncated_searches} near-miss searches scored only the first "
                "5000 candidates of their route"
            )
        return summary

    # --- answering ----------------------------------------------------------------------

    def _bad(self) -> None:
        self.counters.bad_requests += 1

    def _handle(self, incoming: Incoming, slot: Slot, conn: DoubleProtocol) -> None:
        try:
            url = httptools.parse_url(incoming.url)
        except httptools.HttpParserInvalidURLError:
            self.counters.bad_requests += 1
            slot.data = json_response(400, {"error": "bad request target"}).full
            slot.close = True
            conn.ready(slot)
            return
        raw_path = url.path or b"/"
        if raw_path.startswith(INTERNAL_PREFIX):
            self._internal(raw_path, slot, conn)
            return
        path = decode_header(raw_path)
        pairs = [(decode_header(n), decode_header(v)) for n, v in incoming.headers]
        view = RequestView.of(
            incoming.method,
            path,
            query_pairs(decode_header(url.query or b"")),
            pairs,
            incoming.body,
        )
        decision = self.decider.decide(view, pairs)
        slot.context = (decision, view, pairs)
        slot.on_settled = self._settled
        if decision.miss_reason is not None and self.on_miss is not None:
            closest = f"; closest {decision.closest.id}" if decision.closest else ""
            self.on_miss(
                f"miss {view.method} {path} [{decision.route}]: {decision.miss_reason}{closest}"
            )
        if decision.action == FORWARD:
            target = raw_path + (b"?" + url.query if url.query else b"")
            task = asyncio.get_running_loop().create_task(
                self._forward(incoming, target, slot, conn)
            )
            self._forwards.add(task)
            task.add_done_callback(self._forwards.discard)
            return
        if decision.action in (RESET, HOLD):
            slot.action = decision.action
            conn.answer_at(slot, incoming.started + decision.delay_us / 1e6)
            return
        rendered = self._rendered(decision)
        slot.status = rendered.status
        slot.data = rendered.head if incoming.method == "HEAD" else rendered.full
        slot.close = rendered.close
        conn.answer_at(slot, incoming.started + decision.delay_us / 1e6)

    def _rendered(self, decision: Decision) -> Rendered:
        if decision.outcome == MATCHED:
            assert decision.exchange is not None and decision.exchange.rendered is not None
            return decision.exchange.rendered
        if decision.outcome == FAULT:
            return self._fault_answer
        status = 502 if self.config.miss_policy == "502" else 404
        payload = {
            "error": "shadowtape serve: no recorded exchange answers this request",
            "route": decision.route,
            "reason": decision.miss_reason,
            "closest": decision.closest.id if decision.closest else None,
        }
        return json_response(status, payload, [(DOUBLE_HEADER, f"miss={decision.miss_kind}")])

    async def _forward(
        self, incoming: Incoming, target: bytes, slot: Slot, conn: DoubleProtocol
    ) -> None:
        assert self._fallback is not None
        try:
            result = await self._fallback.forward(
                incoming.method,
                target,
                incoming.headers,
                incoming.body,
                incoming.client,
                incoming.received_us,
            )
        except Exception as exc:  # a target httpx refuses, say: the client still gets a 502
            logger.exception("forwarding to the fallback failed")
            result = Forwarded(None, None, f"{type(exc).__name__}: {exc}", None)
        recorder = self._recorder
        if result.exchange is not None and recorder is not None and recorder.put(result.exchange):
            self.counters.fallback_recorded += 1
        rendered = result.rendered
        if rendered is None:
            self.counters.fallback_failed += 1
            rendered = json_response(
                502,
                {"error": "shadowtape serve: the fallback service failed", "reason": result.error},
                [(DOUBLE_HEADER, "fallback-failed")],
            )
        slot.status = rendered.status
        slot.data = rendered.head if incoming.method == "HEAD" else rendered.full
        slot.close = rendered.close
        conn.ready(slot)

    def _internal(self, raw_path: bytes, slot: Slot, conn: DoubleProtocol) -> None:
        self.counters.internal += 1
        name = raw_path[len(INTERNAL_PREFIX) :].rstrip(b"/")
        if name == b"health":
            payload: dict[str, Any] = {
                "status": "ok",
                "run_id": self.run_id,
                "exchanges": self.recording.stats.exchanges,
                "routes": self.recording.stats.routes,
                "uptime_s": round(time.monotonic() - self.started_at, 3),
            }
            rendered = json_response(200, payload)
        elif name == b"stats":
            payload = {"run_id": self.run_id, "load": asdict(self.recording.stats)}
            payload.update(self.counters.as_json())
            rendered = json_response(200, payload)
        else:
            rendered = json_response(
                404, {"error": "unknown endpoint; try /__shadowtape/health or /__shadowtape/stats"}
            )
        slot.data = rendered.full
        conn.ready(slot)

    def _settled(self, slot: Slot, error: str | None) -> None:
        decision, view, pairs = slot.context
        c = self.counters
        status = slot.status if slot.action not in (RESET, HOLD) and error is None else None
        if status is not None:
            c.statuses[f"{status // 100}xx"] += 1
        elif error is not None and slot.action != HOLD:
            c.client_gone += 1
        answered = Answered(slot, decision, view, pairs, status, error)
        if self.telemetry.enabled:
            self._telemetry(answered)
        if self._served is not None:
            self._served.put(self._row(answered))

    def _telemetry(self, a: Answered) -> None:
        """One server span per answered request, a child of the caller's span when the
        request carried a traceparent (replay's do), and the per-route metrics."""
        slot, d, view, pairs, status, error = a.slot, a.decision, a.view, a.pairs, a.status, a.error
        tel = self.telemetry
        traced = parse_traceparent(next((v for n, v in pairs if n.lower() == "traceparent"), None))
        trace, parent = traced if traced else (self._ids.randbytes(16).hex(), None)
        start_ns = slot.request.received_us * 1000
        end_ns = time.time_ns()
        fault = d.injected_fault or d.recorded_fault
        tel.span_for_request(
            RequestSpan(
                d.route,
                trace_id=trace,
                span_id=self._ids.randbytes(8).hex(),
                start_ns=start_ns,
                end_ns=end_ns,
                parent_span_id=parent,
                server=True,
                error=error if status is None else None,
                attributes={
                    "http.request.method": view.method,
                    "http.route": d.route,
                    "http.response.status_code": status,
                    "shadowtape.serve.outcome": d.outcome,
                    "shadowtape.serve.score": d.score,
                    "shadowtape.serve.exchange_id": d.exchange.id if d.exchange else None,
                    "shadowtape.serve.fault": fault,
                    "shadowtape.serve.miss_reason": d.miss_kind,
                },
            )
        )
        if status is not None:
            tel.record_latency(d.route, view.method, status, (end_ns - start_ns) / 1e6)
        kind = (
            "miss"
            if d.miss_kind
            else fault or (f"{status // 100}xx" if status and status >= 500 else None)
        )
        if kind:
            tel.add_error(d.route, kind)

    def _row(self, a: Answered) -> dict[str, Any]:
        slot, d, view, pairs, status, error = a.slot, a.decision, a.view, a.pairs, a.status, a.error
        incoming = slot.request
        body = incoming.body
        limit = self.config.max_body
        outcome = d.outcome
        if slot.action == HOLD:
            outcome = "held" if outcome == MATCHED else outcome
        elif slot.action == RESET and outcome == MATCHED:
            outcome = "reset"
        ex = d.exchange
        return {
            "id": uuid7(incoming.received_us, self._ids.randbytes(10)),
            "run_id": self.run_id,
            "received_at": incoming.received_us,
            "answered_at": time.time_ns() // 1000,
            "method": view.method,
            "path": view.path,
            "query": self.scrubber.query(view.query),
            "request_headers": self.scrubber.headers(pairs),
            "request_body": body[:limit],
            "request_body_truncated": len(body) > limit,
            "route": d.route,
            "route_arrival": d.arrival,
            "outcome": outcome,
            "scope": d.scope,
            "matched_exchange_id": ex.id if ex else None,
            "matched_session_id": ex.session_id if ex else None,
            "score": d.score,
            "exhausted": d.exhausted,
            "miss_reason": d.miss_reason,
            "closest_exchange_id": d.closest.id if d.closest else None,
            "closest_score": d.closest_score,
            "recorded_fault": d.recorded_fault,
            "injected_fault": d.injected_fault,
            "latency_applied_us": d.delay_us,
            "status": status,
            "response_bytes": len(slot.data) if status is not None else None,
            "error": error,
        }


# --- running ------------------------------------------------------------------------------


def run_serve(
    config: ServeConfig,
    on_ready: Callable[[Double], None],
    on_tick: Callable[[ServeCounters], None] | None = None,
    on_miss: Callable[[str], None] | None = None,
    on_stopping: Callable[[], None] | None = None,
) -> ServeSummary:
    """Serve until SIGINT or SIGTERM; a second signal skips the grace period."""
    double = Double(config, on_miss=on_miss)

    async def main() -> ServeSummary:
        loop = asyncio.get_running_loop()
        await double.start()
        stop, hurry = asyncio.Event(), asyncio.Event()

        def signalled() -> None:
            (hurry if stop.is_set() else stop).set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, signalled)
        on_ready(double)
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                if on_tick is not None:
                    on_tick(double.counters)
        if on_stopping is not None:
            on_stopping()
        return await double.stop(config.grace_s, hurry)

    return uvloop.run(main())


class RunningDouble:
    """A double on a background thread, for tests: `url`, `stats()`, `stop()`."""

    def __init__(self, double: Double) -> None:
        self.double = double
        self.loop = uvloop.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.summary: ServeSummary | None = None
        self._thread = threading.Thread(target=self._run, name="shadowtape-serve", daemon=True)

    @property
    def url(self) -> str:
        return self.double.url

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self._stop = asyncio.Event()
            try:
                await self.double.start()
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                return
            self._ready.set()
            await self._stop.wait()
            self.summary = await self.double.stop(self.double.config.grace_s)

        try:
            self.loop.run_until_complete(main())
        finally:
            self.loop.close()

    def start(self, timeout_s: float) -> RunningDouble:
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise ShadowtapeError(f"the double did not start within {timeout_s:g} s")
        if self._error is not None:
            raise self._error
        return self

    def stats(self) -> dict[str, Any]:
        """The counters, read on the double's own thread so they are consistent."""
        future = asyncio.run_coroutine_threadsafe(self._stats(), self.loop)
        return future.result(timeout=10)

    async def _stats(self) -> dict[str, Any]:
        return self.double.counters.as_json()

    def stop(self) -> ServeSummary:
        if self.summary is None and self._thread.is_alive():
            assert self._stop is not None
            self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=60)
        if self.summary is None:
            raise ShadowtapeError("the double did not stop cleanly")
        return self.summary

    def __enter__(self) -> RunningDouble:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def start_double(config: ServeConfig, timeout_s: float = 30.0) -> RunningDouble:
    """Load, bind and serve in a background thread; returns once the port is bound."""
    return RunningDouble(Double(config)).start(timeout_s)
