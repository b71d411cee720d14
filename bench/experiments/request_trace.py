"""Experiment: timestamps at each stage of every request, in ours and in `vllm serve`, to see where
a request's time goes between the HTTP request and its first byte out.

    side_by_side --servers ours:4:bench.experiments.request_trace+bench.experiments.request_trace \
        vllm:1:bench.experiments.request_trace ...
    python -m bench.experiments.request_trace report RUN_DIR

Runs as our engine program (`engine`, the default), as our frontend program (`--frontend`) and as
`vllm serve` (`serve MODEL ...`, with one API process: that process is then the one that runs
vLLM's output handling), each the real program with a few methods wrapped, nothing else changed.
Each process appends one JSON line per request to TRACE_DIR (else the directory of PROBE_OUT,
which bench/services.py sets) /trace-<role>-<pid>.jsonl:
- frontend (ours) and vllm (`vllm serve`'s API process): in (the HTTP request reached the server),
  first_body (first byte of the answer handed to the server), end; ours also tokenized_from/tokenized
  (prompt encoding), add (the ADD went out), first_delta (its first output reached the frontend),
  prompt_tokens and in_flight (this frontend's requests at the ADD); `vllm serve` add_request (its
  AsyncLLM.add_request was called) and sent (it returned: the request is on its way to the engine
  core; the await returns after the send, so the core may have queued it already);
- engine (ours): received (the request socket read it), admitted (vLLM's input processing done),
  added (add_request returned: on its way to the engine core), first_output (the step that gave
  its first token returned), published (that output went out on the PUB socket); running (requests
  in the engine at the ADD);
- both, from vLLM's own request stats in the process that runs its output handling: arrival (as
  vLLM counts it), queued (the engine core put it in its waiting queue), scheduled (first
  scheduled), first_token (the engine core's output with its first token was made); vLLM's
  prefill interval is scheduled to first_token; and first_token_seen (this process had it).
Both also write each request's SamplingParams, as vLLM's input processor made them for the engine
core, to params-<role>-<pid>.jsonl (the first MAX_PARAMS requests); the report lists the fields whose
values differ between the servers.
All stamps are time.time(): every process is on one host, and the engine core's monotonic stamps
are moved onto that clock with the offset between the two clocks in the process that reads them.
"""
import contextvars
import functools
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

current = contextvars.ContextVar("request_trace", default=None)


def trace_file(role: str, kind: str = "trace"):
    directory = Path(os.environ.get("TRACE_DIR") or Path(os.environ.get("PROBE_OUT", "./x")).parent)
    directory.mkdir(parents=True, exist_ok=True)
    return (directory / f"{kind}-{role}-{os.getpid()}.jsonl").open("a", buffering=1)


class TracedApp:
    """An ASGI app wrapped: a record per HTTP request in the context its handler runs in, stamped
    when it arrives, when its first body bytes go out and when it ends; written if the handler named
    its request id."""

    def __init__(self, app, out):
        self.app, self.out = app, out

    def __getattr__(self, name):  # the server's own code reads its app's attributes (state, ...)
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        record = {"in": time.time(), "path": scope["path"]}
        token = current.set(record)

        async def stamped_send(message):
            if message["type"] == "http.response.body" and message.get("body") and "first_body" not in record:
                record["first_body"] = time.time()
            await send(message)

        try:
            await self.app(scope, receive, stamped_send)
        finally:
            record["end"] = time.time()
            current.reset(token)
            if "id" in record:
                self.out.write(json.dumps(record) + "\n")


def trace_http(out) -> None:
    """Every app uvicorn serves in this process, wrapped in TracedApp."""
    import uvicorn

    init = uvicorn.Config.__init__

    def traced_init(self, app, *args, **kwargs):
        init(self, TracedApp(app, out), *args, **kwargs)

    uvicorn.Config.__init__ = traced_init


def trace_vllm_stats(found) -> None:
    """vLLM's own stamps of each request, once its first token is processed in this process:
    `found(request id, stamps)` is called with them (the id as the caller of add_request gave it)."""
    from vllm.v1.engine.output_processor import OutputProcessor

    update = OutputProcessor._update_stats_from_output

    def traced_update(self, req_state, engine_core_output, engine_core_timestamp, iteration_stats):
        first = req_state.is_prefilling
        update(self, req_state, engine_core_output, engine_core_timestamp, iteration_stats)
        stats = req_state.stats
        if first and stats is not None and stats.first_token_ts:
            offset = time.time() - time.monotonic()  # the engine core's stamps are monotonic
            found(getattr(req_state, "external_req_id", None) or req_state.request_id, {
                "vllm_arrival": stats.arrival_time, "queued": stats.queued_ts + offset,
                "scheduled": stats.scheduled_ts + offset, "first_token": stats.first_token_ts + offset,
                "first_token_seen": time.time(), "vllm_prompt_tokens": req_state.prompt_len,
            })

    OutputProcessor._update_stats_from_output = traced_update


