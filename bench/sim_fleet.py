"""A fleet of simulated engines under the real service (`python -m common.service`: supervisord, engine
workers running the simulated engine, frontends, nginx), and what one run on it measured.

Every time is reported in simulated seconds (wall seconds / time_scale), so the figures read as the
profiled GPU's. The engines' own figures come from /metrics, read before and after the run: prefix-cache
hits, each engine's share of the requests and of the work, the routers' reasons, and the time the
simulation kept on this host. A run where an engine's steps took more wall time than their modelled time
x time_scale (by more than 1 - MIN_TIME_KEPT), or where the client sent its requests late, measured this
host rather than the fleet: its summary says so.
"""
import asyncio
import atexit
import itertools
import os
import signal
import socket
import statistics
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from transformers import AutoTokenizer

from bench import fleet_client, process_cpu
from bench.oracle import Oracle
from bench.request_timings import RequestResult, summarize
from bench.services import OurService, answers
from bench.vllm_timings import metrics_text
from bench.workload import Workload
from common.config import ROOT, ServerConfig
from common.step_time import load_profile

FIXTURE_PROFILE = "tests/fixtures/step-time-profile-fixture.json"
ORACLE = "oracle"  # the policy under which bench/oracle.py places every request
MIN_TIME_KEPT = 0.95  # of the modelled step time, per engine
MAX_CLIENT_LAG_S = 0.05  # simulated seconds a request may go out after its planned time (p99)
ENGINE_SERIES = {
    "llm_engine_prefix_cache_queries_total": "queries", "llm_engine_prefix_cache_hits_total": "hits",
    "llm_engine_prompt_tokens_total": "prompt_tokens", "llm_engine_generation_tokens_total": "generation_tokens",
    "llm_engine_simulated_modelled_seconds_total": "modelled_s", "llm_engine_simulated_busy_seconds_total": "busy_s",
    "llm_engine_running_requests": "running", "llm_engine_waiting_requests": "waiting", "llm_engine_up": "up",
    "llm_engine_reported_cache_blocks": "reported_blocks", "llm_engine_preemptions_total": "preemptions",
}
ROUTED = "llm_engine_routed_requests_total"
SAMPLE_S = 1.0  # wall seconds between reads of each engine's load, where a run samples it
SETTLE_S = 1.2  # wall seconds after a run for the engines' last figures to reach /metrics (2 heartbeats)


@dataclass
class FleetSpec:
    engines: int = 8
    frontends: int = 2
    # server.yml's router, as side_by_side's ours:N@POLICY: prefix (exact placement), approximate, load
    # (and whatever policies server.yml's router.policy takes), or "oracle" (bench/oracle.py)
    policy: str = "prefix"
    profile: str = FIXTURE_PROFILE
    time_scale: float = 10.0
    engine_args: dict = field(default_factory=dict)  # over the profile's (max_model_len, num_gpu_blocks_override, …)
    seed: int = 0
    model: str = str(ROOT / ".data" / "tiny-llama")

    @property
    def label(self) -> str:
        return f"{self.engines}x{self.policy}/{self.frontends}fe"


def fleet_service(spec: FleetSpec, out: Path, port: int) -> OurService:
    """The service of `spec`, not started. Timeouts and bounds that a slowed clock or a bench's thousands of
    streams from one address would trip are lifted; heartbeats stay on the wall clock. Under the oracle the
    routers have nothing to decide (it pins every request) and the engines report their caches, as under
    exact placement."""
    engine_args = {**spec.engine_args, "data_parallel_size": spec.engines}
    simulator = {"profile": str((ROOT / spec.profile).resolve()), "time_scale": spec.time_scale, "seed": spec.seed}
    server = {"request_timeout_s": 36_000.0, "max_in_flight": 100_000, "max_connections_per_client": 0}
    router = "prefix" if spec.policy == ORACLE else spec.policy
    return OurService(out, port, spec.model, engine_args, spec.frontends, router=router, simulator=simulator,
                      server=server)


def engine_arg(spec: FleetSpec, name: str, default):
    """An engine argument as the simulated engines take it: the spec's, else the profile's, else `default`."""
    profiled = load_profile(ROOT / spec.profile).engine_args
    return spec.engine_args.get(name, profiled.get(name, default))


