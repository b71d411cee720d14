"""vLLM's own offline LLMEngine step loop on the load bench/zmq_bench.py sends: the ceiling the
engine worker is measured against (issue 6: engine worker >= 0.98x this).

    INFERENCE_CONFIG=... .venv/bin/python -m bench.engine_loop_bench \
        --concurrency 256 --requests 1024 --input-len 128 --output-len 1024

Same model and engine arguments (conf/inference.yml), same prompts (same seed), same sampling
parameters and output kind as the engine worker asks for, `concurrency` requests kept in flight.
"""
import argparse
import os
import time

from bench.request_timings import RequestResult, report, save, summarize
from bench.workload import Workload
from bench.zmq_bench import sampling
from common.config import load_inference, load_server


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", "-c", type=int, default=32)
    parser.add_argument("--requests", "-n", type=int, default=128)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=0, help="requests run and discarded before measuring")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", help="write the configuration and summary to this JSON file")
    return parser.parse_args(argv)


def build_engine():
    from engine_worker.__main__ import model_path

    inference = load_inference()
    if inference.cuda_visible_devices:
        os.environ["CUDA_VISIBLE_DEVICES"] = inference.cuda_visible_devices
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(inference.cpu_kv_cache_gib))
    from vllm import EngineArgs
    from vllm.v1.engine.llm_engine import LLMEngine

    model = model_path(load_server(), inference)
    return LLMEngine.from_engine_args(EngineArgs(model=model, **inference.engine_args)), model


def run_load(engine, prompts: list[list[int]], concurrency: int, output_len: int):
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(**sampling(output_len), detokenize=False, output_kind=RequestOutputKind.DELTA)
    results: dict[str, RequestResult] = {}
    pending = iter(enumerate(prompts))

    def add_next() -> None:
        item = next(pending, None)
        if item is not None:
            index, prompt = item
            results[str(index)] = RequestResult(start=time.perf_counter(), prompt_tokens=len(prompt))
            engine.add_request(str(index), {"prompt_token_ids": prompt}, params)

    start = time.perf_counter()
    for _ in range(min(concurrency, len(prompts))):
        add_next()
    while engine.has_unfinished_requests():
        outputs = engine.step()
        now = time.perf_counter()
        for output in outputs:
            result = results[output.request_id]
            if output.outputs[0].token_ids:
                result.record_chunk(now, len(output.outputs[0].token_ids))
            if output.finished:
                result.end = now
                add_next()
    return list(results.values()), time.perf_counter() - start


def main(argv=None) -> dict:
    args = parse_args(argv)
    engine, model = build_engine()
    workload = Workload(model, args.seed)
    if args.warmup:
        run_load(engine, [workload.token_ids(args.input_len) for _ in range(args.warmup)],
                 args.concurrency, args.output_len)
    prompts = [workload.token_ids(args.input_len) for _ in range(args.requests)]
    results, duration = run_load(engine, prompts, args.concurrency, args.output_len)
    summary = summarize(results, duration)
    print(report(f"vLLM LLMEngine loop c={args.concurrency} n={args.requests} "
                 f"in={args.input_len} out={args.output_len}", summary))
    if args.save:
        save(args.save, vars(args), summary)
    return summary


if __name__ == "__main__":
    main()
