"""The simulated engine: a drop-in for the part of vLLM's LLMEngine that the engine worker uses
(add_request, abort_request, step, has_unfinished_requests, reset_prefix_cache, model_config, vllm_config's
cache and scheduler sizes), with vLLM's scheduler and paged prefix cache (scheduler.py, kv_cache.py), random
tokens of the served vocabulary (sampling.py), and steps that take the time a GPU's profile gives
(common/step_time.py) times `time_scale`.

A step sleeps for its modelled time after scheduling, so requests and aborts that arrive meanwhile
wait in the step loop's inbox for the next step, as they do while vLLM computes one. After each step
it tells its stat loggers the scheduler's figures, as vLLM's LLMEngine does, and queues the KV-cache
events of the step for engine_worker/cache_events.py.

Engines that share a GPU (shared_gpu.py) hold it for each step's GPU time, in turns; a step that waited
for another engine's also holds it for the profile's `served` gpu_switch_s.

Under `async_scheduling` (as the H200 profile's vLLM ran), a step is scheduled as vLLM's async scheduler
schedules it, while the step before computes: a request that arrives during a busy step is scheduled a
step later than it would be otherwise, and a finished request's blocks come back a step later.

With the profile's `served` terms (common/step_time.py, Served), a request reaches the scheduler
first_token_s after it was added, and a step takes at least its CPU's cpu_per_decode_seq_s per
decoding sequence.
"""
import queue
import random
import time
from collections import deque
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import NamedTuple

from common.step_time import Served, StepTime, StepWork
from engine_worker.simulator.kv_cache import KVCacheManager, PrefixCacheStats
from engine_worker.simulator.sampling import Sampling, TokenSampler, finish_of
from engine_worker.simulator.scheduler import Chunk, Prompt, Request, Scheduler
from engine_worker.simulator.shape import EngineShape
from engine_worker.simulator.shared_gpu import SharedGpu
from engine_worker.simulator.vocabulary import Vocabulary


class CompletionOutput(NamedTuple):
    token_ids: list[int]
    finish_reason: str | None
    stop_reason: int | None
    logprobs: list[dict] | None


class RequestOutput(NamedTuple):
    """vLLM's RequestOutput as the step loop reads it: the new token (outputs are deltas)."""

    request_id: str
    outputs: list[CompletionOutput]
    finished: bool
    prompt_token_ids: list[int] | None = None
    prompt_logprobs: list | None = None
    num_cached_tokens: int = 0  # its prompt tokens found in the prefix cache


@dataclass
class TimeKept:
    """How closely the steps kept their modelled time on this host, in wall seconds since the engine
    started: the steps' modelled time x time_scale, and the wall time they took (from each step's start
    to its end, and between steps while requests were unfinished). Where the host cannot keep up
    (scheduling a step takes longer than its modelled time, sleeps overrun, the loop between steps is
    slow), `busy_s` grows past `modelled_s`, and every time the simulation reports is stretched."""

    modelled_s: float = 0.0
    busy_s: float = 0.0


@dataclass
class SchedulerStats:
    """vLLM's SchedulerStats, the fields its stat loggers read, and the simulation's time kept."""

    num_running_reqs: int = 0
    num_waiting_reqs: int = 0
    kv_cache_usage: float = 0.0
    prefix_cache_stats: PrefixCacheStats = field(default_factory=PrefixCacheStats)
    time_kept: TimeKept = field(default_factory=TimeKept)


@dataclass
class IterationStats:
    """vLLM's IterationStats, the field the engine worker reads: requests preempted since the last report."""

    num_preempted_reqs: int = 0


def work_of(chunks: list[Chunk]) -> StepWork:
    prefill = [chunk for chunk in chunks if not chunk.is_decode]
    decode = [chunk for chunk in chunks if chunk.is_decode]
    return StepWork(
        prefill_tokens=sum(chunk.num_tokens for chunk in prefill),
        decode_seqs=len(decode),
        kv_tokens=sum(chunk.computed_before + 1 for chunk in decode),
        prefill_attention=sum(chunk.num_tokens * (chunk.computed_before + chunk.num_tokens) for chunk in prefill),
    )


