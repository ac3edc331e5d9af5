"""OpenTelemetry for replay and serve: traces and metrics over OTLP (HTTP/protobuf).

Off unless configured: `--otlp-endpoint URL`, or the standard OTEL_EXPORTER_OTLP_ENDPOINT /
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_METRICS_ENDPOINT variables (with
the other OTEL_EXPORTER_OTLP_* variables: headers, timeout, certificates). When off, callers
hold `NO_TELEMETRY`, whose methods do nothing and which imports nothing; the SDK (the optional
extra `shadowtape[otel]`) loads only when telemetry is on.

The API, for any stage that sends or answers HTTP (replay does; serve can):

    tel = open_telemetry(endpoint, prefix="shadowtape.serve")   # NO_TELEMETRY when off
    if tel.enabled:                                             # keep the hot path bare
        tel.span_for_request(RequestSpan("GET /users/{id}", trace_id=..., span_id=...,
                             start_ns=..., end_ns=..., attributes={...},
                             parent_span_id=incoming_parent, server=True))
        tel.record_latency("GET /users/{id}", "GET", 200, 12.5)  # ms
        tel.add_error("GET /users/{id}", "5xx"); tel.add_retries("GET /users/{id}", 2)
    tel.observe_breaker(lambda: breaker.open)
    tel.shutdown()      # flushes; call it in a `finally`, so Ctrl-C flushes too

Spans are recorded after the fact, with their real start and end times and the ids the
caller chooses (the provider's sampler applies, OTEL_TRACES_SAMPLER included): replay makes
each span's trace id and span id the ones it sent to staging in `traceparent`, so staging's
server span is the replay span's child in any trace backend.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shadowtape.errors import InputError, ShadowtapeError

ENDPOINT_VARS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)
EXPORT_TIMEOUT_S = 5.0
METRIC_INTERVAL_MS = 5000


@dataclass(frozen=True, slots=True)
class RequestSpan:
    """One finished request as a span. Ids are W3C hex (32 and 16 digits); with
    `parent_span_id` (an inbound traceparent's parent id) the span is that span's child;
    `server` for requests answered (serve: SpanKind.SERVER), else a client span; `error`
    marks the span failed with that description. Attributes set to None are left out."""

    name: str
    trace_id: str
    span_id: str
    start_ns: int
    end_ns: int
    attributes: Mapping[str, Any] = field(default_factory=dict)
    parent_span_id: str | None = None
    error: str | None = None
    server: bool = False


class Telemetry:
    """Does nothing: what every caller holds when telemetry is not configured."""

    enabled = False

    def span_for_request(self, span: RequestSpan) -> None:
        """Export one finished span with the caller's ids and times."""

    def record_latency(self, route: str, method: str, status: int | None, ms: float) -> None:
        """One request's duration in the per-route latency histogram."""

    def add_error(self, route: str, kind: str) -> None:
        """One failed request: kind is `5xx`, `send_failed`, `miss`, ..."""

    def add_retries(self, route: str, n: int) -> None:
        """Retries spent on one request."""

    def observe_breaker(self, is_open: Callable[[], bool]) -> None:
        """A circuit breaker whose state (1 open, 0 closed) is exported as a gauge."""

    def summary(self) -> dict[str, Any] | None:
        return None

    def shutdown(self) -> None:
        """Flush what is buffered and stop the exporters."""


NO_TELEMETRY = Telemetry()


def merge_telemetry(summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Several senders' export counts as one (a Ray replay's shards)."""
    if not summaries:
        return None
    merged: dict[str, Any] = {k: sum(s[k] for s in summaries) for k in _COUNTS}
    merged["endpoint"] = summaries[0]["endpoint"]
    merged["first_error"] = next((s["first_error"] for s in summaries if s["first_error"]), None)
    return merged


_COUNTS = ("spans", "exported", "failed", "dropped", "not_sampled")


def configured(endpoint: str | None, environ: Mapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    if str(environ.get("OTEL_SDK_DISABLED", "")).lower() == "true":
        return False
    return bool(endpoint) or any(environ.get(v) for v in ENDPOINT_VARS)


def open_telemetry(
    endpoint: str | None,
    prefix: str = "shadowtape.replay",
    environ: Mapping[str, str] | None = None,
    resource: Mapping[str, str] | None = None,
) -> Telemetry:
    """NO_TELEMETRY unless an endpoint is given or set in the environment. `resource`:
    attributes every span and metric shares (sent once per export, not once per span: the
    SDK's OTLP encoder costs about 170 us a span, mostly per attribute)."""
    if not configured(endpoint, environ):
        return NO_TELEMETRY
    environ = os.environ if environ is None else environ
    protocol = environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    if protocol != "http/protobuf":
        raise InputError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: shadowtape exports OTLP over "
            "http/protobuf only; unset it or set it to http/protobuf"
        )
    try:
        return _OtlpTelemetry(endpoint, prefix, environ, resource or {})
    except ImportError as exc:
        raise ShadowtapeError(
            f"OpenTelemetry is configured but its SDK is not installed ({exc.name}); "
            "pip install 'shadowtape[otel]'"
        ) from None


def _signal_url(base: str, signal: str) -> str:
    # An explicit endpoint is the base URL, as OTEL_EXPORTER_OTLP_ENDPOINT is: the exporters
    # take a full URL, so the signal path is added here.
    return base.rstrip("/") + f"/v1/{signal}"


class _OtlpTelemetry(Telemetry):
    enabled = True

    def __init__(
        self,
        endpoint: str | None,
        prefix: str,
        environ: Mapping[str, str],
        extra_resource: Mapping[str, str],
    ) -> None:
        from opentelemetry import trace as trace_api
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.metrics import Observation
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        from shadowtape import __version__

        self._trace_api = trace_api
        self._observation = Observation
        self.endpoint = endpoint or next(environ[v] for v in ENDPOINT_VARS if environ.get(v))
        attrs: dict[str, Any] = {"service.version": __version__, **extra_resource}
        if not environ.get("OTEL_SERVICE_NAME"):
            attrs["service.name"] = prefix.replace(".", "-")
        resource = Resource.create(attrs)
        traces = OTLPSpanExporter(
            endpoint=_signal_url(endpoint, "traces") if endpoint else None,
            timeout=EXPORT_TIMEOUT_S,
        )
        self._spans = _CountingExporter(traces)
        # The provider brings the sampler (OTEL_TRACES_SAMPLER) and owns the processor's
        # shutdown. A big queue: a replay at thousands of requests/s must not drop spans
        # between exports; what is dropped anyway shows in summary().
        self._tracer_provider = TracerProvider(resource=resource)
        self._processor = BatchSpanProcessor(
            self._spans, max_queue_size=65536, schedule_delay_millis=1000
        )
        self._tracer_provider.add_span_processor(self._processor)
        self._sampler = self._tracer_provider.sampler
        self._resource = resource
        self._scope = InstrumentationScope("shadowtape", __version__)
        self._readable_span = ReadableSpan
        self._root = trace_api.set_span_in_context(trace_api.INVALID_SPAN)
        self._sampled = trace_api.TraceFlags(trace_api.TraceFlags.SAMPLED)
        metrics = OTLPMetricExporter(
            endpoint=_signal_url(endpoint, "metrics") if endpoint else None,
            timeout=EXPORT_TIMEOUT_S,
        )
        self._reader = PeriodicExportingMetricReader(
            metrics, export_interval_millis=METRIC_INTERVAL_MS
        )
        self._meter_provider = MeterProvider(resource=resource, metric_readers=[self._reader])
        meter = self._meter_provider.get_meter("shadowtape", __version__)
        self._latency = meter.create_histogram(
            f"{prefix}.request.duration", unit="ms", description="Request latency per route"
        )
        self._requests = meter.create_counter(
            f"{prefix}.requests", unit="{request}", description="Requests per route and outcome"
        )
        self._errors = meter.create_counter(
            f"{prefix}.errors", unit="{request}", description="Failed sends and 5xx answers"
        )
        self._retries = meter.create_counter(
            f"{prefix}.retries", unit="{retry}", description="Retries per route"
        )
        self._breakers: list[Callable[[], bool]] = []
        meter.create_observable_gauge(
            f"{prefix}.breaker.open",
            callbacks=[self._observe],
            unit="1",
            description="Circuit breaker state: 1 open (dispatch stopped), 0 closed",
        )
        self._created = 0
        self._unsampled = 0
        self._closed = False
        # The SDK logs each failed export (and its retries) as it happens, which would break
        # into the progress line; the first one (it names the cause) goes in the summary.
        self._log = _FirstMessage()
        self._logger = logging.getLogger("opentelemetry")
        self._propagate = self._logger.propagate
        self._logger.addHandler(self._log)
        self._logger.propagate = False

    def _observe(self, _options: Any) -> Sequence[Any]:
        return [self._observation(int(bool(fn()))) for fn in self._breakers]

    def span_for_request(self, span: RequestSpan) -> None:
        # A finished span goes straight to the batch processor as a ReadableSpan: the
        # tracer's start/end API is for spans in progress, and building one through it costs
        # 65 us a span against 2 us (measured), on the replay's event loop. The provider's
        # sampler still decides, as it would in start_span.
        api = self._trace_api
        trace_id = int(span.trace_id, 16)
        kind = api.SpanKind.SERVER if span.server else api.SpanKind.CLIENT
        attributes = {k: v for k, v in span.attributes.items() if v is not None}
        parent = None
        context = self._root
        if span.parent_span_id:
            parent = api.SpanContext(
                trace_id, int(span.parent_span_id, 16), is_remote=True, trace_flags=self._sampled
            )
            context = api.set_span_in_context(api.NonRecordingSpan(parent))
        decision = self._sampler.should_sample(context, trace_id, span.name, kind, attributes)
        if not decision.decision.is_sampled():
            self._unsampled += 1
            return
        if decision.attributes:
            attributes.update(decision.attributes)
        status = (
            api.Status(api.StatusCode.ERROR, span.error)
            if span.error
            else api.Status(api.StatusCode.UNSET)
        )
        self._processor.on_end(
            self._readable_span(
                name=span.name,
                context=api.SpanContext(
                    trace_id,
                    int(span.span_id, 16),
                    is_remote=False,
                    trace_flags=self._sampled,
                    trace_state=decision.trace_state,
                ),
                parent=parent,
                resource=self._resource,
                attributes=attributes,
                kind=kind,
                status=status,
                start_time=span.start_ns,
                end_time=span.end_ns,
                instrumentation_scope=self._scope,
            )
        )
        self._created += 1

    def record_latency(self, route: str, method: str, status: int | None, ms: float) -> None:
        attrs: dict[str, Any] = {"http.route": route, "http.request.method": method}
        if status is not None:
            attrs["http.response.status_code"] = status
        self._latency.record(ms, attrs)
        self._requests.add(1, {**attrs, "outcome": "answered" if status is not None else "failed"})

    def add_error(self, route: str, kind: str) -> None:
        self._errors.add(1, {"http.route": route, "error.type": kind})

    def add_retries(self, route: str, n: int) -> None:
        if n:
            self._retries.add(n, {"http.route": route})

    def observe_breaker(self, is_open: Callable[[], bool]) -> None:
        self._breakers.append(is_open)

    def summary(self) -> dict[str, Any]:
        exported, failed = self._spans.exported, self._spans.failed
        return {
            "endpoint": self.endpoint,
            "spans": self._created,
            "exported": exported,
            "failed": failed,
            "dropped": max(0, self._created - exported - failed),
            "not_sampled": self._unsampled,
            "first_error": self._log.first,
        }

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._tracer_provider.force_flush()
        self._tracer_provider.shutdown()
        self._meter_provider.force_flush()
        self._meter_provider.shutdown()
        self._logger.removeHandler(self._log)
        self._logger.propagate = self._propagate


class _FirstMessage(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.first: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.first is None:
            self.first = record.getMessage().splitlines()[0][:300]


class _CountingExporter:
    """Wraps the OTLP span exporter to count what reached the collector and what did not."""

    def __init__(self, inner: Any) -> None:
        from opentelemetry.sdk.trace.export import SpanExportResult

        self._inner = inner
        self._ok = SpanExportResult.SUCCESS
        self.exported = 0
        self.failed = 0

    def export(self, spans: Sequence[Any]) -> Any:
        result = self._inner.export(spans)
        if result == self._ok:
            self.exported += len(spans)
        else:
            self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)
