"""Soak: a bounded run of mixed streaming and non-streaming requests with random disconnects
against a running service; at the end checks that nothing leaked and prints a summary.

    .venv/bin/python bench/soak.py --url http://127.0.0.1:7080 --minutes 10 --concurrency 16
"""
import argparse
import asyncio
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
from tqdm import tqdm


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def frontend_pids(supervisor_conf: str | None) -> list[int]:
    if not supervisor_conf:
        return []
    out = subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", supervisor_conf, "status"],
                         capture_output=True, text=True, check=False).stdout  # non-zero when one is down
    # "frontend:frontend-0   RUNNING   pid 20150, uptime 0:11:51"
    return [int(line.split("pid ")[1].split(",")[0]) for line in out.splitlines()
            if line.startswith("frontend:") and "pid " in line]


async def one_request(client: httpx.AsyncClient, rng: random.Random, outcomes: Counter) -> None:
    body = {"prompt": "soak " * rng.randrange(1, 200), "max_tokens": rng.randrange(1, 300), "ignore_eos": True}
    kind = rng.choice(["stream", "stream", "plain", "plain", "vanish-stream", "vanish-plain"])
    try:
        if kind.endswith("stream"):
            chunks_before_leaving = rng.randrange(1, 20) if kind.startswith("vanish") else None
            async with client.stream("POST", "/generate?streaming=true", json=body) as response:
                if response.status_code != 200:
                    outcomes[f"{kind} {response.status_code}"] += 1
                    return
                text = ""
                async for chunk in response.aiter_text():
                    text += chunk
                    if chunks_before_leaving is not None:
                        chunks_before_leaving -= 1
                        if chunks_before_leaving == 0:
                            outcomes[f"{kind} left"] += 1
                            return
                outcome = "error" if '{"error"' in text else "ok"
                outcomes[f"{kind} {outcome}"] += 1
        else:
            timeout = rng.uniform(0.05, 1.0) if kind.startswith("vanish") else None
            response = await asyncio.wait_for(
                client.post("/generate", json=body, headers={"accept": "application/json"}), timeout
            )
            ok = response.status_code == 200 and response.json()["usage"]["completion_tokens"] == body["max_tokens"]
            outcomes[f"{kind} {'ok' if ok else response.status_code}"] += 1
    except asyncio.TimeoutError:
        outcomes[f"{kind} left"] += 1


async def soak(url: str, seconds: float, concurrency: int) -> Counter:
    outcomes: Counter = Counter()
    deadline = time.monotonic() + seconds
    rng = random.Random(0)
    bar = tqdm(total=int(seconds), unit="s", desc="soak")

    async def worker():
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            while time.monotonic() < deadline:
                await one_request(client, rng, outcomes)

    async def tick():
        while time.monotonic() < deadline:
            await asyncio.sleep(1)
            bar.update(1)
            bar.set_postfix(requests=sum(outcomes.values()))

    await asyncio.gather(tick(), *(worker() for _ in range(concurrency)))
    bar.close()
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:7080")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--supervisor-conf", default=".run/supervisord.conf", help="to read the frontends' memory")
    args = parser.parse_args()
    pids = frontend_pids(args.supervisor_conf)
    rss_before = [rss_mib(pid) for pid in pids]
    started = time.monotonic()
    outcomes = asyncio.run(soak(args.url, args.minutes * 60, args.concurrency))
    elapsed = time.monotonic() - started
    time.sleep(3)  # the last aborts reach the engine and a heartbeat reports it
    health = httpx.get(args.url + "/health", timeout=10).json()
    rss_after = [rss_mib(pid) for pid in pids]
    failures = {k: v for k, v in outcomes.items() if not k.endswith((" ok", " left"))}
    print(f"{sum(outcomes.values())} requests in {elapsed:.0f} s: {dict(sorted(outcomes.items()))}")
    print(f"failures: {failures or 'none'}")
    print(f"engine after: running={health['running']} waiting={health['waiting']}")
    for pid, before, after in zip(pids, rss_before, rss_after):
        print(f"frontend pid {pid}: RSS {before:.0f} MiB -> {after:.0f} MiB")
    leaked = health["running"] or health["waiting"]
    return 1 if failures or leaked else 0


if __name__ == "__main__":
    sys.exit(main())