def make_oracle(spec: FleetSpec, service: OurService) -> Oracle:
    server = msgspec.convert(service.server_config, ServerConfig)
    outputs = [server.local_output_address(rank) for rank in range(spec.engines)]
    return Oracle(outputs, server.router.block_size, engine_arg(spec, "max_num_seqs", 256))


def clean_token_ids(model: str, count: int = 256) -> list[int]:
    """Ids whose token alone is printable ASCII text: output drawn from them streams a chunk per token."""
    tokenizer = AutoTokenizer.from_pretrained(model)
    special = set(tokenizer.all_special_ids)
    clean = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        if token_id not in special and text.strip() and text.isascii() and text.isprintable():
            clean.append(token_id)
        if len(clean) == count:
            break
    return clean


def vocabulary(model: str) -> list[int]:
    """The ids a random prompt draws from: every one that is not special (bench/workload.py's)."""
    return Workload(model).vocabulary


def scrape(url: str) -> dict:
    return engine_series(metrics_text(url, timeout=30))


def engine_series(text: str) -> dict:
    """{short name: {rank: value}} of every engine series in a /metrics page, and "routed":
    {(rank, reason): value}."""
    figures: dict = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ENGINE_SERIES:
                figures[ENGINE_SERIES[sample.name]][int(sample.labels["engine"])] = sample.value
            elif sample.name == ROUTED:
                figures["routed"][int(sample.labels["engine"]), sample.labels["reason"]] = sample.value
    return figures


def difference(before: dict, after: dict) -> dict:
    """What a run added to each counter (an engine restarted meanwhile counts from zero)."""
    return {name: {key: value - before.get(name, {}).get(key, 0.0) if value >= before.get(name, {}).get(key, 0.0)
                   else value for key, value in series.items()}
            for name, series in after.items()}


RAW = ("outcomes", "before", "scrapes", "started")  # a summary's raw material, left out of its figures


def figures_of(summary: dict) -> dict:
    """A run's summary as JSON takes it: without its raw material."""
    return {key: value for key, value in summary.items() if key not in RAW}


def mean_load(reads: list[dict | None], series: tuple[str, ...] = ("running", "waiting")) -> dict[int, float]:
    """Each engine's mean requests (of `series`, as its heartbeats gave them) over the reads in which the
    fleet had any."""
    busy = [read for read in reads if read is not None
            and sum(read["running"].values()) + sum(read["waiting"].values()) > 0]
    ranks = sorted({rank for read in busy for rank in read["up"]})
    return {rank: statistics.fmean(sum(read[name].get(rank, 0) for name in series) for read in busy)
            for rank in ranks}


def simulated(outcomes: list[fleet_client.Outcome], started: float, time_scale: float) -> list[RequestResult]:
    """The outcomes on the simulated clock: seconds since the run started, / time_scale."""
    def sim(wall: float | None) -> float | None:
        return None if wall is None else (wall - started) / time_scale
    return [RequestResult(start=sim(o.start), prompt_tokens=o.prompt_tokens, output_tokens=o.output_tokens,
                          first_token_at=sim(o.first_token_at), end=sim(o.end), error=o.error)
            for o in outcomes]


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {key: float("nan") for key in ("mean", "p50", "p90", "p99")}
    array = np.asarray(values)
    return {"mean": float(array.mean()), **{f"p{q}": float(np.percentile(array, q)) for q in (50, 90, 99)}}


def engine_figures(delta: dict, engines: int) -> dict:
    """Hit rate, each engine's share of the requests and of the work, the routers' reasons, time kept."""
    def per(name: str) -> list[float]:
        return [delta.get(name, {}).get(rank, 0.0) for rank in range(engines)]

    queries, hits = per("queries"), per("hits")
    computed = [prompt - hit for prompt, hit in zip(per("prompt_tokens"), hits)]
    work = [prefill + decode for prefill, decode in zip(computed, per("generation_tokens"))]
    requests = [0.0] * engines
    reasons: dict[str, float] = defaultdict(float)
    for (rank, reason), count in delta.get("routed", {}).items():
        if rank < engines:
            requests[rank] += count
        reasons[reason] += count
    modelled, busy = per("modelled_s"), per("busy_s")
    kept = {rank: modelled[rank] / busy[rank] for rank in range(engines) if busy[rank] > 0}
    return {
        "prefix_cache_hit_rate": sum(hits) / sum(queries) if sum(queries) else None,
        "preemptions": sum(per("preemptions")),
        "requests_by_engine": requests,
        "work_by_engine": work,  # prompt tokens computed (not found in the prefix cache) + tokens generated
        "routing": dict(sorted(reasons.items())),
        "time_kept_by_engine": kept,
        "time_kept": sum(modelled) / sum(busy) if sum(busy) else None,
    }


