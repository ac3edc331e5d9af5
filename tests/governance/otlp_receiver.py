"""A real OTLP/HTTP receiver on loopback that decodes the protobuf payloads with
opentelemetry-proto's own classes; replay's and serve's telemetry tests both export to it.
Imported by name (tests run with --import-mode=importlib; see conftest)."""

import gzip
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


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
    # Imported here, so a conftest can offer this fixture where the [otel] extra is missing.
    pytest.importorskip("opentelemetry.sdk", reason="needs the [otel] extra")
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
        ExportMetricsServiceResponse,
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

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
