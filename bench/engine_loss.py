"""What a client sees when its engine goes: a fleet of two engines under a steady load of streams (each slot
starts its next stream as the last ends), undisturbed, then with one engine SIGKILLed, SIGTERMed (a
drain), and both restarted one at a time (`restart-engines`). For the streams in flight when an engine
went (started before, ended after), against the streams of the undisturbed run: the longest gap between
two tokens of a stream, and its extra time (its duration less the undisturbed streams' median); with the
client errors and the streams moved (llm_migrations_total). The clients cannot tell which streams moved:
the figures cover every stream in flight at the disturbance, the moved ones among them.

    python -m bench.engine_loss --backend cpu --repeats 3
    python -m bench.engine_loss --backend simulated --repeats 3   # the H200 profile, on this host's CPU
    python -m bench.engine_loss --backend gpu --model /tmp/stage/model --concurrency 128 --tokens 1024 \
        --scenarios undisturbed,sigkill --repeats 3   # two engines on GPU 0 (cuda_visible_devices "0,0")

The throughput dip: stream events (about one token each) a second over the whole load in 1 s bins;
the bins before the first disturbance (after the first half of the ramp) give the undisturbed rate,
the lowest bin from the disturbance until the engines are all up again the dip.
"""
import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from bench.services import OurService, answers
from bench.sim_fleet import FleetSpec, fleet_service
from common.config import ROOT

SCENARIOS = ("undisturbed", "sigkill", "sigterm", "rolling")
RECOVERY_LIMIT_S = 600.0  # a service that has not brought its engines back by then has given up on one
H200_PROFILE = "bench/profiles/h200-llama-3-8b.json"


@dataclass
class Stream:
    sent: float
    arrivals: list[float] = field(default_factory=list)
    error: str | None = None
    tokens: int = 0

    @property
    def ended(self) -> float:
        return self.arrivals[-1] if self.arrivals else self.sent

    @property
    def duration(self) -> float:
        return self.ended - self.sent

    @property
    def longest_gap(self) -> float:
        times = [self.sent, *self.arrivals]
        return max(later - earlier for earlier, later in zip(times, times[1:]))


class Load:
    """`concurrency` slots, each streaming one completion of `tokens` tokens after another until stopped."""

    def __init__(self, url: str, concurrency: int, tokens: int, model: str):
        self.url, self.concurrency, self.tokens, self.model = url, concurrency, tokens, model
        self.streams: list[Stream] = []
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency + 4)
        async with httpx.AsyncClient(timeout=600, limits=limits) as client:
            await asyncio.gather(*(self.slot(client, index) for index in range(self.concurrency)))

    async def slot(self, client: httpx.AsyncClient, index: int) -> None:
        turn = 0
        while not self.stopping.is_set():
            body = {"model": self.model, "prompt": f"slot {index} turn {turn}: tell a long story", "stream": True,
                    "max_tokens": self.tokens, "ignore_eos": True, "stream_options": {"include_usage": True}}
            stream = Stream(time.monotonic())
            self.streams.append(stream)
            try:
                async with client.stream("POST", self.url + "/v1/completions", json=body) as response:
                    if response.status_code != 200:
                        stream.error = f"HTTP {response.status_code}"
                    async for line in response.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        event = json.loads(line[6:])
                        if "error" in event:
                            stream.error = str(event["error"])
                        elif event.get("choices"):
                            stream.arrivals.append(time.monotonic())
                        elif event.get("usage"):
                            stream.tokens = event["usage"]["completion_tokens"]
            except httpx.HTTPError as error:
                stream.error = repr(error)
            if stream.error is None and stream.tokens != self.tokens:
                stream.error = f"{stream.tokens} tokens of {self.tokens}"
            turn += 1


class Fleet:
    """The service under test, its engines' pids and health, and what it counted."""

    def __init__(self, service: OurService):
        self.service = service

    def engines_up(self) -> bool:
        return all(answers(url, every_engine=True) for url in self.service.health_urls())

    def engine_ids(self) -> list[str]:
        with httpx.Client() as client:
            return [engine["engine_id"] for engine in client.get(self.service.health_urls()[0]).json()["engines"]]

    def migrations(self) -> float:
        """llm_migrations_total over every cause and frontend."""
        text = httpx.get(self.service.url + "/metrics", timeout=30).text
        return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                   if sample.name == "llm_migrations_total")

    def restart_engines(self) -> tuple[int, list[float]]:
        """`restart-engines` on the service: its exit status and when each engine began to drain."""
        process = subprocess.Popen([sys.executable, "-m", "common.service", "restart-engines"], cwd=ROOT,
                                   env=self.service.environment(), stdout=subprocess.PIPE, text=True)
        drains = []
        for line in process.stdout:
            if line.rstrip().endswith(": draining"):
                drains.append(time.monotonic())
        return process.wait(), drains


async def scenario(fleet: Fleet, name: str, concurrency: int, tokens: int, model: str, undisturbed_s: float,
                   victim: str = "engine-0") -> dict:
    load = Load(fleet.service.url, concurrency, tokens, model)
    running = asyncio.create_task(load.run())
    moved_before = fleet.migrations()
    await asyncio.sleep(undisturbed_s / 2)  # every slot under way
    disturbances, status = [], 0
    if name == "undisturbed":
        await asyncio.sleep(undisturbed_s / 2)
    elif name == "rolling":
        status, disturbances = await asyncio.to_thread(fleet.restart_engines)
    else:
        disturbances.append(time.monotonic())
        os.kill(fleet.service.pid(victim), signal.SIGKILL if name == "sigkill" else signal.SIGTERM)
        await asyncio.sleep(1)
    if name != "undisturbed":
        deadline = time.monotonic() + RECOVERY_LIMIT_S
        while not await asyncio.to_thread(fleet.engines_up):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the engines were not all up {RECOVERY_LIMIT_S:.0f} s after the {name}")
            await asyncio.sleep(1)
        recovered = time.monotonic()
        await asyncio.sleep(undisturbed_s / 2)
    load.stopping.set()
    await running
    return {"streams": load.streams, "disturbances": disturbances, "status": status,
            "moved": fleet.migrations() - moved_before, "recovered": recovered if name != "undisturbed" else None}


