"""The engine worker alone, driven over ZeroMQ as a frontend would drive it: no HTTP, no text.

    SERVER_CONFIG=... INFERENCE_CONFIG=... .venv/bin/python -m bench.zmq_bench --start-engine \
        --concurrency 256 --requests 1024 --input-len 128 --output-len 1024

It says HELLO until the engine's WELCOME arrives on its topic, then keeps `concurrency` ADDs of
random prompt token ids in flight (a new one as each finishes) and reads the PUB stream. The load
is the one bench/engine_loop_bench.py puts on vLLM's own LLMEngine loop, so the two compare.
"""
import argparse
import collections
import os
import subprocess
import sys
import time
import uuid

import zmq

from bench.request_timings import RequestResult, report, save, summarize
from bench.workload import Workload
from common.config import ROOT, load_server
from common.messages import BROADCAST_TOPIC, Add, Hello, StepOutput, Welcome, encode, output_decoder, topic_for
from common.sockets import make_socket


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start-engine", action="store_true",
                        help="start `python -m engine_worker` (SERVER_CONFIG, INFERENCE_CONFIG) and stop it after")
    parser.add_argument("--engine-module", default="engine_worker",
                        help="what --start-engine runs (bench.experiments.engine_probe: the worker with timers)")
    parser.add_argument("--concurrency", "-c", type=int, default=32)
    parser.add_argument("--requests", "-n", type=int, default=128)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=0, help="requests run and discarded before measuring")
    parser.add_argument("--startup-timeout", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", help="write the configuration and summary to this JSON file")
    return parser.parse_args(argv)


def sampling(output_len: int) -> dict:
    return {"max_tokens": output_len, "ignore_eos": True}


class EngineDriver:
    """One pretend frontend: a PUSH to the engine, a SUB on its own topic."""

    def __init__(self):
        server = load_server()
        self.frontend_id = f"zmq-bench-{uuid.uuid4().hex[:8]}"
        context = zmq.Context.instance()
        self.push = make_socket(context, zmq.PUSH, server.request_address, bind=False, link=server.engine)
        self.sub = make_socket(context, zmq.SUB, server.output_address, bind=False, link=server.engine)
        self.sub.setsockopt(zmq.SUBSCRIBE, topic_for(self.frontend_id))
        self.sub.setsockopt(zmq.SUBSCRIBE, BROADCAST_TOPIC)
        self.seq = 0
        self.messages = self.bytes = 0
        self.kinds: collections.Counter[str] = collections.Counter()  # messages by type

    def send(self, message) -> bool:
        try:
            self.push.send(encode(message), zmq.NOBLOCK)
            return True
        except zmq.Again:  # the engine is not there yet
            return False

    def receive(self, timeout_ms: int):
        if not self.sub.poll(timeout_ms):
            return None
        _, frame = self.sub.recv_multipart()
        self.messages += 1
        self.bytes += len(frame)
        message = output_decoder.decode(frame)
        self.kinds[type(message).__name__] += 1
        return message

    def handshake(self, timeout_s: float) -> Welcome:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.send(Hello(self.frontend_id))
            message = self.receive(200)
            if isinstance(message, Welcome) and message.frontend_id == self.frontend_id:
                self.seq = 0
                return message
        raise SystemExit(f"no WELCOME from the engine within {timeout_s:g} s")

    def next_step(self) -> StepOutput:
        while True:
            message = self.receive(60_000)
            if message is None:
                raise SystemExit("the engine sent nothing for 60 s")
            if isinstance(message, StepOutput):
                if message.seq != self.seq + 1:
                    raise SystemExit(f"outputs lost: expected message {self.seq + 1}, got {message.seq}")
                self.seq = message.seq
                return message


def run_load(driver: EngineDriver, prompts: list[list[int]], concurrency: int, output_len: int):
    """Keep `concurrency` requests in flight until every prompt has run; return results and duration."""
    results: dict[str, RequestResult] = {}
    pending = iter(enumerate(prompts))

    def add_next() -> None:
        item = next(pending, None)
        if item is None:
            return
        index, prompt = item
        request_id = f"{driver.frontend_id}-{index}"
        results[request_id] = RequestResult(start=time.perf_counter(), prompt_tokens=len(prompt))
        if not driver.send(Add(request_id, driver.frontend_id, prompt, sampling(output_len))):
            raise SystemExit("the engine stopped taking requests")

    start = time.perf_counter()
    for _ in range(min(concurrency, len(prompts))):
        add_next()
    finished = 0
    while finished < len(prompts):
        step = driver.next_step()
        now = time.perf_counter()
        for delta in step.deltas:
            result = results[delta.request_id]
            if delta.token_ids:
                result.record_chunk(now, len(delta.token_ids))
            if delta.finish_reason is not None:
                result.end = now
                if delta.finish_reason not in ("length", "stop"):
                    result.error = f"{delta.finish_reason}: {delta.error}"
                finished += 1
                add_next()
    return list(results.values()), time.perf_counter() - start


def start_engine(module: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env=os.environ.copy())


def main(argv=None) -> dict:
    args = parse_args(argv)
    engine = start_engine(args.engine_module) if args.start_engine else None
    try:
        driver = EngineDriver()
        welcome = driver.handshake(args.startup_timeout)
        workload = Workload(welcome.tokenizer, args.seed)
        if args.warmup:
            run_load(driver, [workload.token_ids(args.input_len) for _ in range(args.warmup)],
                     args.concurrency, args.output_len)
        prompts = [workload.token_ids(args.input_len) for _ in range(args.requests)]
        driver.messages = driver.bytes = 0
        driver.kinds.clear()
        results, duration = run_load(driver, prompts, args.concurrency, args.output_len)
    finally:
        if engine is not None:
            engine.terminate()
            engine.wait(60)
    summary = summarize(results, duration)
    summary["pub_messages"], summary["pub_bytes"] = driver.messages, driver.bytes
    print(report(f"engine worker over ZeroMQ c={args.concurrency} n={args.requests} "
                 f"in={args.input_len} out={args.output_len}", summary))
    print(f"PUB stream: {driver.messages} messages, {driver.bytes / 1e6:.1f} MB, "
          f"{driver.bytes / max(driver.messages, 1):.0f} B each; "
          + ", ".join(f"{count} {kind}" for kind, count in driver.kinds.most_common()))
    summary["pub_messages_by_type"] = dict(driver.kinds)
    if args.save:
        save(args.save, vars(args), summary)
    return summary


if __name__ == "__main__":
    main()
