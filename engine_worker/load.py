"""The engine's load: as the heartbeat reports it (scheduler figures from vLLM, GPUs from NVML, the
step loop's progress, whether it is out of routing), and as each step's LoadReport gives it to the
routers."""
import logging
import time

import msgspec

from common.messages import EngineLoad, GpuLoad, LoadReport, TenantUse

log = logging.getLogger(__name__)


class LoadTracker:
    """Holds the latest figures; the step loop writes them, the heartbeat reads them."""

    def __init__(self, monitor_gpus: bool = True):
        self.load = EngineLoad()
        self.gpus = GpuMonitor(monitor_gpus)
        self.usable_blocks = 0  # KV cache blocks a request can hold
        self.block_size = 0
        self.reported: tuple | None = None  # the figures of the last LoadReport
        self.progress_at = time.monotonic()  # when the step loop last finished a pass (a step, or idle)
        self.offline = False  # an operator took the engine out of routing

    def progressed(self) -> None:
        self.progress_at = time.monotonic()

    def since_progress(self) -> float:
        """Seconds since the step loop last finished a pass: long only while a step (or what the loop
        does between steps) hangs, since an idle loop passes every heartbeat interval."""
        return time.monotonic() - self.progress_at

    def set_kv_cache(self, num_blocks: int, block_size: int) -> None:
        # vLLM keeps one block as its null block, never used nor free (BlockPool.get_usage).
        self.usable_blocks, self.block_size = max(num_blocks - 1, 0), block_size

    def step_report(self, engine_id: str, taken: dict[str, int], prefill_tokens: int,
                    usage: "TenantUsage", held: int = 0, frontends: int = 0) -> LoadReport | None:
        """The load after a step, or None when nothing in it changed since the last report."""
        free = round((1.0 - self.load.kv_cache_usage) * self.usable_blocks)
        figures = (self.load.waiting, self.load.running, prefill_tokens, (self.usable_blocks - free) * self.block_size,
                   free)
        minute, used = usage.now()
        if (figures, taken, minute, used, held, frontends) == self.reported:
            return None
        self.reported = (figures, dict(taken), minute, used, held, frontends)
        return LoadReport(engine_id, 0, *figures, dict(taken), usage_minute=minute, usage=used, held=held,
                          frontends=frontends)

    def stat_logger_factory(self, base: type | None = None):
        """The stat logger class vLLM's engine makes and calls with its scheduler's figures, derived
        from vLLM's StatLoggerBase unless `base` is given (a simulated engine, without vLLM, gives object)."""
        if base is None:
            from vllm.v1.metrics.loggers import StatLoggerBase as base

        tracker = self

        class SchedulerStatsLogger(base):
            def __init__(self, vllm_config, engine_index=0):
                pass

            def record(self, scheduler_stats, iteration_stats, *args, **kwargs):
                if scheduler_stats is not None:
                    tracker.load.running = scheduler_stats.num_running_reqs
                    tracker.load.waiting = scheduler_stats.num_waiting_reqs
                    tracker.load.kv_cache_usage = scheduler_stats.kv_cache_usage
                    tracker.record_prefix_cache(getattr(scheduler_stats, "prefix_cache_stats", None))
                    tracker.record_time_kept(getattr(scheduler_stats, "time_kept", None))
                if iteration_stats is not None:
                    tracker.load.preemptions_total += getattr(iteration_stats, "num_preempted_reqs", 0)

            def log_engine_initialized(self):
                pass

        return SchedulerStatsLogger

    def snapshot(self) -> EngineLoad:
        return msgspec.structs.replace(self.load, gpus=self.gpus.read())

    def record_prefix_cache(self, stats) -> None:
        # Each report holds the lookups since the previous one.
        if stats is not None:
            self.load.prefix_cache_queries_total += stats.queries
            self.load.prefix_cache_hits_total += stats.hits

    def record_time_kept(self, time_kept) -> None:
        # A simulated engine's totals since it started (vLLM's stats have none).
        if time_kept is not None:
            self.load.simulated_modelled_s_total = time_kept.modelled_s
            self.load.simulated_busy_s_total = time_kept.busy_s

    def record_idle(self) -> None:
        # vLLM reports its scheduler's figures only from a step; with nothing left there is no
        # step to report that the last requests are gone.
        self.load.running = self.load.waiting = 0
        self.load.kv_cache_usage = 0.0


class TenantUsage:
    """What each tenant used on this engine in the wall clock's current minute (frontend/quotas.py)."""

    def __init__(self):
        self.minute = 0
        self.used: dict[str, TenantUse] = {}

    def count(self, tenant: str, requests: int = 0, prompt_tokens: int = 0, cached_tokens: int = 0,
              output_tokens: int = 0) -> None:
        self.turn()
        use = self.used.setdefault(tenant, TenantUse())
        use.requests += requests
        use.prompt_tokens += prompt_tokens
        use.cached_tokens += cached_tokens
        use.output_tokens += output_tokens

    def now(self) -> tuple[int, dict[str, TenantUse]]:
        """The minute and a copy of its table, to send."""
        self.turn()
        return self.minute, {tenant: msgspec.structs.replace(use) for tenant, use in self.used.items()}

    def turn(self) -> None:
        minute = int(time.time() // 60)
        if minute != self.minute:
            self.minute, self.used = minute, {}


class PrefillBacklog:
    """Prompt tokens the engine still has to compute: each request's, net of what the prefix cache held
    when the engine took it, from then until its first token or its end. vLLM's progress inside a
    chunked prefill is not seen here: a request counts whole until its first token."""

    def __init__(self):
        self.requests: dict[str, int] = {}
        self.tokens = 0

    def add(self, request_id: str, tokens: int) -> None:
        self.requests[request_id] = tokens
        self.tokens += tokens

    def done(self, request_id: str) -> None:
        self.tokens -= self.requests.pop(request_id, 0)

    def clear(self) -> None:
        self.requests.clear()
        self.tokens = 0

    def __len__(self) -> int:
        return len(self.requests)


class GpuMonitor:
    """Reads the GPUs this process may use; on a machine without one, or when told not to (a simulated
    engine uses none), it reads nothing."""

    def __init__(self, enabled: bool = True):
        self.handles = []
        if not enabled:
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception as error:  # no driver, no library, no GPU: all mean "no GPU"
            log.info("no GPU to monitor (%s)", error)

    def read(self) -> list[GpuLoad]:
        """The GPUs' figures; after an NVML error (some devices, e.g. MIG, refuse some queries)
        none, for good, so the error is logged once and the heartbeat goes on without GPU figures."""
        try:
            return self.read_nvml()
        except Exception as error:
            log.warning("stopped reading GPU figures: %r", error)
            self.handles = []
            return []

    def read_nvml(self) -> list[GpuLoad]:
        gpus = []
        for index, handle in enumerate(self.handles):
            nvml = self.nvml
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                GpuLoad(
                    index=index,
                    name=str(nvml.nvmlDeviceGetName(handle)),
                    utilization_pct=float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                    memory_used_bytes=int(memory.used),
                    memory_total_bytes=int(memory.total),
                    power_watts=nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
                )
            )
        return gpus
