"""What the frontends' and the engine workers' tracing share: the OpenTelemetry tracer that exports to
server.yml's `tracing.otlp_endpoint`, and W3C trace context as it crosses the wire (docs/tracing.md).

Each process has a TracerProvider of its own, never the global one: vLLM sets the global provider when
its own tracing (engine_args' otlp_traces_endpoint) is on, in the same engine worker process."""
import logging

from common.config import TracingConfig
from common.messages import Add, TraceContext

log = logging.getLogger(__name__)


def build_provider(config: TracingConfig, process: str, instance: str):
    """A TracerProvider exporting in batches from a thread of its own, or None when tracing is off. `process`:
    "frontend" or "engine_worker"; `instance`: the frontend's or the engine's id."""
    if not config.otlp_endpoint:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    if config.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        exporter = OTLPSpanExporter(endpoint=config.otlp_endpoint, insecure=not config.otlp_endpoint.startswith("https"))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        exporter = OTLPSpanExporter(endpoint=config.otlp_endpoint)
    resource = Resource.create({"service.name": config.service_name, "service.instance.id": instance,
                                "llm.process": process})
    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info("tracing: spans go to %s (%s), %g of new traces sampled", config.otlp_endpoint, config.protocol,
             config.sample_ratio)
    return provider


def wire_context(span) -> TraceContext | None:
    """The span's context for the wire: only when it is sampled (an unsampled request carries nothing)."""
    context = span.get_span_context()
    if not context.trace_flags.sampled:
        return None
    return TraceContext(context.trace_id.to_bytes(16, "big"), context.span_id.to_bytes(8, "big"),
                        context.trace_state.to_header())


def traceparent(trace: TraceContext) -> str:
    return f"00-{trace.trace_id.hex()}-{trace.span_id.hex()}-01"


def trace_headers(trace: TraceContext) -> dict[str, str]:
    """As W3C's HTTP headers: what vLLM's add_request takes as trace_headers."""
    headers = {"traceparent": traceparent(trace)}
    if trace.state:
        headers["tracestate"] = trace.state
    return headers


def parent_of(trace: TraceContext):
    """An OpenTelemetry context whose remote parent is the span the wire's context names."""
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState, set_span_in_context

    state = TraceState.from_header([trace.state]) if trace.state else None
    parent = SpanContext(int.from_bytes(trace.trace_id, "big"), int.from_bytes(trace.span_id, "big"), True,
                         TraceFlags(TraceFlags.SAMPLED), state)
    return set_span_in_context(NonRecordingSpan(parent))


def log_fields(add: Add) -> dict:
    """What a log line about the request of `add` carries (common/logs.py): its id, and its trace id."""
    fields = {"request_id": add.request_id}
    if add.trace is not None:
        fields["trace_id"] = add.trace.trace_id.hex()
    return fields
