"""200 clients that vanish at random points: afterwards the engine holds nothing, no frontend
holds per-request state, and the frontends' memory is back near where it started."""
import asyncio
import random
from pathlib import Path

import httpx

from tests.conftest import engine_idle, health, wait_for

BODY = {"max_tokens": 2000, "ignore_eos": True}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def vanishing_client(client: httpx.AsyncClient, rng: random.Random, i: int) -> None:
    body = {**BODY, "prompt": f"storm {i} " * rng.randrange(1, 50)}
    how = rng.choice(["mid-stream", "before-first-byte", "non-streaming"])
    if how == "mid-stream":
        chunks_to_read = rng.randrange(1, 30)
        async with client.stream("POST", "/generate?streaming=true", json=body) as response:
            async for _ in response.aiter_text():
                chunks_to_read -= 1
                if chunks_to_read == 0:
                    return
    else:
        url = "/generate?streaming=true" if how == "before-first-byte" else "/generate"
        try:
            await asyncio.wait_for(client.post(url, json=body), timeout=rng.uniform(0.01, 1.5))
        except (asyncio.TimeoutError, httpx.HTTPError):
            pass


async def storm(url: str, count: int, concurrency: int) -> None:
    rng = random.Random(1234)
    gate = asyncio.Semaphore(concurrency)

    async def one(i):
        async with gate:
            # Each client its own connection, so that leaving closes it as a vanished client's would.
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                await vanishing_client(client, rng, i)

    await asyncio.gather(*(one(i) for i in range(count)))


def frontends_in_flight(service) -> list[int]:
    return [health(service.frontend_url(i)).json()["in_flight"] for i in range(2)]


def test_disconnect_storm_leaves_nothing_behind(service):
    pids = [service.pid(f"frontend:frontend-{i}") for i in range(2)]
    asyncio.run(storm(service.url, 20, 10))  # warm up what every first request allocates
    wait_for(lambda: engine_idle(service.url), 30, what="the engine to be idle after warm-up")
    before = [rss_bytes(pid) for pid in pids]

    asyncio.run(storm(service.url, 200, 40))

    wait_for(lambda: engine_idle(service.url), 30, what="the engine to hold no unfinished request")
    wait_for(lambda: frontends_in_flight(service) == [0, 0], 30, what="the frontends to hold no request state")
    after = [rss_bytes(pid) for pid in pids]
    for start, end in zip(before, after):
        assert end - start < 40 * 2**20, f"frontend memory grew by {(end - start) / 2**20:.1f} MiB"
    answer = httpx.post(service.url + "/generate", json={"prompt": "calm", "max_tokens": 5, "ignore_eos": True},
                        headers={"accept": "application/json"}, timeout=60)
    assert answer.json()["usage"]["completion_tokens"] == 5
