"""Experiment: timestamps at each stage of every request, in the frontends and the engine worker,
to see where a request's time goes between the HTTP request and its first byte out.

    side_by_side --servers ours:4:bench.experiments.request_trace+bench.experiments.request_trace ...
    python -m bench.experiments.request_trace report RUN_DIR

Runs as the engine program (`engine`, the default) and as the frontend program (`--frontend`), each
the real one with a few methods wrapped, nothing else changed. Each process appends one JSON line per
request to TRACE_DIR (the directory of PROBE_OUT, which bench/services.py sets) /trace-<role>-<pid>.jsonl:
- frontend: in (the HTTP request reached the app), tokenized_from/tokenized (prompt encoding), add (the
  ADD went out), first_delta (its first output reached the frontend), first_body (first byte of the
  answer handed to the server), end; prompt_tokens and in_flight (this frontend's requests at the ADD);
- engine: received (the request socket read it), admitted (vLLM's input processing done), added
  (add_request returned), first_output (the step that gave its first token returned), published (that
  output went out on the PUB socket); running (requests in the engine at the ADD).
All stamps are time.time(): every process is on one host.
"""
import contextvars
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

current = contextvars.ContextVar("request_trace", default=None)


def trace_file(role: str):
    directory = Path(os.environ.get("TRACE_DIR") or Path(os.environ.get("PROBE_OUT", "./x")).parent)
    directory.mkdir(parents=True, exist_ok=True)
    return (directory / f"trace-{role}-{os.getpid()}.jsonl").open("a", buffering=1)


def trace_frontend() -> None:
    from frontend import engine_client, metrics
    from frontend.text import tokenizer

    out = trace_file("frontend")
    by_id: dict[str, dict] = {}
    call, encode_prompts = metrics.RouteMetricsMiddleware.__call__, tokenizer.Tokenizer.encode_prompts
    add, on_step = engine_client.EngineClient.add, engine_client.EngineLink.on_step

    async def traced_call(self, scope, receive, send):
        if scope["type"] != "http":
            return await call(self, scope, receive, send)
        record = {"in": time.time(), "path": scope["path"]}
        token = current.set(record)

        async def stamped_send(message):
            if message["type"] == "http.response.body" and message.get("body") and "first_body" not in record:
                record["first_body"] = time.time()
            await send(message)

        try:
            await call(self, scope, receive, stamped_send)
        finally:
            record["end"] = time.time()
            current.reset(token)
            if "add" in record:
                out.write(json.dumps(record) + "\n")

    async def traced_encode(self, texts, *args, **kwargs):
        record = current.get()
        if record is not None:
            record["tokenized_from"] = time.time()
        ids = await encode_prompts(self, texts, *args, **kwargs)
        if record is not None:
            record["tokenized"] = time.time()
        return ids

    def traced_add(self, request_id, prompt_token_ids, sampling):
        record = current.get()
        if record is not None and "add" not in record:
            record.update(id=request_id, prompt_tokens=len(prompt_token_ids), in_flight=len(self.requests),
                          add=time.time())
            by_id[request_id] = record
        return add(self, request_id, prompt_token_ids, sampling)

    def traced_on_step(self, message):
        now = time.time()
        for delta in message.deltas:
            if (record := by_id.pop(delta.request_id, None)) is not None:
                record["first_delta"] = now
        return on_step(self, message)

    metrics.RouteMetricsMiddleware.__call__ = traced_call
    tokenizer.Tokenizer.encode_prompts = traced_encode
    engine_client.EngineClient.add = traced_add
    engine_client.EngineLink.on_step = traced_on_step


def trace_engine() -> None:
    from engine_worker import admission, io_threads, step_loop

    out = trace_file("engine")
    records: dict[str, dict] = {}
    prepare, add, send = admission.VllmRequests.__call__, step_loop.StepLoop.add, step_loop.StepLoop.send
    publish = io_threads.OutputPublisher.publish

    def traced_prepare(self, message, received_at):
        admitted = prepare(self, message, received_at)
        records[message.request_id] = {"id": message.request_id, "received": received_at, "admitted": time.time()}
        return admitted

    def traced_add(self, admitted, received_at):
        add(self, admitted, received_at)
        if (record := records.get(admitted.add.request_id)) is not None:
            record.update(added=time.time(), running=len(self.owners))

    def traced_send(self, frontend_id, deltas):
        now = time.time()
        for delta in deltas:
            record = records.get(delta.request_id)
            if record is not None and "first_output" not in record:
                record["first_output"] = now
        return send(self, frontend_id, deltas)

    def traced_publish(self, frontend_id, message):
        publish(self, frontend_id, message)
        now = time.time()
        for delta in getattr(message, "deltas", ()):
            record = records.pop(delta.request_id, None)
            if record is not None and "first_output" in record:
                record["published"] = now
                out.write(json.dumps(record) + "\n")

    admission.VllmRequests.__call__ = traced_prepare
    step_loop.StepLoop.add = traced_add
    step_loop.StepLoop.send = traced_send
    io_threads.OutputPublisher.publish = traced_publish


STAGES = (  # (name, from, to, where the stamps are)
    ("HTTP in to tokenizing", "in", "tokenized_from", "frontend"),
    ("tokenizing", "tokenized_from", "tokenized", "frontend"),
    ("tokenized to ADD sent", "tokenized", "add", "frontend"),
    ("ADD: frontend to engine worker", "add", "received", "both"),
    ("admission (vLLM input processing)", "received", "admitted", "engine"),
    ("inbox wait + add_request", "admitted", "added", "engine"),
    ("engine core: queue + prefill + output", "added", "first_output", "engine"),
    ("publisher", "first_output", "published", "engine"),
    ("output: engine worker to frontend", "published", "first_delta", "both"),
    ("first delta to first byte out", "first_delta", "first_body", "frontend"),
    ("total: HTTP in to first byte out", "in", "first_body", "frontend"),
)


def report(run_dir: str) -> str:
    """Per group of requests (prompt length, in-flight bucket): the median ms of each stage."""
    engine = {}
    for path in Path(run_dir).rglob("trace-engine-*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            engine[record["id"]] = record
    groups = defaultdict(list)
    for path in Path(run_dir).rglob("trace-frontend-*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            record.update(engine.get(record.get("id"), {}))
            groups[(round(record["prompt_tokens"], -2), bucket(record.get("running", 0)))].append(record)
    lines = []
    for (tokens, running), records in sorted(groups.items()):
        lines.append(f"== prompts of ~{tokens} tokens, {running} running in the engine at the ADD: "
                     f"{len(records)} requests")
        for name, start, end, _ in STAGES:
            spans = [1000 * (r[end] - r[start]) for r in records if start in r and end in r]
            if spans:
                lines.append(f"  {name:42s} p50 {statistics.median(spans):8.2f} ms   mean {statistics.fmean(spans):8.2f}")
    return "\n".join(lines)


def bucket(running: int) -> str:
    return next(label for limit, label in ((1, "1"), (8, "2-8"), (96, "9-96"), (10**9, ">96")) if running <= limit)


def main() -> None:
    if sys.argv[1:2] == ["report"]:
        print(report(sys.argv[2]))
    elif "--frontend" in sys.argv:
        sys.argv.remove("--frontend")
        trace_frontend()
        from frontend.__main__ import run_frontend_process
        run_frontend_process()
    else:
        trace_engine()
        from engine_worker.__main__ import run_engine_worker_process
        run_engine_worker_process()


if __name__ == "__main__":
    main()
