"""bench/experiments/request_trace.py's report: each server's records, ours merged across its
frontend and engine worker by request id, as stage spans in ms."""
import json

from bench.experiments.request_trace import report


def write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def test_each_server_gets_its_stages_with_the_engine_records_merged(tmp_path):
    write(tmp_path / "ours-4fe" / "trace-frontend-1.jsonl",
          [{"id": "a", "prompt_tokens": 128, "in": 10.000, "add": 10.001, "first_body": 10.020}])
    write(tmp_path / "ours-4fe" / "trace-engine-2.jsonl",
          [{"id": "a", "received": 10.0013, "added": 10.002, "queued": 10.0025, "scheduled": 10.003,
            "first_token": 10.018}])
    write(tmp_path / "vllm-serve-1api" / "trace-vllm-3.jsonl",
          [{"id": "cmpl-1-0", "vllm_prompt_tokens": 128, "in": 20.000, "add_request": 20.001, "sent": 20.0015,
            "queued": 20.002, "scheduled": 20.002, "first_token": 20.014, "first_body": 20.016}])
    lines = report(str(tmp_path)).splitlines()
    ours = lines[lines.index("== ours-4fe: prompts of 128 tokens (median), 1 requests") + 1:
                 lines.index("== vllm-serve-1api: prompts of 128 tokens (median), 1 requests")]
    serve = lines[lines.index("== vllm-serve-1api: prompts of 128 tokens (median), 1 requests") + 1:]
    span = lambda part, name: next(float(line.split("p50")[1].split("ms")[0]) for line in part if name in line)
    assert span(ours, "engine core: prefill (scheduled to first token)") == 15.0
    assert span(ours, "ADD: frontend to engine worker") == 0.3
    assert span(serve, "engine core: prefill (scheduled to first token)") == 12.0
    assert span(serve, "total: HTTP in to first byte out") == 16.0
    assert not any("ADD: frontend" in line for line in serve)


def test_the_report_names_the_sampling_params_fields_that_differ_between_servers(tmp_path):
    ours = {"temperature": "1.0", "detokenize": "False", "seed": "None", "max_tokens": "128"}
    theirs = {"temperature": "1.0", "detokenize": "True", "seed": "None", "max_tokens": "128"}
    write(tmp_path / "ours-4fe" / "params-engine-2.jsonl", [ours, {**ours, "seed": "7"}])
    write(tmp_path / "vllm-serve-1api" / "params-vllm-3.jsonl", [theirs, {**theirs, "seed": "8"}])
    lines = report(str(tmp_path)).splitlines()
    differing = lines[lines.index("== SamplingParams: fields that differ between ours-4fe, vllm-serve-1api") + 1:]
    assert differing == ["  detokenize: ours-4fe ['False']; vllm-serve-1api ['True']"]


def test_every_hook_takes_what_the_method_it_replaces_takes(tmp_path, monkeypatch):
    """A hook that drifts from its method's signature breaks every request of a traced server."""
    import inspect

    import uvicorn
    from vllm.v1.engine.input_processor import InputProcessor
    from vllm.v1.engine.output_processor import OutputProcessor

    from bench.experiments import request_trace
    from engine_worker import admission, io_threads, step_loop
    from frontend import engine_client
    from frontend.text import tokenizer

    hooked = [(uvicorn.Config, "__init__"), (OutputProcessor, "_update_stats_from_output"),
              (InputProcessor, "process_inputs"), (tokenizer.Tokenizer, "encode_prompts"),
              (engine_client.EngineClient, "add"), (engine_client.EngineLink, "on_step"),
              (admission.VllmRequests, "__call__"), (step_loop.StepLoop, "add"), (step_loop.StepLoop, "send"),
              (io_threads.OutputPublisher, "publish")]
    originals = {}
    for owner, name in hooked:
        originals[owner, name] = getattr(owner, name)
        monkeypatch.setattr(owner, name, getattr(owner, name))  # restored after the test
    monkeypatch.setenv("TRACE_DIR", str(tmp_path))
    request_trace.trace_frontend()
    request_trace.trace_engine()
    for (owner, name), original in originals.items():
        hook = getattr(owner, name)
        assert hook is not original, f"{owner.__name__}.{name} is not hooked"
        parameters = inspect.signature(original).parameters.values()
        positional = [None for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        keywords = {p.name: None for p in parameters if p.kind == p.KEYWORD_ONLY}
        try:
            inspect.signature(hook).bind(*positional, **keywords)
        except TypeError as error:
            raise AssertionError(f"the hook of {owner.__name__}.{name}: {error}") from None
