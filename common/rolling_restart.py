"""`python -m common.service restart-engines` (`make restart-engines`): the engine workers of a running
service, drained and started again one at a time through its supervisord, each serving again before the
next goes. A drained engine's streams move to the others (its Goodbye), so clients see no error while
another engine of its pool is up. A changed inference.yml is applied where only the engines read it
(ENGINE_ONLY; engine_args but data_parallel_size and served_model_name). What the frontends read too
needs the whole service restarted, and is refused before anything stops."""
import json
import shutil
import sys
import time
import urllib.error
import urllib.request
import xmlrpc.client
from pathlib import Path

from common.config import InferenceConfig, PoolConfig, ServerConfig, config_file, load_inference
from common.preflight import StartRefused, check_inference

# Keys only the engine workers read: a rolling restart applies a change to them.
ENGINE_ONLY = ("engine_args", "cuda_visible_devices", "cpu_kv_cache_gib", "engine_cpus", "simulator", "resume_grammars")
# Engine arguments the frontends read as well.
FRONTEND_ENGINE_ARGS = ("data_parallel_size", "served_model_name")
POLL_S = 1.0


def served_inference(run_dir: Path) -> Path:
    """The inference.yml the running service started with (copied there by `render`)."""
    return run_dir / "inference.yml"


def keep_served_inference(run_dir: Path) -> None:
    shutil.copyfile(config_file("INFERENCE_CONFIG", "inference.yml"), served_inference(run_dir))


def needs_full_restart(served: InferenceConfig, changed: InferenceConfig) -> list[str]:
    """The keys whose change the frontends would have to read, as inference.yml names them."""
    if len(served.pools) != len(changed.pools):
        return ["models"]
    keys = []
    several = len(served.pools) > 1
    for index, (old, new) in enumerate(zip(served.pools, changed.pools)):
        where = f"models[{index}]." if several else ""
        keys += [where + name for name in PoolConfig.__struct_fields__
                 if name not in ENGINE_ONLY and getattr(old, name) != getattr(new, name)]
        keys += [f"{where}engine_args.{name}" for name in FRONTEND_ENGINE_ARGS
                 if old.engine_args.get(name) != new.engine_args.get(name)]
    return keys


def engine_views(server: ServerConfig) -> list[dict]:
    """Each local frontend's /health `engines`, or [] for a frontend that does not answer."""
    views = []
    for index in range(server.frontends):
        try:
            url = f"http://127.0.0.1:{server.frontend_base_port + index}/health"
            with urllib.request.urlopen(url, timeout=5) as response:
                views.append(json.loads(response.read())["engines"])
        except urllib.error.HTTPError as error:  # 503: no engine up; the body still lists them
            views.append(json.loads(error.read() or b"{}").get("engines", []))
        except (OSError, ValueError):
            views.append([])
    return views


def entry(view: list[dict], model: str, rank: int) -> dict:
    return next((engine for engine in view if engine["model"] == model and engine["rank"] == rank), {})


def serving(view: list[dict], model: str, rank: int, not_id: str | None = None) -> bool:
    engine = entry(view, model, rank)
    return bool(engine.get("up") and not engine.get("stalled") and engine.get("engine_id") not in (None, not_id))


class RollingRestart:
    """The local engine workers of `inference`, restarted in turn through supervisord (`control`)."""

    def __init__(self, server: ServerConfig, inference: InferenceConfig, control, timeout_s: float):
        self.server, self.control, self.timeout_s = server, control, timeout_s
        # (program, served model name, rank) of every local engine worker, pool by pool
        self.engines = [(inference.program(pool, rank), config.served_name, rank)
                        for pool, config in enumerate(inference.pools) for rank in range(config.data_parallel_size)]

    def refusal(self) -> str | None:
        """Why nothing may stop, if so: an engine of the service not serving now, or one missing."""
        running = {info["name"] for info in self.control.getAllProcessInfo() if info["name"].startswith("engine-")}
        if running != {program for program, _, _ in self.engines}:
            return (f"the service runs {', '.join(sorted(running))}, inference.yml names "
                    f"{', '.join(program for program, _, _ in self.engines)}: restart the whole service")
        views = engine_views(self.server)
        for program, model, rank in self.engines:
            if not all(serving(view, model, rank) for view in views):
                return f"{program} is not serving now (its /health entry: {entry(views[0], model, rank)}): " \
                       "restarting it or another one could leave no engine for its clients"
        return None

    def run(self) -> int:
        for program, model, rank in self.engines:
            try:
                error = self.restart(program, model, rank)
            except (OSError, xmlrpc.client.Error) as failure:
                error = f"{program}: supervisord did not do it ({failure})"
            if error:
                print(f"error: {error}; the engines after it were not restarted", file=sys.stderr, flush=True)
                return 1
        print(f"restarted {len(self.engines)} engines", flush=True)
        return 0

    def restart(self, program: str, model: str, rank: int) -> str | None:
        view = engine_views(self.server)[0]
        old_id = entry(view, model, rank).get("engine_id")
        if sum(engine["model"] == model for engine in view) < 2:
            print(f"{program}: the only engine of {model}: its requests fail while it restarts", flush=True)
        print(f"{program} ({old_id}): draining", flush=True)
        began = time.monotonic()
        self.control.stopProcess(program, True)  # SIGTERM: its Goodbye moves its streams; it exits
        self.control.startProcess(program, False)
        print(f"{program}: stopped after {time.monotonic() - began:.0f} s, starting", flush=True)
        while time.monotonic() - began < self.timeout_s:
            time.sleep(POLL_S)
            state = self.control.getProcessInfo(program)
            if state["statename"] in ("FATAL", "STOPPED", "EXITED"):
                return f"{program} did not start again ({state['statename']}: {state['spawnerr'] or state['description']})"
            views = engine_views(self.server)
            if all(serving(view, model, rank, not_id=old_id) for view in views):
                new_id = entry(views[0], model, rank)["engine_id"]
                print(f"{program} ({new_id}): serving after {time.monotonic() - began:.0f} s", flush=True)
                return None
        return f"{program} was not serving {self.timeout_s:g} s after its restart"


def restart_engines(server: ServerConfig, control, timeout_s: float) -> int:
    run_dir = server.path(server.run_dir)
    if not server.frontends:
        print("error: this host runs no frontend, whose /health says when a restarted engine serves again: "
              "restart each engine with `supervisorctl restart`, waiting until the frontends' /health lists it "
              "up before the next", file=sys.stderr)
        return 1
    try:
        inference = load_inference()
        check_inference(server, inference)
        served = load_inference(served_inference(run_dir))
        if keys := needs_full_restart(served, inference):
            raise StartRefused(f"inference.yml changed {', '.join(keys)}, which the frontends read too: "
                               "restart the whole service (make stop, make serve)")
        restart = RollingRestart(server, inference, control, timeout_s)
        if reason := restart.refusal():
            raise StartRefused(reason)
    except (StartRefused, SystemExit, xmlrpc.client.Error, OSError) as refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 1
    code = restart.run()
    if code == 0:
        keep_served_inference(run_dir)
    return code
