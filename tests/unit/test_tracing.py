"""Trace context and request ids on the frontend harness (tests/unit/frontend_harness.py), its spans
exported by the real OTLP exporter to a real OTLP/HTTP receiver (tests/otlp_receiver.py); JSON log lines."""
import io
import subprocess
import sys
import json
import logging

import pytest

from common.config import ROOT
from common.logs import RequestFields, json_formatter, request_fields
from tests.otlp_receiver import OtlpReceiver

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
BODY = {"prompt": "Hello", "max_tokens": 4}


@pytest.fixture(scope="module")
def receiver():
    started = OtlpReceiver().start()
    yield started
    started.stop()


@pytest.fixture
def traced(frontends, receiver):
    return frontends.get(tracing={"otlp_endpoint": receiver.endpoint})


def by_name(spans) -> dict:
    return {span.name: span for span in spans}


def test_a_client_traceparent_continues_into_the_frontend_spans_and_onto_the_wire(traced, receiver):
    answer = traced.post("/v1/completions", BODY, headers={
        "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01", "tracestate": "vendor=1"})
    assert answer.status_code == 200
    assert answer.headers["x-trace-id"] == CLIENT_TRACE
    request_id = answer.headers["x-request-id"]
    spans = by_name(receiver.wait_for(lambda spans: {"POST /v1/completions", "stream"} <= {
        span.name for span in spans if span.trace_id == CLIENT_TRACE}))
    server, generate = spans["POST /v1/completions"], spans["generate"]
    assert server.parent_span_id == CLIENT_SPAN
    assert server.attributes["http.response.status_code"] == 200
    assert spans["read"].parent_span_id == server.span_id
    assert spans["tokenize"].parent_span_id == server.span_id
    assert generate.parent_span_id == server.span_id
    assert generate.attributes["llm.request_id"] == request_id
    assert generate.attributes["llm.finish_reason"] == "length"
    assert generate.attributes["llm.completion_tokens"] == 4
    assert spans["route"].attributes["llm.route.reason"]
    assert {spans[name].parent_span_id for name in ("route", "queue", "stream")} == {generate.span_id}
    assert server.resource["llm.process"] == "frontend"
    # The engine got the generate span's context: its own spans become that span's children.
    add = next(add for add in traced.engine.added if add.request_id == request_id)
    assert (add.trace.trace_id.hex(), add.trace.span_id.hex(), add.trace.state) == (
        CLIENT_TRACE, generate.span_id, "vendor=1")


def test_a_request_without_traceparent_starts_a_trace(traced, receiver):
    answer = traced.post("/generate", BODY)
    trace_id = answer.headers["x-trace-id"]
    assert len(trace_id) == 32 and trace_id != CLIENT_TRACE and int(trace_id, 16)
    spans = by_name(receiver.wait_for(lambda spans: "generate" in {s.name for s in spans if s.trace_id == trace_id}))
    assert spans["POST /generate"].parent_span_id == ""
    add = next(add for add in traced.engine.added if add.request_id == answer.headers["x-request-id"])
    assert add.trace.trace_id.hex() == trace_id


@pytest.mark.parametrize("header", ["00-00000000000000000000000000000000-00f067aa0ba902b7-01", "garbage",
                                    "00-" + "a" * 32 + "-" + "b" * 16 + "-01" + "x" * 5000])
def test_a_malformed_traceparent_starts_a_trace_of_its_own(traced, header):
    answer = traced.post("/generate", BODY, headers={"traceparent": header})
    assert answer.status_code == 200
    assert answer.headers["x-trace-id"] not in header


def test_each_generation_of_a_request_has_its_id_and_its_span(traced, receiver):
    answer = traced.post("/v1/completions", {**BODY, "n": 2})
    request_id, trace_id = answer.headers["x-request-id"], answer.headers["x-trace-id"]
    spans = receiver.wait_for(lambda spans: [s.name for s in spans if s.trace_id == trace_id].count("generate") == 2)
    ids = {span.attributes["llm.request_id"] for span in spans if span.trace_id == trace_id and span.name == "generate"}
    assert ids == {request_id, f"{request_id}-1"}