def throughput(streams: list[Stream], disturbances: list[float], recovered: float | None) -> dict | None:
    """Stream events (about a token each) a second in 1 s bins: the median bin before the first
    disturbance, the lowest from it to recovery, and the mean until then."""
    arrivals = sorted(at for stream in streams for at in stream.arrivals)
    if not arrivals or not disturbances:
        return None
    start = arrivals[0]
    bins: dict[int, int] = {}
    for at in arrivals:
        bins[int(at - start)] = bins.get(int(at - start), 0) + 1
    first, last = int(disturbances[0] - start), int((recovered or arrivals[-1]) - start)
    before = [bins.get(second, 0) for second in range(first // 2, first)]
    during = [bins.get(second, 0) for second in range(first, max(first + 1, last))]
    return {"undisturbed_median": statistics.median(before) if before else None, "lowest_after": min(during),
            "mean_until_recovered": statistics.fmean(during)}


def figures(run: dict, baseline_s: float) -> dict:
    streams = run["streams"]
    hit = [stream for stream in streams
           if any(stream.sent < at < stream.ended for at in run["disturbances"])] if run["disturbances"] else streams
    whole = [stream for stream in hit if stream.error is None]
    gaps = sorted(stream.longest_gap for stream in whole)
    extra = sorted(stream.duration - baseline_s for stream in whole)
    return {
        "streams": len(streams), "in_flight_at_disturbance": len(hit) if run["disturbances"] else None,
        "moved": run["moved"], "client_errors": sum(stream.error is not None for stream in streams),
        "restart_status": run["status"],
        "longest_gap_s": {"p50": statistics.median(gaps), "p99": float(np.percentile(gaps, 99)), "max": gaps[-1]}
        if gaps else None,
        "events_per_s": throughput(streams, run["disturbances"], run.get("recovered")),
        "extra_time_s": {"p50": statistics.median(extra), "mean": statistics.fmean(extra), "max": extra[-1]}
        if extra else None,
        "errors": sorted({stream.error for stream in streams if stream.error})[:5],
    }


def service_of(args, out: Path) -> tuple[OurService, str]:
    server = {"log_level": "info", "max_connections_per_client": 0, "request_timeout_s": 3600.0}
    if args.backend == "simulated":
        spec = FleetSpec(engines=2, frontends=2, profile=H200_PROFILE, time_scale=1.0)
        service = fleet_service(spec, out, args.port)
        service.server_config.update(server)
        return service, spec.model
    if args.backend == "gpu":  # two engines on GPU 0, each with its KV memory fixed
        engine_args = {"data_parallel_size": 2, "load_format": "dummy", "max_model_len": 4096, "max_num_seqs": 256,
                       "max_num_batched_tokens": 8192, "gpu_memory_utilization": 0.3,
                       "kv_cache_memory_bytes": 16 << 30, **json.loads(args.engine_args)}
        return OurService(out, args.port, args.model, engine_args, frontends=4, reuse_port=True,
                          cuda_visible_devices="0,0", server=server), args.model
    model = str(ROOT / ".data" / "tiny-llama")
    engine_args = {"data_parallel_size": 2, "max_num_seqs": 64, "max_model_len": 4096, "enforce_eager": True}
    return OurService(out, args.port, model, engine_args, frontends=2, cpu_kv_cache_gib=1, server=server), model


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine_loss")
    parser.add_argument("--backend", choices=["cpu", "simulated", "gpu"], default="cpu")
    parser.add_argument("--model", help="gpu: the model's directory (dummy weights)")
    parser.add_argument("--engine-args", default="{}", help="gpu: JSON added to the engines' arguments")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--undisturbed-s", type=float, default=30.0, help="seconds of load around a disturbance")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--port", type=int, default=7380)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    out = args.out / f"engine-loss-{args.backend}"
    service, model = service_of(args, out)
    service.start()
    results: dict = {"command": " ".join(["python -m bench.engine_loss", *sys.argv[1:]]), "machine": platform.node(),
                     "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg(), "runs": []}
    try:
        print(f"service ready after {service.wait_ready(1800):.0f} s", flush=True)
        fleet = Fleet(service)
        for repeat in range(args.repeats):
            baseline_s = None
            # Each repeat disturbs the other engine: the service stops an engine that crashes
            # `engine_crash_limit` (3) times in a row within 15 minutes of its start (docs/failures.md).
            victim = f"engine-{repeat % 2}"
            for name in args.scenarios.split(","):
                run = asyncio.run(scenario(fleet, name, args.concurrency, args.tokens, model, args.undisturbed_s,
                                           victim))
                if name == "undisturbed":
                    baseline_s = statistics.median(stream.duration for stream in run["streams"] if not stream.error)
                summary = {"scenario": name, "repeat": repeat, "victim": victim, **figures(run, baseline_s or 0.0)}
                results["runs"].append(summary)
                print(json.dumps(summary), flush=True)
    finally:
        results["load_average_at_end"] = os.getloadavg()
        service.stop()
    (out / "engine-loss.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
