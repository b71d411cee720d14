"""An oracle for routing: a measuring instrument of the bench, not a router policy of the product.

It places every request of a run itself, pinning it to an engine (X-data-parallel-rank, so the frontends'
routers take no part), knowing at each placement what every engine's prefix cache holds: the blocks each
engine reports (it reads every engine's CachedBlocks from its PUB socket, as the frontends do, one step
behind at most) and every block of every request sent to each engine and not yet ended (it sends them
all). It also knows every engine's queue exactly: the prompt tokens each engine still has to prefill (of
the requests it placed there that have no first token yet, net of the cache they found) and its requests
in flight. No router spread over several frontends can know more; what it reaches (its prefix-cache hit
rate above all) is the mark a router's is held against.

Its rule is prefix placement with an affinity window, as a router would apply it if it knew all that:
among the engines with a free sequence slot (fewer requests in flight than max_num_seqs; all engines if
none has one), the one holding the longest run of the prompt's leading blocks (covering at least
MIN_MATCH of the prompt; the less queued of equal holders) while its queued prefill is within
`window_tokens` of the least queued engine's; otherwise the least queued engine (the fewer requests in
flight, then the prompt's rendezvous hash, breaking ties).
"""
import asyncio
from collections import Counter, defaultdict

import zmq
import zmq.asyncio

from common.blocks import block_hashes
from common.messages import BROADCAST_TOPIC, CachedBlocks, Heartbeat, output_decoder
from frontend.router import rendezvous

MIN_MATCH = 0.5  # router.min_match_ratio's default
WINDOW_TOKENS = 8192  # one step of prefill at max_num_batched_tokens' default


class Oracle:
    def __init__(self, output_addresses: list[str], block_size: int, max_num_seqs: int,
                 window_tokens: int = WINDOW_TOKENS):
        self.addresses = output_addresses
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.window_tokens = window_tokens
        engines = len(output_addresses)
        self.held: list[set[int]] = [set() for _ in range(engines)]  # what each engine reports it caches
        self.sent: list[Counter] = [Counter() for _ in range(engines)]  # blocks of requests in flight there
        self.in_flight = [0] * engines
        self.queued_prefill = [0] * engines
        self.waiting_prefill: dict[int, list[int]] = defaultdict(list)  # rank -> uncached tokens, by arrival
        self.hashes: dict[int, list[int]] = {}  # id(prompt) -> its block hashes (prompts repeat)
        self.heard = [False] * engines
        self.context = zmq.asyncio.Context()
        self.readers: list[asyncio.Task] = []

    async def start(self, timeout_s: float = 30.0) -> None:
        """Subscribe to every engine's broadcast topic, and wait until each one's heartbeat arrives."""
        for rank, address in enumerate(self.addresses):
            socket = self.context.socket(zmq.SUB)
            socket.setsockopt(zmq.RCVHWM, 0)
            socket.setsockopt(zmq.SUBSCRIBE, BROADCAST_TOPIC)
            socket.connect(address)
            self.readers.append(asyncio.create_task(self.read(rank, socket)))
        for _ in range(int(timeout_s * 10)):
            if all(self.heard):
                return
            await asyncio.sleep(0.1)
        silent = [rank for rank, heard in enumerate(self.heard) if not heard]
        raise RuntimeError(f"the oracle heard no heartbeat from engines {silent}")

    async def stop(self) -> None:
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        self.context.destroy(linger=0)

    async def read(self, rank: int, socket) -> None:
        while True:
            message = output_decoder.decode((await socket.recv_multipart())[-1])
            if isinstance(message, Heartbeat):
                self.heard[rank] = True
            elif isinstance(message, CachedBlocks):
                held = self.held[rank]
                if message.cleared:
                    held.clear()
                held.difference_update(message.removed)
                held.update(message.stored)

    def blocks(self, prompt: list[int]) -> list[int]:
        key = id(prompt)
        if key not in self.hashes:
            self.hashes[key] = block_hashes(prompt, self.block_size)
        return self.hashes[key]

    def cached_tokens(self, rank: int, blocks: list[int]) -> int:
        held, sent = self.held[rank], self.sent[rank]
        run = 0
        while run < len(blocks) and (blocks[run] in held or blocks[run] in sent):
            run += 1
        return run * self.block_size

    def place(self, prompt: list[int], max_tokens: int) -> int:
        blocks = self.blocks(prompt)
        ranks = range(len(self.addresses))
        free = [rank for rank in ranks if self.in_flight[rank] < self.max_num_seqs] or list(ranks)
        cached = {rank: min(self.cached_tokens(rank, blocks), len(prompt) - 1) for rank in free}
        key = blocks[0] if blocks else hash(tuple(prompt))
        least = min(free, key=lambda r: (self.queued_prefill[r], self.in_flight[r], -rendezvous(key, r)))
        holder = max(free, key=lambda r: (cached[r], -self.queued_prefill[r], -rendezvous(key, r)))
        held = cached[holder] >= MIN_MATCH * len(prompt) and \
            self.queued_prefill[holder] - self.queued_prefill[least] <= self.window_tokens
        rank = holder if held else least
        uncached = len(prompt) - cached[rank]
        self.in_flight[rank] += 1
        self.sent[rank].update(blocks)
        self.queued_prefill[rank] += uncached
        self.waiting_prefill[rank].append(uncached)
        return rank

    def first_token(self, rank: int) -> None:
        # Each engine prefills first come, first served: the earliest placed is the one that started.
        if self.waiting_prefill[rank]:
            self.queued_prefill[rank] -= self.waiting_prefill[rank].pop(0)

    def ended(self, rank: int, prompt: list[int], outcome) -> None:
        if outcome.first_token_at is None:
            self.first_token(rank)
        self.in_flight[rank] -= 1
        sent = self.sent[rank]
        for block in self.blocks(prompt):
            sent[block] -= 1
            if not sent[block]:
                del sent[block]
