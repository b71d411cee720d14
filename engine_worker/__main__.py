"""Entry point of the engine worker process: `python -m engine_worker [--pool P] [--rank I]`; engine I of
model P's data_parallel_size (inference.yml's `models`, the one model without it) takes its own GPUs,
and the addresses of its slot among every local engine worker of every pool."""
import argparse
import logging
import os
import signal
import sys
import uuid
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from common import default_model
from common.config import PoolConfig, ServerConfig, load_inference, load_server
from common.logs import json_lines_only, setup_logging, stage, vllm_logging_config
from common.tracing import build_provider
from engine_worker import resumed_grammar
from engine_worker.load import LoadTracker
from engine_worker.lora import Adapters
from engine_worker.orphans import reap_previous_engine

log = logging.getLogger("engine_worker")

WARM_UP_PROMPT = [1, 2, 3, 4]  # ids every vocabulary has
WARM_UP_TOKENS = 4


def model_path(server: ServerConfig, inference: PoolConfig) -> str:
    return inference.model or str(default_model.ensure(server.path(server.data_dir)))


def reports_prefix_cache(server: ServerConfig, inference: PoolConfig) -> bool:
    """Whether this engine tells the frontends what its prefix cache holds: for exact placement, when
    there is a choice of engines (several on this host, or this one serving other hosts), and unless
    the engine arguments already give vLLM's KV-cache events to someone else."""
    in_a_fleet = inference.data_parallel_size > 1 or server.engine.request_address.startswith("tcp://")
    return (server.router.policy == "prefix" and server.router.placement == "exact" and in_a_fleet
            and "kv_events_config" not in inference.engine_args)


def resumes_grammars(inference: PoolConfig) -> bool:
    """Whether vLLM's engine runs the scheduler that resumes a moved request's grammar: when the pool
    asks for it (resume_grammars), its engine arguments name no scheduler of their own, and the installed
    vLLM has what it takes; else vLLM's own scheduler, said once in the log."""
    if not inference.resume_grammars or "scheduler_cls" in inference.engine_args:
        return False
    if lacking := resumed_grammar.missing():
        log.warning("%s: vLLM's own scheduler; requests with a grammar will not move to this engine", lacking)
        return False
    return True


def engine_args(model: str, inference: PoolConfig, kv_events: dict | None = None, resume_grammars: bool = False):
    from vllm import EngineArgs
    from vllm.config import KVEventsConfig

    extra = {"kv_events_config": KVEventsConfig(**kv_events)} if kv_events else {}
    ours = {"served_model_name": inference.served_name}
    if resume_grammars:
        ours["scheduler_cls"] = resumed_grammar.SCHEDULER
    return EngineArgs(model=model, **{**ours, **inference.vllm_engine_args(), **extra})


def usage_context():
    """What vLLM is told it serves: an OpenAI API server, as `vllm serve` tells it. vLLM picks the
    defaults of max_num_batched_tokens and max_num_seqs by it (on an H100 or H200: 8192 and 1024
    for a server, 2048 and 128 for LLMEngine's own default), so engine_args that leave them out
    get what `vllm serve` gets."""
    from vllm.usage.usage_lib import UsageContext

    return UsageContext.OPENAI_API_SERVER


def build_engine(model: str, inference: PoolConfig, stat_logger, kv_events: dict | None = None,
                 resume_grammars: bool = False):
    log.info("loading vLLM")
    from vllm.v1.engine.llm_engine import LLMEngine

    args = engine_args(model, inference, kv_events, resume_grammars)
    log.info("starting the engine on %s", model)
    return LLMEngine.from_engine_args(args, usage_context=usage_context(), stat_loggers=[stat_logger])


def warm_up(engine) -> None:
    """One short generation (or pooling, for a pooling model), so the first request does not pay for
    what vLLM sets up lazily. It bypasses the step loop, so the engine's token totals leave it out."""
    from vllm import PoolingParams, SamplingParams

    tasks = engine.get_supported_tasks()
    if "generate" in tasks:
        # With logprobs: vLLM compiles its logprob ranking kernel (torch.compile) on the first request
        # that asks for them, 15 s on a 2-core host, past stall_timeout_s: that request would fail as
        # the engine's stall, and the requests beside it would move.
        params = SamplingParams(max_tokens=WARM_UP_TOKENS, ignore_eos=True, detokenize=False, logprobs=1)
    else:
        params = PoolingParams(task=next(task for task in ("embed", "classify", *tasks) if task in tasks))
    engine.add_request("warm-up", {"prompt_token_ids": WARM_UP_PROMPT}, params)
    while engine.has_unfinished_requests():
        engine.step()