class SimulatedEngine:
    def __init__(self, shape: EngineShape, vocabulary: Vocabulary, step_time: StepTime, time_scale: float = 1.0,
                 seed: int = 0, eos_probability: float = 0.0, stat_loggers=(), report_kv_events: bool = False,
                 served: Served | None = None, count_every_lookup: bool = False, gpu: SharedGpu | None = None):
        self.shape = shape
        self.vocabulary = vocabulary
        self.step_time = step_time
        self.time_scale = time_scale
        self.kv = KVCacheManager(shape.num_gpu_blocks, shape.block_size, shape.enable_prefix_caching,
                                 report_kv_events)
        self.scheduler = Scheduler(self.kv, shape.max_num_seqs, shape.max_num_batched_tokens,
                                   shape.enable_chunked_prefill, shape.scheduling_policy == "priority",
                                   count_every_lookup, shape.scheduler_reserve_full_isl)
        self.sampler = TokenSampler(vocabulary, eos_probability)
        self.rng = random.Random(seed)
        self.model_config = SimpleNamespace(max_model_len=shape.max_model_len)
        self.vllm_config = SimpleNamespace(
            model_config=self.model_config,
            cache_config=SimpleNamespace(block_size=shape.block_size, num_gpu_blocks=shape.num_gpu_blocks,
                                         enable_prefix_caching=shape.enable_prefix_caching),
            scheduler_config=SimpleNamespace(max_num_seqs=shape.max_num_seqs,
                                             max_num_batched_tokens=shape.max_num_batched_tokens,
                                             enable_chunked_prefill=shape.enable_chunked_prefill,
                                             policy=shape.scheduling_policy),
        )
        self.stat_loggers = [make(self.vllm_config, 0) for make in stat_loggers]
        self.kv_events: queue.Queue = queue.Queue()  # each step's events, when reported, for the relay
        self.sleep, self.clock = time.sleep, time.monotonic
        self.time_kept = TimeKept()
        self.busy_since: float | None = None  # the end of the last step, while requests remain
        self.served = served
        self.gpu = gpu  # shared with other engines of this host (shared_gpu.py), or None: its own
        self.arriving: deque[tuple[float, Request]] = deque()  # (when it reaches the scheduler, request)
        self.computing_since: float | None = None  # async scheduling: when the step in flight began

    def get_supported_tasks(self) -> tuple[str, ...]:
        return ("generate",)

    def add_request(self, request_id: str, prompt: Prompt, sampling: Sampling, arrival_time: float | None = None):
        if request_id in self.scheduler.requests or any(r.request_id == request_id for _, r in self.arriving):
            raise ValueError(f"request id {request_id!r} is already running")
        seed = sampling.seed if sampling.seed is not None else self.rng.getrandbits(64)
        request = Request(request_id, prompt, sampling, random.Random(seed), self.shape.block_size)
        if self.served is None and not self.shape.async_scheduling:
            self.scheduler.add(request)
            return
        delay = 0.0 if self.served is None else self.time_scale * self.served.first_token_s
        self.arriving.append((self.clock() + delay, request))

    def abort_request(self, request_ids) -> None:
        ids = set(request_ids)
        for request_id in ids:
            self.scheduler.finish(request_id)
        self.arriving = deque(item for item in self.arriving if item[1].request_id not in ids)

    def reset_prefix_cache(self) -> bool:
        """Empty the prefix cache, as vLLM's does: False, changing nothing, while a request holds blocks.
        Its AllBlocksCleared goes out with the next step's events, as vLLM's."""
        return self.kv.reset_prefix_cache()

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests() or bool(self.arriving)

    def step(self) -> list[RequestOutput]:
        started = self.clock()
        # Under async scheduling vLLM schedules a step while the one before it computes: that schedule sees
        # the requests that had arrived when the step in flight began, and not yet the blocks of the
        # requests that end in it.
        chunks = self.schedule(started if self.computing_since is None else self.computing_since)
        if not chunks and self.computing_since is not None:
            # Nothing to queue behind the step in flight: vLLM waits for it, then schedules with its news.
            self.scheduler.free_finished()
            chunks = self.schedule(started)
        self.scheduler.free_finished()  # those that ended in the step before: back after this schedule
        outputs = [output for chunk in chunks if (output := self.advance(chunk.request)) is not None]
        if not self.scheduler.requests:  # no step follows to give back what ended in this one
            self.scheduler.free_finished()
        self.computing_since = started if chunks and self.shape.async_scheduling else None
        if chunks and self.gpu is not None:
            modelled = self.take_turn(work_of(chunks), started)
        elif chunks or not self.arriving:
            modelled = self.time_scale * self.seconds(work_of(chunks))
        else:  # nothing to compute until the next request arrives
            modelled = self.arriving[0][0] - started
        self.sleep(max(0.0, started + modelled - self.clock()))
        self.keep_time(started, modelled)
        self.report()
        return outputs

    def schedule(self, visible: float) -> list[Chunk]:
        """The scheduler's step, with the requests that reached it by `visible`."""
        while self.arriving and self.arriving[0][0] <= visible:
            self.scheduler.add(self.arriving.popleft()[1])
        return self.scheduler.schedule()

    def keep_time(self, started: float, modelled: float) -> None:
        ended = self.clock()
        self.time_kept.modelled_s += modelled
        self.time_kept.busy_s += ended - (started if self.busy_since is None else self.busy_since)
        self.busy_since = ended if self.has_unfinished_requests() else None

    def take_turn(self, work: StepWork, started: float) -> float:
        """A step on a shared GPU: its GPU time spent holding the GPU, after waiting for its turn (and, when
        another engine held it, the switch from that engine). The wait is part of the step's modelled time;
        the step takes at least its own time (its CPU floor)."""
        with self.gpu:
            turn = self.clock()
            switch_s = self.served.gpu_switch_s if self.served is not None and self.gpu.contended else 0.0
            gpu_s = self.time_scale * (self.step_time.seconds(work) + switch_s)
            self.sleep(max(0.0, turn + gpu_s - self.clock()))
        return max(self.time_scale * self.seconds(work), turn - started + gpu_s)

    def seconds(self, work: StepWork) -> float:
        gpu_s = self.step_time.seconds(work)
        return gpu_s if self.served is None else self.served.step_seconds(gpu_s, work)

    def advance(self, request: Request) -> RequestOutput | None:
        """The request's token from this step, if its whole sequence is now computed (a prompt chunk
        short of the end gives none)."""
        if request.num_computed_tokens < request.num_tokens:
            return None
        token = self.sampler.next_token(request)
        request.append(token)
        finish_reason, stop_reason = finish_of(request, self.vocabulary.eos_token_id, self.shape.max_model_len)
        if finish_reason is not None:
            self.scheduler.finish(request.request_id, keep_blocks=self.shape.async_scheduling)
        top = request.sampling.logprobs
        logprobs = None if top is None else [self.sampler.logprobs(token, request.rng, top)]
        return RequestOutput(request.request_id, [CompletionOutput([token], finish_reason, stop_reason, logprobs)],
                             finish_reason is not None, num_cached_tokens=max(request.num_cached_tokens, 0))

    def report(self) -> None:
        stats = SchedulerStats(len(self.scheduler.running), len(self.scheduler.waiting), self.kv.usage(),
                               self.kv.take_stats(), replace(self.time_kept))
        iteration = IterationStats(self.scheduler.take_preempted())
        for logger in self.stat_loggers:
            logger.record(stats, iteration)
        if events := self.kv.take_events():
            self.kv_events.put(events)
