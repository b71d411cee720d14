"""What the load view costs: CPU per LoadReport in the engine workers and in each frontend, at a given
number of engines, frontends and step time, on real ZeroMQ sockets with the real publisher
(engine_worker/io_threads.py, engine_worker/load.py) and the real links (frontend/engine_client.py).

    .venv/bin/python -m bench.experiments.load_report_cost --engines 64 --frontends 4 --step-ms 15

One process plays every engine worker's output side: an OutputPublisher each, and a thread that after
each engine's step (every --step-ms, the engines' steps spread evenly over that time) builds its report
with LoadTracker.step_report (its figures change every step, as under load) and queues it, as the step
loop does. Each frontend process holds an
EngineLink per engine on one event loop. After a warm-up (the engines welcome each frontend), a
baseline phase (heartbeats only) and a phase with reports run for --seconds each; every process's CPU
time (RUSAGE_SELF: its threads and ZeroMQ's) over the second phase, less the first, divided by the
reports sent (engines) or received (frontends), is the cost of one report there.
"""
import argparse
import asyncio
import json
import multiprocessing
import resource
import tempfile
import threading
import time

import zmq

from common.config import EngineLinkConfig
from common.messages import Welcome
from engine_worker.io_threads import OutputPublisher
from engine_worker.load import LoadTracker, TenantUsage

WARM_UP_S = 3.0
LINK = EngineLinkConfig(heartbeat_interval_s=0.5, heartbeat_timeout_s=3600)


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def engines(directory: str, count: int, frontends: list[str], step_s: float, phases: list[float], out) -> None:
    context = zmq.Context()
    trackers = [LoadTracker() for _ in range(count)]
    publishers = [OutputPublisher(context, f"ipc://{directory}/out-{rank}", LINK, f"engine-{rank}", tracker)
                  for rank, tracker in enumerate(trackers)]
    for tracker in trackers:
        tracker.set_kv_cache(num_blocks=4096, block_size=16)
    while time.time() < phases[0]:  # welcome each frontend until they listen
        for rank, publisher in enumerate(publishers):
            for frontend_id in frontends:
                publisher.send(frontend_id, Welcome(f"engine-{rank}", frontend_id, "m", "t", 8192))
        time.sleep(0.2)
    until(phases[1])
    before = cpu()
    until(phases[2])
    baseline = cpu() - before
    sent, step, taken = 0, 0, {frontend_id: 0 for frontend_id in frontends}
    before = cpu()
    while time.time() < phases[3]:
        step += 1
        for rank, (tracker, publisher) in enumerate(zip(trackers, publishers)):
            # Engines step out of step with each other: engine i's reports come i/count of a step later.
            until(phases[2] + (step - 1 + rank / count) * step_s)
            tracker.load.running, tracker.load.waiting = 200 + step % 7, step % 3
            tracker.load.kv_cache_usage = (step % 100) / 100
            taken[frontends[step % len(frontends)]] += 1
            report = tracker.step_report(f"engine-{rank}", taken, 1000 + step % 13, TenantUsage())
            if report is not None:
                publisher.send(None, report)
                sent += 1
    used = cpu() - before
    for publisher in publishers:
        publisher.close()
    out.put({"role": "engines", "reports": sent, "cpu_s": used, "baseline_cpu_s": baseline})


def frontend(directory: str, count: int, frontend_id: str, phases: list[float], out) -> None:
    import uvloop

    from frontend.engine_client import EngineLink

    async def run() -> dict:
        links = [EngineLink(rank, f"ipc://{directory}/in-{rank}", f"ipc://{directory}/out-{rank}", LINK,
                            frontend_id) for rank in range(count)]
        for link in links:
            link.start()
        await asyncio.sleep(phases[1] - time.time())
        welcomed = sum(link.ready for link in links)
        before = cpu()
        await asyncio.sleep(phases[2] - time.time())
        baseline = cpu() - before
        seqs = [link.load_view.report.seq for link in links]
        before = cpu()
        await asyncio.sleep(phases[3] - time.time())
        used = cpu() - before
        received = sum(link.load_view.report.seq - seq for link, seq in zip(links, seqs))
        for link in links:
            await link.stop()
        return {"role": "frontend", "welcomed": welcomed, "reports": received, "cpu_s": used,
                "baseline_cpu_s": baseline}

    out.put(uvloop.run(run()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", type=int, default=64)
    parser.add_argument("--frontends", type=int, default=4)
    parser.add_argument("--step-ms", type=float, default=15.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    start = time.time() + 1.0
    phases = [start + WARM_UP_S, start + WARM_UP_S + 0.5, start + WARM_UP_S + 0.5 + args.seconds,
              start + WARM_UP_S + 0.5 + 2 * args.seconds]
    frontend_ids = [f"bench-{index}~x" for index in range(args.frontends)]
    out = multiprocessing.Queue()
    with tempfile.TemporaryDirectory() as directory:
        processes = [multiprocessing.Process(target=engines, args=(directory, args.engines, frontend_ids,
                                                                   args.step_ms / 1000, phases, out))]
        processes += [multiprocessing.Process(target=frontend, args=(directory, args.engines, frontend_id, phases, out))
                      for frontend_id in frontend_ids]
        for process in processes:
            process.start()
        results = [out.get(timeout=phases[3] - time.time() + 60) for _ in processes]
        for process in processes:
            process.join()
    for result in results:
        extra = result["cpu_s"] - result["baseline_cpu_s"]
        result["us_per_report"] = round(extra / max(result["reports"], 1) * 1e6, 1)
        result["reports_per_s"] = round(result["reports"] / args.seconds)
        result["cores"] = round(extra / args.seconds, 3)
    print(json.dumps({"engines": args.engines, "frontends": args.frontends, "step_ms": args.step_ms,
                      "seconds": args.seconds, "results": results}, indent=1))


if __name__ == "__main__":
    main()
