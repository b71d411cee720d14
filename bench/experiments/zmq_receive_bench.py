"""CPU per message of receiving ZeroMQ messages on an asyncio event loop, one message at a time (each
needs a wake-up, as at concurrency 1): pyzmq's asyncio socket awaited for each message, against a
plain socket drained from `loop.add_reader` (what frontend/engine_client.py does).

    .venv/bin/python -m bench.experiments.zmq_receive_bench [--messages 3000] [--gap-ms 2] [--rounds 3]

Counts the receiving thread's CPU time (RUSAGE_THREAD), not the publisher's.
"""
import argparse
import asyncio
import resource
import statistics
import tempfile
import threading
import time

import uvloop
import zmq
import zmq.asyncio


def thread_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


def publish(address: str, ready: threading.Event, messages: int, gap_s: float) -> None:
    socket = zmq.Context.instance().socket(zmq.PUB)
    socket.bind(address)
    ready.wait()
    time.sleep(0.3)  # the subscription reaches the publisher
    for _ in range(messages + 1):
        socket.send_multipart([b"t|", b"x" * 60])
        time.sleep(gap_s)
    socket.close()


async def awaited(address: str, ready: threading.Event, messages: int) -> float:
    socket = zmq.asyncio.Context.instance().socket(zmq.SUB)
    socket.connect(address)
    socket.setsockopt(zmq.SUBSCRIBE, b"")
    ready.set()
    await socket.recv_multipart()
    start = thread_cpu()
    for _ in range(messages - 1):
        await socket.recv_multipart()
    socket.close()
    return thread_cpu() - start


async def drained(address: str, ready: threading.Event, messages: int) -> float:
    loop = asyncio.get_running_loop()
    socket = zmq.Context.instance().socket(zmq.SUB)
    socket.connect(address)
    socket.setsockopt(zmq.SUBSCRIBE, b"")
    done, seen, start = loop.create_future(), [0], [0.0]

    def readable():
        while socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            socket.recv_multipart(zmq.NOBLOCK)
            seen[0] += 1
            if seen[0] == 1:
                start[0] = thread_cpu()
            if seen[0] == messages and not done.done():
                done.set_result(thread_cpu() - start[0])

    loop.add_reader(socket.getsockopt(zmq.FD), readable)
    ready.set()
    readable()
    used = await done
    loop.remove_reader(socket.getsockopt(zmq.FD))
    socket.close()
    return used


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--gap-ms", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = {"asyncio socket, awaited": [], "plain socket, add_reader": []}
    with tempfile.TemporaryDirectory() as directory:
        for round_ in range(args.rounds):
            for name, receive in zip(results, (awaited, drained)):
                address, ready = f"ipc://{directory}/{round_}-{receive.__name__}", threading.Event()
                sender = threading.Thread(target=publish, args=(address, ready, args.messages, args.gap_ms / 1000))
                sender.start()
                used = uvloop.run(receive(address, ready, args.messages))
                sender.join()
                results[name].append(used / (args.messages - 1) * 1e6)
    for name, values in results.items():
        print(f"{name}: {statistics.median(values):.1f} µs CPU per message "
              f"(median of {len(values)}: {', '.join(f'{v:.1f}' for v in values)})")


if __name__ == "__main__":
    main()