def spread(values: list[float]) -> float | None:
    """The largest value over the mean: 1.0 is an even spread."""
    mean = statistics.fmean(values) if values else 0.0
    return max(values) / mean if mean else None


def summarize_run(outcomes: list[fleet_client.Outcome], started: float, before: dict, after: dict,
                  spec: FleetSpec, samples: list[dict] | None = None) -> dict:
    """One run's figures, every time in simulated seconds, with whether the host kept time."""
    results = simulated(outcomes, started, spec.time_scale)
    done = [r for r in results if r.ok]
    duration = (max(r.end for r in done) - min(r.start for r in done)) if done else float("nan")
    timings = summarize(results, duration)
    lag = [(o.start - o.planned_at) / spec.time_scale for o in outcomes]
    figures = engine_figures(difference(before, after), spec.engines)
    summary = {
        "fleet": spec.label, "time_scale": spec.time_scale, "profile": spec.profile,
        "requests": len(results), "completed": timings["completed"], "failed": timings["failed"],
        "errors": timings["errors"], "duration_s": duration,
        "output_throughput": timings["output_throughput"], "request_throughput": timings["request_throughput"],
        "ttft_s": percentiles([r.ttft for r in done if r.ttft is not None]),
        "ttft_s_by_tag": {tag: percentiles([r.ttft for r, o in zip(results, outcomes) if r.ok and o.tag == tag])
                          for tag in sorted({o.tag for o in outcomes})},
        "tpot_s": percentiles([r.tpot for r in done if r.tpot is not None]),
        **figures,
        "request_spread": spread(figures["requests_by_engine"]),
        "work_spread": spread(figures["work_by_engine"]),
        "client_lag_p99_s": float(np.percentile(lag, 99)) if lag else 0.0,
    }
    if samples is not None:
        summary["mean_load_by_engine"] = mean_load(samples)
        summary["mean_waiting_by_engine"] = mean_load(samples, ("waiting",))
        summary["load_spread"] = spread(list(summary["mean_load_by_engine"].values()))
    summary["host_kept_up"], summary["host_verdict"] = host_verdict(summary)
    return summary


def host_verdict(summary: dict) -> tuple[bool, str]:
    slow = {rank: kept for rank, kept in summary["time_kept_by_engine"].items() if kept < MIN_TIME_KEPT}
    lines = []
    if slow:
        worst = min(slow, key=slow.get)
        lines.append(f"{len(slow)} engines kept under {MIN_TIME_KEPT:.0%} of the modelled time "
                     f"(engine {worst}: {slow[worst]:.0%})")
    if summary["client_lag_p99_s"] > MAX_CLIENT_LAG_S:
        lines.append(f"the client sent requests late (p99 {summary['client_lag_p99_s']:.3f} s)")
    if not lines:
        kept = summary["time_kept"]
        return True, f"host kept time ({kept:.1%} of the modelled step time)" if kept else "host kept time"
    return False, "HOST DID NOT KEEP UP: " + "; ".join(lines) + ": raise time_scale, these figures measure the host"


def stop_on_sigterm() -> None:
    """A bench killed with SIGTERM unwinds, so each FleetRun stops its service rather than leave it running."""
    def unwind(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, unwind)