def trace_frontend() -> None:
    from frontend import engine_client
    from frontend.text import tokenizer

    out = trace_file("frontend")
    by_id: dict[str, dict] = {}
    encode_prompts = tokenizer.Tokenizer.encode_prompts
    add, on_step = engine_client.EngineClient.add, engine_client.EngineLink.on_step

    async def traced_encode(self, texts, *args, **kwargs):
        record = current.get()
        if record is not None:
            record["tokenized_from"] = time.time()
        ids = await encode_prompts(self, texts, *args, **kwargs)
        if record is not None:
            record["tokenized"] = time.time()
        return ids

    def traced_add(self, request_id, prompt_token_ids, *args, **kwargs):
        record = current.get()
        if record is not None and "add" not in record:
            record.update(id=request_id, prompt_tokens=len(prompt_token_ids), in_flight=len(self.requests),
                          add=time.time())
            by_id[request_id] = record
        return add(self, request_id, prompt_token_ids, *args, **kwargs)

    def traced_on_step(self, message):
        now = time.time()
        for delta in message.deltas:
            if (record := by_id.pop(delta.request_id, None)) is not None:
                record["first_delta"] = now
        return on_step(self, message)

    trace_http(out)
    tokenizer.Tokenizer.encode_prompts = traced_encode
    engine_client.EngineClient.add = traced_add
    engine_client.EngineLink.on_step = traced_on_step


MAX_PARAMS = 200
PER_REQUEST = {"seed"}  # fields a client sets per request: compared by whether they are set


def trace_params(role: str) -> None:
    """Every request's SamplingParams as the engine core gets them: the fields of the request vLLM's
    input processor returns, in this process, whoever calls it."""
    from vllm.v1.engine.input_processor import InputProcessor

    out = trace_file(role, "params")
    process_inputs, written = InputProcessor.process_inputs, [0]

    @functools.wraps(process_inputs)  # its signature too: admission reads which arguments it takes
    def traced(self, *args, **kwargs):
        request = process_inputs(self, *args, **kwargs)
        params = getattr(request, "sampling_params", None)
        if params is not None and written[0] < MAX_PARAMS:
            written[0] += 1
            fields = {name: repr(getattr(params, name)) for name in params.__struct_fields__}
            fields.update({name: repr(getattr(request, name, None)) for name in ("priority", "cache_salt",
                                                                                  "lora_request", "data_parallel_rank")})
            out.write(json.dumps(fields) + "\n")
        return request

    InputProcessor.process_inputs = traced


def params_report(run_dir: Path) -> list[str]:
    """Each SamplingParams field whose values differ between the servers under run_dir, with every value
    each server gave it."""
    values: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for path in run_dir.rglob("params-*.jsonl"):
        server = server_of(path, run_dir)
        for line in path.read_text().splitlines():
            for name, value in json.loads(line).items():
                values[name][server].add(("set" if value != "None" else "None") if name in PER_REQUEST else value)
    servers = sorted({server for by_server in values.values() for server in by_server})
    lines = [f"== SamplingParams: fields that differ between {', '.join(servers)}"]
    for name, by_server in sorted(values.items()):
        if len({frozenset(found) for found in by_server.values()}) > 1 or len(by_server) < len(servers):
            lines.append(f"  {name}: " + "; ".join(f"{server} {sorted(by_server.get(server, {'-'}))}"
                                                   for server in servers))
    return lines if len(servers) > 1 else []


def trace_engine() -> None:
    from engine_worker import admission, io_threads, step_loop

    out = trace_file("engine")
    records: dict[str, dict] = {}
    prepare, add, send = admission.VllmRequests.__call__, step_loop.StepLoop.add, step_loop.StepLoop.send
    publish = io_threads.OutputPublisher.publish

    def traced_prepare(self, message, received_at, *args, **kwargs):
        admitted = prepare(self, message, received_at, *args, **kwargs)
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

    def found(request_id, stamps):
        if (record := records.get(request_id)) is not None:
            record.update(stamps)

    admission.VllmRequests.__call__ = traced_prepare
    step_loop.StepLoop.add = traced_add
    step_loop.StepLoop.send = traced_send
    io_threads.OutputPublisher.publish = traced_publish
    trace_vllm_stats(found)
    trace_params("engine")