def start_vllm(model: str, inference: PoolConfig, load, kv_events: dict | None, lora_root: Path | None,
               resume_grammars: bool):
    """vLLM's engine, its LoRA adapters and its admission."""
    from engine_worker.admission import VllmRequests

    with stage(log, "start 2/3: vLLM load (weights, KV cache, compilation)"):
        engine = build_engine(model, inference, load.stat_logger_factory(), kv_events, resume_grammars)
    adapters = Adapters(engine, inference.allow_runtime_lora_updating, inference.served_name, lora_root,
                        inference.lora_hub_downloads)
    if inference.lora_modules:
        with stage(log, f"start 2/3: LoRA adapters ({len(inference.lora_modules)})"):
            adapters.load_configured(inference.lora_modules)
    with stage(log, "start 3/3: warm-up generation"):
        warm_up(engine)
    freeze_heap()
    return engine, adapters, VllmRequests(engine, adapters)


def start_simulated(model: str, inference: PoolConfig, rank: int, load, report_kv_events: bool, run_dir: Path):
    """The simulated engine (no vLLM, no LoRA adapters) and its admission."""
    from engine_worker.simulator import build_simulated_engine
    from engine_worker.simulator.admission import SimulatedRequests

    with stage(log, f"start 2/3: simulated engine ({inference.simulator.profile})"):
        try:  # the stat logger derives from vLLM's StatLoggerBase only when vLLM calls it
            engine = build_simulated_engine(model, inference, rank, load.stat_logger_factory(base=object),
                                            report_kv_events, run_dir)
        except ValueError as error:  # a shape vLLM would refuse, a profile or a model it cannot read
            raise SystemExit(f"the simulated engine cannot start: {error}") from None
    log.info("start 3/3: no warm-up for a simulated engine")
    return engine, Adapters(engine, model=inference.served_name), SimulatedRequests(engine)


def freeze_heap() -> None:
    """Everything allocated so far (vLLM, torch, the model's config) stays for the process's life:
    move it out of the garbage collector's sight, so the collections that run between steps scan
    only what serving allocates. `vllm serve`'s API process, which runs vLLM's output handling as
    this process does, does the same once it has started."""
    from vllm.utils.gc_utils import freeze_gc_heap

    freeze_gc_heap()


def count_gpus() -> int | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetCount()
    except Exception:  # no driver, no library: no GPU
        return None


class StartedEngine(NamedTuple):
    """A started engine (vLLM's, warmed up, or the simulated one), and what was made with it."""

    engine: Any
    model: str  # the path or hub id it loaded
    load: LoadTracker  # fed by the engine's stat logger
    adapters: Adapters  # the LoRA adapters it serves
    requests: Any  # what admission checks each ADD with (VllmRequests, SimulatedRequests)
    kv_events: dict | None  # where vLLM publishes its KV-cache events, when the engine reports its prefix cache
    resumes_grammars: bool  # its scheduler resumes a moved request's grammar


def start_engine(server: ServerConfig, inference: PoolConfig, run_dir: Path, rank: int, slot: int) -> StartedEngine:
    """The model found (or made), and the configured engine started on it: engine `rank` of its pool,
    in local slot `slot`."""
    from engine_worker.cache_events import kv_events_config

    simulated = inference.engine_backend == "simulated"
    with stage(log, "start 1/3: model"):
        model = model_path(server, inference)
    load = LoadTracker(monitor_gpus=not simulated)
    kv_events = kv_events_config(run_dir, slot) if reports_prefix_cache(server, inference) else None
    resume = not simulated and resumes_grammars(inference)  # a simulated engine takes no grammars
    if simulated:
        engine, adapters, requests = start_simulated(model, inference, rank, load, kv_events is not None, run_dir)
    else:
        lora_root = server.path(inference.lora_root) if inference.lora_root else None
        engine, adapters, requests = start_vllm(model, inference, load, kv_events, lora_root, resume)
    cache_config = engine.vllm_config.cache_config
    load.set_kv_cache(cache_config.num_gpu_blocks or 0, cache_config.block_size)
    return StartedEngine(engine, model, load, adapters, requests, kv_events, resume)