def wait_for_nginx(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not answers(url + "/health"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nginx does not answer on {url} after {timeout_s:g} s")
        time.sleep(0.5)


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: past TIME_WAIT
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class FleetRun:
    """A started fleet: send sessions to it and summarize what each batch of them measured."""

    def __init__(self, spec: FleetSpec, out: Path, port: int = 7380, startup_timeout_s: float = 600):
        self.spec = spec
        self.service = fleet_service(spec, out, port)
        self.startup_timeout_s = startup_timeout_s
        self.allowed = clean_token_ids(spec.model)

    def __enter__(self):
        ports = [self.service.port] + [self.service.server_config["frontend_base_port"] + index
                                       for index in range(self.spec.frontends)]
        if taken := [port for port in ports if not port_free(port)]:
            # Another service there would answer for this one (a run left behind, another bench).
            raise RuntimeError(f"ports {taken} are in use: stop what listens there, or give another --port")
        self.service.start()
        atexit.register(self.service.stop)  # however the bench ends, the service ends with it
        try:
            self.service.wait_ready(self.startup_timeout_s)
            # nginx starts once every frontend listens: a frontend answers first.
            self.model = asyncio.run(fleet_client.served_model(self.frontend_urls(1)[0]))
            wait_for_nginx(self.url)
        except BaseException:
            self.service.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.service.stop()
        atexit.unregister(self.service.stop)

    @property
    def url(self) -> str:
        return self.service.url

    def frontend_urls(self, count: int) -> list[str]:
        """The first `count` frontends' own addresses, past nginx."""
        base = self.service.server_config["frontend_base_port"]
        return [f"http://127.0.0.1:{base + index}" for index in range(count)]

    def empty_prefix_caches(self, timeout_s: float = 120.0) -> None:
        """Empty every engine's prefix cache (asking again while an engine still holds requests), then wait
        until no frontend's router holds any engine to have a cached block."""
        deadline = time.monotonic() + timeout_s
        self.service.reset_prefix_cache(timeout_s)
        for url in self.frontend_urls(self.spec.frontends):
            while any(scrape(url).get("reported_blocks", {}).values()):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} still holds engines to have cached blocks after {timeout_s:g} s")
                time.sleep(0.2)

    def send(self, sessions: list[fleet_client.Session], sample_load: bool = False,
             urls: list[str] | None = None, cut_at_s: float | None = None, scrape_at_s: tuple[float, ...] = ()) -> dict:
        """Send the sessions (through nginx, or to `urls` in turn), wait for every one to end (or cut them at
        `cut_at_s`), and summarize the run; with `scrape_at_s`, the summary's "scrapes" hold /metrics as read
        at those simulated times."""
        pick = make_oracle(self.spec, self.service) if self.spec.policy == ORACLE else None
        client = fleet_client.Client(urls or [self.url], self.model, self.spec.time_scale, self.allowed, pick)
        before = scrape(self.url)
        cpu_before, client_before = process_cpu.snapshot(self.service.processes()), os.times()
        started = time.perf_counter() + 0.5
        scrapes = Scrapes(self.url, [started + at * self.spec.time_scale for at in scrape_at_s])
        # Every SAMPLE_S wall seconds while the run goes on (the reads stop with it).
        sampler = Scrapes(self.url, itertools.count(started, SAMPLE_S) if sample_load else [])
        with scrapes, sampler:
            started, outcomes = asyncio.run(client.run(sessions, cut_at_s, started))
        time.sleep(SETTLE_S)
        summary = summarize_run(outcomes, started, before, scrape(self.url), self.spec,
                                sampler.taken if sample_load else None)
        tokens = sum(outcome.output_tokens for outcome in outcomes if outcome.ok)
        cpu = process_cpu.per_token_us(cpu_before, process_cpu.snapshot(self.service.processes()), tokens)
        client_after = os.times()
        cpu["client"] = round((client_after.user + client_after.system - client_before.user - client_before.system)
                              * 1e6 / max(tokens, 1), 1)
        summary["cpu_us_per_output_token"] = cpu  # wall CPU of this host, by role: what limits time_scale
        summary["before"], summary["scrapes"] = before, scrapes.taken
        summary["outcomes"], summary["started"] = outcomes, started
        return summary


class Scrapes:
    """/metrics read at given wall-clock times (perf_counter) on a thread of its own, until stopped."""

    def __init__(self, url: str, times):
        self.url, self.times = url, times
        self.taken: list[dict] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join()

    def run(self) -> None:
        for at in self.times:
            if self.stopped.wait(max(0.0, at - time.perf_counter())):
                return
            try:
                self.taken.append(scrape(self.url))
            except OSError:  # a read missed (None), not the run's end
                self.taken.append(None)
