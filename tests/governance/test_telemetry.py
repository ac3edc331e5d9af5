"""OpenTelemetry export from replay, received by a real OTLP/HTTP receiver on loopback that
decodes the protobuf payloads with opentelemetry-proto's own classes."""

import gzip
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from replay_testkit import exchange, write_dataset

pytest.importorskip("opentelemetry.sdk", reason="needs the [otel] extra")

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (  # noqa: E402
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from shadowtape.telemetry import NO_TELEMETRY, open_telemetry  # noqa: E402


@dataclass
class Receiver:
    url: str = ""
    spans: list[Any] = field(default_factory=list)
    resources: list[Any] = field(default_factory=list)
    exports: list[list[Any]] = field(default_factory=list)  # metrics, one list per POST
    paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def metric(self, name: str) -> list[Any]:
        """The metric as of the last export that has it (cumulative: that one holds it all)."""
        for export in reversed(self.exports):
            found = [m for m in export if m.name == name]
            if found:
                return found
        return []


@pytest.fixture
def otlp() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            with state.lock:
                state.paths.append(self.path)
                if self.path == "/v1/traces":
                    req = ExportTraceServiceRequest.FromString(body)
                    for rs in req.resource_spans:
                        state.resources.append(rs.resource)
                        for ss in rs.scope_spans:
                            state.spans.extend(ss.spans)
                    reply = ExportTraceServiceResponse().SerializeToString()
                elif self.path == "/v1/metrics":
                    req = ExportMetricsServiceRequest.FromString(body)
                    state.exports.append(
                        [
                            m
                            for rm in req.resource_metrics
                            for sm in rm.scope_metrics
                            for m in sm.metrics
                        ]
                    )
                    reply = ExportMetricsServiceResponse().SerializeToString()
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def _attrs(span: Any) -> dict[str, Any]:
    out = {}
    for kv in span.attributes:
        v = kv.value
        out[kv.key] = v.string_value if v.HasField("string_value") else v.int_value
    return out


def rows_run_id(results: Path) -> str:
    from shadowtape.schema import iter_batches

    (run_id,) = {r for b in iter_batches(results) for r in b.column("run_id").to_pylist()}
    return run_id


def _dataset(tmp_path: Path) -> Path:
    records = [
        exchange(s, i, 10 * i + n, "GET", path)
        for n, s in enumerate(("s1", "s2", "s3"))
        for i, path in enumerate(["/items/1", "/flaky", "/down" if s == "s3" else "/items/2"])
    ]
    return write_dataset(tmp_path / "clean", records)


def test_one_span_per_request_with_the_trace_ids_staging_saw(
    tmp_path: Path, cli, staging, otlp
) -> None:
    staging.fail_first = {"/flaky": 1, "/down": 10}  # one retry; one request that stays 503
    result = cli(
        "replay", _dataset(tmp_path), "--target", staging.url, "--out", tmp_path / "results",
        "--speed", "max", "--correlate", "off", "--otlp-endpoint", otlp.url,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "telemetry: 9 spans to " + otlp.url + ": 9 exported, 0 failed, 0 dropped" in (
        result.output
    )
    # Flushed before the command returned: everything is here already.
    assert len(otlp.spans) == 9
    sent = {
        tuple(r.header("traceparent").split("-")[1:3]) for r in staging.received
    }  # (trace id, parent span id) as staging saw them, retries included
    got = {(s.trace_id.hex(), s.span_id.hex()) for s in otlp.spans}
    assert got == sent and len(sent) == 9
    assert all(len(s.parent_span_id) == 0 for s in otlp.spans)  # roots: staging's are children
    by_path = {}
    for s in otlp.spans:
        a = _attrs(s)
        by_path.setdefault(a["url.full"].split("/", 3)[3], []).append(a)
    flaky = by_path["flaky"]  # three sessions; only the first send met the 503
    assert sorted(a["shadowtape.retries"] for a in flaky) == [0, 0, 1]
    assert {a["http.response.status_code"] for a in flaky} == {200}
    assert {(a["http.request.method"], a["http.route"]) for a in flaky} == {("GET", "GET /flaky")}
    assert {a["shadowtape.outcome"] for a in flaky} == {"sent"}
    down = by_path["down"][0]
    assert down["http.response.status_code"] == 503 and down["shadowtape.retries"] == 2
    assert {a["http.route"] for a in by_path["items/1"]} == {"GET /items/{id}"}
    span = otlp.spans[0]
    assert (
        span.kind == span.SPAN_KIND_CLIENT and span.end_time_unix_nano > span.start_time_unix_nano
    )
    service = {kv.key: kv.value.string_value for kv in otlp.resources[0].attributes}
    assert service["service.name"] == "shadowtape-replay"
    assert service["shadowtape.run_id"] == rows_run_id(tmp_path / "results")
    # The results rows carry the same ids: the diff verdict joins by them.
    from shadowtape.schema import batch_to_rows, iter_batches

    rows = [r for b in iter_batches(tmp_path / "results") for r in batch_to_rows(b)]
    assert {(r["trace_id"], r["span_id"]) for r in rows} == got

    latency = otlp.metric("shadowtape.replay.request.duration")
    assert latency and latency[0].unit == "ms"
    points = [p for m in latency for p in m.histogram.data_points]
    per_route = {}
    for p in points:
        route = next(kv.value.string_value for kv in p.attributes if kv.key == "http.route")
        per_route[route] = per_route.get(route, 0) + p.count
    assert per_route == {"GET /items/{id}": 5, "GET /flaky": 3, "GET /down": 1}
    retries = [p for m in otlp.metric("shadowtape.replay.retries") for p in m.sum.data_points]
    assert sum(p.as_int for p in retries) == 3
    errors = [p for m in otlp.metric("shadowtape.replay.errors") for p in m.sum.data_points]
    assert sum(p.as_int for p in errors) == 1
    assert {kv.value.string_value for p in errors for kv in p.attributes} >= {"5xx", "GET /down"}
    breaker = [
        p for m in otlp.metric("shadowtape.replay.breaker.open") for p in m.gauge.data_points
    ]
    assert breaker and breaker[-1].as_int == 0


def test_the_standard_variables_turn_it_on_and_nothing_does_otherwise(
    tmp_path: Path, cli, staging, otlp, monkeypatch
) -> None:
    assert open_telemetry(None, environ={}) is NO_TELEMETRY
    assert open_telemetry("http://x", environ={"OTEL_SDK_DISABLED": "true"}) is NO_TELEMETRY
    src = write_dataset(tmp_path / "clean", [exchange("s1", 0, 0, "GET", "/a")])
    common = ("--target", staging.url, "--speed", "max", "--correlate", "off")
    assert cli("replay", src, *common, "--out", tmp_path / "r1").exit_code == 0
    assert otlp.paths == []
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "nightly-replay")
    assert cli("replay", src, *common, "--out", tmp_path / "r2").exit_code == 0
    assert len(otlp.spans) == 1 and "/v1/metrics" in otlp.paths
    service = {kv.key: kv.value.string_value for kv in otlp.resources[0].attributes}
    assert service["service.name"] == "nightly-replay"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    refused = cli("replay", src, *common, "--out", tmp_path / "r3")
    assert refused.exit_code == 2 and "http/protobuf only" in refused.output


def test_an_unreachable_collector_is_counted_not_fatal(tmp_path: Path, cli, staging) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()
    src = write_dataset(tmp_path / "clean", [exchange("s1", i, i, "GET", "/a") for i in range(3)])
    result = cli(
        "replay", src, "--target", staging.url, "--out", tmp_path / "r", "--speed", "max",
        "--correlate", "off", "--otlp-endpoint", dead,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "telemetry: 3 spans to " + dead + ": 0 exported, 3 failed, 0 dropped" in result.output
    (line,) = [ln for ln in result.output.splitlines() if "telemetry:" in ln]
    assert "(first error: " in line and "Connection refused" in line
    assert "Transient error" not in result.output.replace(line, "")  # no SDK log lines


def test_ctrl_c_flushes_what_was_sent(tmp_path: Path, staging, otlp, audit_log) -> None:
    import signal
    import subprocess
    import sys
    import time

    from shadowtape.governance.audit import AuditLog
    from shadowtape.schema import batch_to_rows, iter_batches

    records = [exchange(f"s{i % 4}", i // 4, 500 * i, "GET", f"/items/{i}") for i in range(40)]
    src = write_dataset(tmp_path / "clean", records)  # 20 recorded seconds at --speed 1
    out = tmp_path / "results"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "shadowtape", "--no-config", "replay", str(src), "--target",
            staging.url, "--out", str(out), "--speed", "1", "--correlate", "off",
            "--otlp-endpoint", otlp.url,
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while len(staging.received) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    rows = [r for b in iter_batches(out) for r in batch_to_rows(b)]
    sent = {(r["trace_id"], r["span_id"]) for r in rows if r["outcome"] in ("sent", "failed")}
    assert 5 <= len(sent) < 40
    assert {(s.trace_id.hex(), s.span_id.hex()) for s in otlp.spans} == sent
    assert otlp.metric("shadowtape.replay.request.duration")
    (record,) = AuditLog(audit_log).records()
    assert record["exit_code"] == 130 and record["counts"]["status"] == "interrupted"


def test_the_api_for_serve_parents_a_server_span_and_honours_the_sampler(otlp, monkeypatch) -> None:
    from shadowtape.telemetry import RequestSpan

    trace, parent, own = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "b7ad6b7169203331"
    tel = open_telemetry(otlp.url, prefix="shadowtape.serve", environ={})
    assert tel.enabled
    tel.span_for_request(
        RequestSpan(
            "GET /users/{id}", trace_id=trace, span_id=own, start_ns=1_000, end_ns=5_000,
            attributes={"http.route": "GET /users/{id}", "gone": None},
            parent_span_id=parent, server=True, error="recorded 500",
        )
    )  # fmt: skip
    tel.record_latency("GET /users/{id}", "GET", 500, 4.0)
    tel.add_error("GET /users/{id}", "5xx")
    tel.shutdown()
    (span,) = otlp.spans
    assert (span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex()) == (
        trace, own, parent,
    )  # fmt: skip
    assert span.kind == span.SPAN_KIND_SERVER and span.status.message == "recorded 500"
    assert _attrs(span) == {"http.route": "GET /users/{id}"}
    assert otlp.metric("shadowtape.serve.request.duration")
    assert tel.summary()["exported"] == 1
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")  # read by the SDK itself
    off = open_telemetry(otlp.url, environ={})
    off.span_for_request(RequestSpan("GET /", trace_id=trace, span_id=own, start_ns=1, end_ns=2))
    off.shutdown()
    assert len(otlp.spans) == 1 and off.summary()["not_sampled"] == 1
