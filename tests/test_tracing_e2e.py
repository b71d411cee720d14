"""Tracing and JSON logs end to end: a deployment whose frontends and vLLM engine worker trace to a real
OTLP/HTTP receiver in the test (tests/otlp_receiver.py), with vLLM's own tracing on to the same
receiver, and JSON log lines; requests through nginx from the OpenAI SDK and curl. Frontend-only
deployments on its engine check that sample_ratio 0 and tracing off send the engine no context (the
engine would export spans for any context it got)."""
import json
import subprocess

import pytest
from openai import OpenAI

from common import default_model
from tests.conftest import OUTPUT_DIR, frontends_on, running_service, wait_for
from tests.otlp_receiver import OtlpReceiver

CLIENT_SPAN = "00f067aa0ba902b7"
ENGINE_SPANS = ("engine.admission", "engine.queue", "engine.prefill", "engine.decode")


@pytest.fixture(scope="module")
def receiver():
    started = OtlpReceiver().start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def traced(receiver, model_dir):
    tracing = {"otlp_endpoint": receiver.endpoint}
    with running_service("tracing", server={"tracing": tracing, "log_format": "json", "log_requests": True},
                         engine_args={"otlp_traces_endpoint": receiver.endpoint}) as deployment:
        yield deployment


def completion(url: str, traceparent: str | None = None):
    client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    headers = {"traceparent": traceparent} if traceparent else {}
    return client.completions.with_raw_response.create(model=default_model.NAME, prompt="Hello", max_tokens=4,
                                                       extra_body={"ignore_eos": True}, extra_headers=headers)


def engine_spans_of(receiver: OtlpReceiver, trace_id: str) -> dict:
    spans = receiver.wait_for(lambda spans: {"engine.decode", "llm_request", "stream"} <= {
        span.name for span in spans if span.trace_id == trace_id})
    return {span.name: span for span in spans if span.trace_id == trace_id}


def test_a_client_traceparent_joins_frontend_engine_worker_and_vllm_spans_in_one_trace(traced, receiver):
    trace_id = "5" * 32
    answer = completion(traced.url, f"00-{trace_id}-{CLIENT_SPAN}-01")
    request_id = answer.headers["x-request-id"]
    assert answer.headers["x-trace-id"] == trace_id
    spans = engine_spans_of(receiver, trace_id)
    server, generate, engine = spans["POST /v1/completions"], spans["generate"], spans["engine.request"]
    assert server.parent_span_id == CLIENT_SPAN
    assert generate.parent_span_id == server.span_id
    assert engine.parent_span_id == generate.span_id
    assert (server.resource["llm.process"], engine.resource["llm.process"]) == ("frontend", "engine_worker")
    assert engine.attributes["llm.request_id"] == request_id == generate.attributes["llm.request_id"]
    assert engine.attributes["llm.finish_reason"] == "length"
    assert engine.attributes["llm.completion_tokens"] == 4
    assert engine.attributes["llm.engine.id"] == generate.attributes["llm.engine.id"]
    # vLLM's timestamps, in their order, inside the engine's span.
    parts = [spans[name] for name in ENGINE_SPANS]
    assert all(part.parent_span_id == engine.span_id for part in parts)
    assert all(part.start_ns <= part.end_ns for part in parts)
    assert [part.start_ns for part in parts] == sorted(part.start_ns for part in parts)
    assert engine.start_ns <= parts[0].start_ns and parts[-1].end_ns <= engine.end_ns
    # vLLM's own span (engine_args' otlp_traces_endpoint) joins under the engine worker's.
    vllm = spans["llm_request"]
    assert vllm.parent_span_id == engine.span_id
    assert vllm.attributes["gen_ai.request.id"] == request_id
    save_example(receiver.trace(trace_id))


def save_example(spans) -> None:
    """The trace as exported, for docs/tracing.md's example: test-output/tracing-example.json."""
    OUTPUT_DIR.mkdir(exist_ok=True)
    rows = [{"name": s.name, "span_id": s.span_id, "parent_span_id": s.parent_span_id, "process": s.resource.get(
        "llm.process", s.resource.get("service.name")), "ms": round((s.end_ns - s.start_ns) / 1e6, 3),
             "start_ns": s.start_ns, "attributes": s.attributes, "events": [name for name, _ in s.events]}
            for s in sorted(spans, key=lambda s: s.start_ns)]
    (OUTPUT_DIR / "tracing-example.json").write_text(json.dumps(rows, indent=1))


def test_a_request_without_traceparent_starts_a_trace_down_to_the_engine(traced, receiver):
    answer = subprocess.run(["curl", "-s", "-o", "/dev/null", "-D", "-", "-H", "content-type: application/json", "-d",
                             '{"prompt": "Hello", "max_tokens": 4}', traced.url + "/generate"],
                            capture_output=True, text=True, check=True).stdout
    headers = {name.strip().lower(): value.strip() for name, _, value in
               (line.partition(":") for line in answer.splitlines()[1:] if ":" in line)}
    trace_id = headers["x-trace-id"]
    spans = engine_spans_of(receiver, trace_id)
    assert spans["POST /generate"].parent_span_id == ""
    assert spans["engine.request"].parent_span_id == spans["generate"].span_id
    assert spans["engine.request"].attributes["llm.request_id"] == headers["x-request-id"]


def test_sample_ratio_0_and_tracing_off_send_the_engine_no_context(traced, receiver):
    with frontends_on(traced, "sampled-out", tracing={"otlp_endpoint": receiver.endpoint, "sample_ratio": 0}) as out:
        sampled_out = completion(out.url)
    with frontends_on(traced, "untraced") as off:
        untraced = completion(off.url, f"00-{'7' * 32}-{CLIENT_SPAN}-01")
    assert "x-trace-id" not in untraced.headers
    # A traced request after them: the engine exports its spans after any the first two would have made.
    engine_spans_of(receiver, completion(traced.url).headers["x-trace-id"])
    quiet = {sampled_out.headers["x-request-id"], untraced.headers["x-request-id"]}
    assert not [span for span in receiver.spans if span.attributes.get("llm.request_id") in quiet]
    assert not receiver.trace(sampled_out.headers["x-trace-id"]) and not receiver.trace("7" * 32)


def test_json_logs_one_object_a_line_with_each_request_id_and_trace_id(traced, receiver):
    trace_id = "9" * 32
    request_id = completion(traced.url, f"00-{trace_id}-{CLIENT_SPAN}-01").headers["x-request-id"]

    def lines_of_the_request():
        return [line for line in json_lines(traced) if line.get("request_id") == request_id]

    found = wait_for(lambda: len(lines_of_the_request()) >= 2 and lines_of_the_request(), 10,
                     what="the request's log lines from the frontend and the engine worker")
    assert {line["logger"] for line in found} == {"frontend.requests", "engine_worker.step_loop"}
    assert all(line["trace_id"] == trace_id for line in found)
    every = json_lines(traced)
    assert all({"time", "level", "logger", "process", "message"} <= line.keys() for line in every)
    assert any(line["logger"].startswith("vllm") for line in every)  # vLLM's own lines, as JSON too


def json_lines(deployment) -> list[dict]:
    """The objects of the service's log. supervisord's output passes through the service's own process
    (common/service.py), whose few lines for a person at a terminal are text: every other line is JSON."""
    objects, text = [], []
    for line in (deployment.dir / "service.log").read_text(errors="replace").splitlines():
        try:
            objects.append(json.loads(line))
        except ValueError:
            text.append(line)
    assert [line for line in text if line.strip() and not line.strip().startswith("serving on")] == []
    return objects
