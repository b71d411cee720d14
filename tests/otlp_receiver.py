"""A real OTLP/HTTP trace receiver for the tests: an HTTP server on a loopback port that takes what
OpenTelemetry's exporters POST to /v1/traces (http/protobuf), decodes each ExportTraceServiceRequest
with opentelemetry-proto, and keeps every span it got."""
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                      ExportTraceServiceResponse)


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root
    name: str
    kind: int
    attributes: dict
    resource: dict  # the exporting process's resource attributes
    events: list[tuple[str, dict]]
    status_code: int  # 0 unset, 1 ok, 2 error
    start_ns: int
    end_ns: int


def values(attributes) -> dict:
    return {attribute.key: getattr(attribute.value, attribute.value.WhichOneof("value")) for attribute in attributes}


@dataclass
class OtlpReceiver:
    spans: list[Span] = field(default_factory=list)
    exports: int = 0  # the POSTs it took

    def start(self) -> "OtlpReceiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.take(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True, name="otlp-receiver").start()
        return self

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def take(self, request: ExportTraceServiceRequest) -> None:
        self.exports += 1
        for resource_spans in request.resource_spans:
            resource = values(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(Span(
                        span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(), span.name, span.kind,
                        values(span.attributes), resource, [(e.name, values(e.attributes)) for e in span.events],
                        span.status.code, span.start_time_unix_nano, span.end_time_unix_nano))

    def trace(self, trace_id: str) -> list[Span]:
        return [span for span in self.spans if span.trace_id == trace_id]

    def wait_for(self, predicate, timeout: float = 30) -> list[Span]:
        """The spans once `predicate(spans)` holds; spans go out in batches every few seconds."""
        deadline = time.monotonic() + timeout
        while not predicate(list(self.spans)):
            if time.monotonic() > deadline:
                names = sorted({(span.name, span.trace_id[:8]) for span in self.spans})
                raise AssertionError(f"timed out after {timeout} s; the receiver holds {names}")
            time.sleep(0.1)
        return list(self.spans)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