def wire_up(server: ServerConfig, inference: PoolConfig, slot: int, started: StartedEngine):
    """The step loop over the engine, between the sockets of local slot `slot`: the output publisher, the
    request reader (through admission) and, when the engine reports its prefix cache, its KV-cache events."""
    import zmq

    from common.curve import start_authenticator
    from common.sockets import curve_keys_dir
    from engine_worker.admission import admitter
    from engine_worker.cache_events import CacheIndex, relay_emptied, start_cache_event_reader, start_cache_event_relay
    from engine_worker.io_threads import OutputPublisher, start_request_reader
    from engine_worker.priority_hold import PriorityHold
    from engine_worker.step_loop import StepLoop
    from engine_worker.tracing import EngineTracing

    engine_id = uuid.uuid4().hex[:12]
    provider = build_provider(server.tracing, "engine_worker", engine_id)
    tracing = EngineTracing(provider, engine_id) if provider is not None else None
    context = zmq.Context()
    if server.engine.curve:
        start_authenticator(context, curve_keys_dir(server.engine))
    cache = CacheIndex(engine_id, server.router.block_size) if started.kv_events else None
    publisher = OutputPublisher(context, server.local_output_address(slot), server.engine, engine_id, started.load,
                                started.adapters, cache)
    publish = partial(publisher.send, None)  # on the broadcast topic
    if cache is not None and inference.engine_backend == "simulated":
        start_cache_event_relay(started.engine.kv_events, cache, publish)
    elif cache is not None:
        start_cache_event_reader(context, started.kv_events["endpoint"], cache, publish)
    loop = StepLoop(
        started.engine, engine_id, inference.served_name, started.model, publisher, started.load,
        server.engine.heartbeat_interval_s, started.adapters, started.resumes_grammars, tracing,
        server.log_requests, PriorityHold(started.engine.vllm_config.scheduler_config.max_num_seqs,
                                          [c.max_share for c in server.priority.classes]),
        partial(relay_emptied, cache, publish) if cache is not None else None,
    )
    admit = admitter(loop.inbox, started.requests, cache, tracing)
    start_request_reader(context, server.local_request_address(slot), server.engine, admit, on_death=loop.fail)
    return loop


def run_engine_worker_process() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pool", type=int, default=0)
    parser.add_argument("--rank", type=int, default=0)
    args = parser.parse_args()
    server, pools = load_server(), load_inference()
    if server.log_format == "json":
        json_lines_only()
    setup_logging(server.log_level, server.log_format)
    inference, rank, slot = pools.pools[args.pool], args.rank, pools.first_slot(args.pool) + args.rank
    run_dir = server.path(server.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if server.log_format == "json":  # vLLM's lines too, here and in the engine core it starts
        os.environ.setdefault("VLLM_LOGGING_CONFIG_PATH", str(vllm_logging_config(run_dir, server.log_level)))
    if server.tracing.otlp_endpoint:  # vLLM's own spans (engine_args' otlp_traces_endpoint) over the same protocol
        os.environ.setdefault("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", server.tracing.protocol)
    if inference.engine_backend != "simulated":
        if gpus := inference.gpus_of(rank, count_gpus() if inference.data_parallel_size > 1 else None):
            os.environ["CUDA_VISIBLE_DEVICES"] = gpus
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(inference.cpu_kv_cache_gib))
        # vLLM's engine core starts as a fresh process, as under `vllm serve` (its CLI sets this; on a
        # GPU LLMEngine would fork it), not as a copy of this one: NVML already open for the heartbeat,
        # the tokenizer loaded, this process's heap and logging. vllm-cpu spawns it anyway.
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    if inference.engine_cpus:
        keep_to_cpus(inference.engine_cpus)
    reap_previous_engine(run_dir, slot)
    ready = ready_file(run_dir, slot)
    ready.unlink(missing_ok=True)
    started = start_engine(server, inference, run_dir, rank, slot)
    loop = wire_up(server, inference, slot, started)

    def stop(signum, frame):
        log.info("signal %d: finishing", signum)
        ready.unlink(missing_ok=True)
        loop.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("engine %s ready (%s, rank %d): requests on %s, outputs on %s", loop.engine_id, inference.served_name,
             rank, server.local_request_address(slot), server.local_output_address(slot))
    ready.write_text(loop.engine_id)
    status = loop.serve()
    ready.unlink(missing_ok=True)
    if loop.tracing is not None:
        loop.tracing.shutdown()
    release_helper_processes(started.engine)
    log.info("engine %s stopped%s", loop.engine_id, f" ({loop.failure})" if loop.failure else "")
    sys.exit(status)


def keep_to_cpus(cpus: list[int]) -> None:
    """Run this process, and every thread and process it starts from now on (vLLM's engine core and
    workers, their OpenMP threads), on `cpus` (inference.yml's engine_cpus)."""
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as error:
        raise SystemExit(f"inference.yml's engine_cpus {cpus}: this host has no such CPU to run on ({error})")
    log.info("engine worker: runs on CPUs %s", ",".join(map(str, sorted(os.sched_getaffinity(0)))))


def ready_file(run_dir: Path, slot: int) -> Path:
    """Present, holding the engine's id, from its ready line until it begins to stop: what the
    readiness probe of an engine-only host (a Kubernetes engine pod) checks."""
    return run_dir / ("engine.ready" if slot == 0 else f"engine-{slot}.ready")


def release_helper_processes(engine) -> None:
    """The engine core and multiprocessing's resource tracker end before this process does. Left to the
    interpreter's exit, they outlive it for a moment as orphans: the tracker ignores SIGTERM and quits
    only once every holder of its pipe (this process and the core) is gone, so `stop` would return with
    a process of the service still running."""
    from multiprocessing import resource_tracker

    if core := getattr(engine, "engine_core", None):
        core.shutdown()
    resource_tracker._resource_tracker._stop()  # no public way to wait for it


if __name__ == "__main__":
    run_engine_worker_process()