def test_sample_ratio_0_records_nothing_new_and_sends_no_context(frontends, receiver):
    sampled_out = frontends.get(tracing={"otlp_endpoint": receiver.endpoint, "sample_ratio": 0})
    unsampled = sampled_out.post("/generate", BODY)
    assert unsampled.status_code == 200
    add = next(add for add in sampled_out.engine.added if add.request_id == unsampled.headers["x-request-id"])
    assert add.trace is None
    # A client's sampled trace is still recorded (parent-based), and its spans come after the first
    # request's would have, from the same exporter.
    sampled = sampled_out.post("/generate", BODY, headers={"traceparent": f"00-{'c' * 32}-{CLIENT_SPAN}-01"})
    receiver.wait_for(lambda spans: "generate" in {s.name for s in spans if s.trace_id == "c" * 32})
    assert not receiver.trace(unsampled.headers["x-trace-id"])
    assert sampled.headers["x-trace-id"] == "c" * 32


def test_tracing_off_puts_no_context_on_the_wire_and_no_trace_id_in_the_answer(frontend):
    answer = frontend.post("/generate", BODY, headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"})
    assert answer.status_code == 200
    assert "x-trace-id" not in answer.headers
    add = next(add for add in frontend.engine.added if add.request_id == answer.headers["x-request-id"])
    assert add.trace is None


def json_lines(log_with) -> list[dict]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    handler.addFilter(RequestFields())
    logger = logging.getLogger("test-json-lines")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        log_with(logger)
    finally:
        logger.removeHandler(handler)
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_json_line_names_its_request_from_the_task_or_from_extra():
    def log_with(logger):
        logger.warning("no request")
        token = request_fields.set({"request_id": "r1", "tenant": None, "trace_id": "t1"})
        try:
            logger.warning("about %s", "r1")
            logger.warning("about another", extra={"request_id": "r2"})
        finally:
            request_fields.reset(token)

    plain, about, other = json_lines(log_with)
    assert plain["message"] == "no request" and plain["level"] == "WARNING" and plain["logger"] == "test-json-lines"
    assert "time" in plain and "process" in plain and "request_id" not in plain
    assert (about["message"], about["request_id"], about["trace_id"]) == ("about r1", "r1", "t1")
    assert "tenant" not in about  # no tenant: no field
    assert other["request_id"] == "r2"


def test_a_json_line_keeps_a_traceback_in_one_line():
    def log_with(logger):
        try:
            raise ValueError("broken\non two lines")
        except ValueError:
            logger.exception("it failed")

    (line,) = json_lines(log_with)
    assert "ValueError: broken" in line["exc_info"]


def test_with_json_lines_only_every_line_a_process_and_its_children_write_is_json():
    code = """if True:
        import logging, os, subprocess, sys, warnings
        from common.logs import json_lines_only, setup_logging
        json_lines_only()
        setup_logging("info", "json")
        logging.getLogger("worker").info("a record", extra={"request_id": "r1"})
        print("a print")
        os.write(2, b"a C++ warning\\n")
        warnings.warn("a Python warning")
        subprocess.run([sys.executable, "-c", "print('a child process')"])
    """
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    lines = [json.loads(line) for line in output.stdout.splitlines()]
    assert output.stderr == ""
    assert [(line["logger"], line["message"]) for line in lines[:4]] == [
        ("worker", "a record"), ("output", "a print"), ("output", "a C++ warning"),
        ("py.warnings", lines[3]["message"])]
    assert "a Python warning" in lines[3]["message"] and lines[0]["request_id"] == "r1"
    assert (lines[4]["logger"], lines[4]["message"]) == ("output", "a child process")


def test_a_moved_generation_carries_its_trace_context_to_the_next_engine():
    from common.messages import Add, TraceContext
    from frontend.migration import Flight

    class FakeQueue:  # what a RequestQueue keeps of the tokens that arrived
        generated = [7, 8]

    trace = TraceContext(b"\x01" * 16, b"\x02" * 8, "vendor=1")
    flight = Flight(Add("r", "fe~1", [1, 2], {"max_tokens": 5}, trace=trace), FakeQueue(), pinned=False, moves=1)
    moved = flight.continuation()
    assert (moved.request_id, moved.prompt_token_ids, moved.resumed_tokens) == ("r.1", [1, 2, 7, 8], 2)
    assert moved.trace == trace and moved.pooling is None
