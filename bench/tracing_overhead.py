"""What tracing costs the engine worker's step thread: the step loop (engine_worker/step_loop.py) over
a simulated engine whose steps take no modelled time (so the loop's own work is all there is), with
`concurrency` requests kept in flight through the real admission and output publisher, per step:
tracing off; on with untraced requests; on with every request traced (its spans exported over
OTLP/HTTP to a local sink that answers 200).

    .venv/bin/python -m bench.tracing_overhead --concurrency 64 --output-len 32 --steps 3000
"""
import argparse
import itertools
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import msgspec
import zmq

from common import default_model
from common.config import EngineLinkConfig, InferenceConfig, TracingConfig
from common.messages import Add, TraceContext
from common.tracing import build_provider
from engine_worker.__main__ import start_simulated
from engine_worker.admission import admitter
from engine_worker.io_threads import OutputPublisher
from engine_worker.load import LoadTracker
from engine_worker.step_loop import StepLoop
from engine_worker.tracing import EngineTracing

MODES = ("off", "on, untraced requests", "on, every request traced")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", "-c", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3, help="each mode this often, interleaved")
    return parser.parse_args(argv)


def start_sink() -> str:
    class Sink(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/v1/traces"


def step_times(mode: str, args, endpoint: str, run_dir: Path) -> list[float]:
    """Seconds of each loop turn (take what arrived, step, report load), as StepLoop.run does them."""
    inference = msgspec.convert({"engine_backend": "simulated", "simulator": {"time_scale": 1e-9}}, InferenceConfig)
    model = str(default_model.ensure(Path(__file__).resolve().parent.parent / ".data"))
    load = LoadTracker(monitor_gpus=False)
    engine, adapters, requests = start_simulated(model, inference, 0, load, False, run_dir)
    provider = build_provider(TracingConfig(otlp_endpoint=endpoint), "engine_worker", mode) if mode != MODES[0] else None
    tracing = EngineTracing(provider, "bench") if provider is not None else None
    context = zmq.Context()
    publisher = OutputPublisher(context, f"ipc://{run_dir}/{len(mode)}-outputs", EngineLinkConfig(), "bench", load)
    loop = StepLoop(engine, "bench", "model", model, publisher, load, 0.01, adapters, tracing=tracing)
    admit = admitter(loop.inbox, requests, None, tracing)
    ids = itertools.count()
    traced = mode == MODES[2]

    def add() -> None:
        trace = TraceContext(next(ids).to_bytes(16, "big"), b"\x01" * 8) if traced else None
        admit(time.time(), Add(f"r{next(ids)}", "bench~0", [5] * 64, {"max_tokens": args.output_len,
                                                                       "ignore_eos": True}, trace=trace))

    for _ in range(args.concurrency):
        add()
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        loop.take_requests(block=False)
        loop.step()
        loop.report_load()
        times.append(time.perf_counter() - started)
        for _ in range(args.concurrency - len(loop.owners) - loop.inbox.qsize()):
            add()
    if tracing is not None:
        tracing.shutdown()
    publisher.close()
    context.destroy(linger=0)
    return times


def main(argv=None) -> None:
    args = parse_args(argv)
    endpoint = start_sink()
    per_mode: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="trace-bench-", dir="/tmp") as run_dir:
        for _ in range(args.rounds):
            for mode in MODES:
                per_mode[mode] += step_times(mode, args, endpoint, Path(run_dir))[args.steps // 10:]  # warm
    off = statistics.median(per_mode[MODES[0]])
    print(f"{args.concurrency} requests in flight, {args.output_len} output tokens each, {args.steps} steps x "
          f"{args.rounds} rounds per mode")
    for mode, times in per_mode.items():
        median, mean = statistics.median(times), statistics.fmean(times)
        print(f"  tracing {mode:26} median {median * 1e6:7.1f} us/step  mean {mean * 1e6:7.1f} us/step  "
              f"({median / off:.3f}x off)")


if __name__ == "__main__":
    main()