def trace_vllm_serve() -> None:
    """`vllm serve`'s API process: the HTTP stamps, `sent` when AsyncLLM.add_request returns, and
    vLLM's own stamps, all on one record per HTTP request."""
    from vllm.v1.engine.async_llm import AsyncLLM

    out = trace_file("vllm")
    by_id: dict[str, dict] = {}
    add_request = AsyncLLM.add_request

    async def traced_add_request(self, request_id, *args, **kwargs):
        record = current.get()
        if record is not None and "id" not in record:
            record.update(id=request_id, add_request=time.time())
            by_id[request_id] = record
        queue = await add_request(self, request_id, *args, **kwargs)
        if record is not None and "sent" not in record:
            record["sent"] = time.time()
        return queue

    def found(request_id, stamps):
        if (record := by_id.pop(request_id, None)) is not None:
            record.update(stamps)

    trace_http(out)
    AsyncLLM.add_request = traced_add_request
    trace_vllm_stats(found)
    trace_params("vllm")


STAGES = (  # (name, from, to): each a span between two stamps of one request
    ("HTTP in to tokenizing", "in", "tokenized_from"),
    ("tokenizing", "tokenized_from", "tokenized"),
    ("tokenized to ADD sent", "tokenized", "add"),
    ("ADD: frontend to engine worker", "add", "received"),
    ("admission (vLLM's input processing)", "received", "admitted"),
    ("inbox wait + add_request", "admitted", "added"),
    ("HTTP in to AsyncLLM.add_request", "in", "add_request"),
    ("add_request (input processing, send)", "add_request", "sent"),
    ("add_request returned to the engine core's queue", "sent", "queued"),
    ("added to the engine core's queue", "added", "queued"),
    ("engine core: queue", "queued", "scheduled"),
    ("engine core: prefill (scheduled to first token)", "scheduled", "first_token"),
    ("first token to this process", "first_token", "first_token_seen"),
    ("first token seen to step returned", "first_token_seen", "first_output"),
    ("publisher", "first_output", "published"),
    ("output: engine worker to frontend", "published", "first_delta"),
    ("first delta to first byte out", "first_delta", "first_body"),
    ("first token seen to first byte out", "first_token_seen", "first_body"),
    ("HTTP in to the engine core's queue", "in", "queued"),
    ("engine core's first token to first byte out", "first_token", "first_body"),
    ("total: HTTP in to first byte out", "in", "first_body"),
)


def load_records(run_dir: Path) -> dict[str, list[dict]]:
    """Every traced request of every server under run_dir: {server directory: [merged record]}."""
    engine: dict[str, dict] = {}
    for path in run_dir.rglob("trace-engine-*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            engine[record["id"]] = record
    servers: dict[str, list[dict]] = defaultdict(list)
    for pattern in ("trace-frontend-*.jsonl", "trace-vllm-*.jsonl"):
        for path in run_dir.rglob(pattern):
            for line in path.read_text().splitlines():
                record = json.loads(line)
                record.update(engine.get(record.get("id"), {}))
                servers[server_of(path, run_dir)].append(record)
    return servers


def server_of(path: Path, run_dir: Path) -> str:
    """The server's directory (side_by_side's OUT/<server name>, where its processes write), as a
    name relative to run_dir: a report over several side_by_side runs names each run's servers."""
    return str(path.parent.relative_to(run_dir)) if path.parent != run_dir else run_dir.name


def prompt_tokens(record: dict) -> int:
    return record.get("prompt_tokens") or record.get("vllm_prompt_tokens") or 0


def report(run_dir: str) -> str:
    """Per server and prompt length: each stage's median and mean ms over the requests that have it."""
    lines = []
    for server, records in sorted(load_records(Path(run_dir)).items()):
        groups = defaultdict(list)
        for record in records:
            groups[round(prompt_tokens(record), -2)].append(record)
        for _, group in sorted(groups.items()):
            tokens = statistics.median(prompt_tokens(r) for r in group)
            lines.append(f"== {server}: prompts of {tokens:g} tokens (median), {len(group)} requests")
            for name, start, end in STAGES:
                spans = [1000 * (r[end] - r[start]) for r in group if start in r and end in r]
                if spans:
                    lines.append(f"  {name:48s} p50 {statistics.median(spans):8.2f} ms   "
                                 f"mean {statistics.fmean(spans):8.2f}   n {len(spans)}")
    return "\n".join(lines + params_report(Path(run_dir)))


def main() -> None:
    if sys.argv[1:2] == ["report"]:
        print(report(sys.argv[2]))
    elif sys.argv[1:2] == ["serve"]:
        from bench import vllm_cli

        vllm_cli.prepare()
        trace_vllm_serve()
        sys.exit(vllm_cli.main(["serve", *sys.argv[2:]]))
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
