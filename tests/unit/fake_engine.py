"""Fake engine workers: an engine's real ZeroMQ sockets with no vLLM behind them.

FakeEngine binds an engine's PULL and PUB, answers HELLO with WELCOME and publishes what a test tells
it to, so the engine client's tests can drive a link message by message. ScriptedEngine also runs
what a frontend ADDs, on a thread of its own as an engine worker runs in a process of its own: one
token a step for each running request, from a reply the test scripted or, unscripted, from tokens
drawn with the prompt and seed as the random source; a heartbeat every HEARTBEAT_S; and, when
built with lora_updates, LoRA adapters loaded and unloaded at run time (any existing directory is
an adapter). Served as FAKE_EMBEDDING or FAKE_CROSS_ENCODER it is a fake pooling model instead: its
Welcome says so, and each pooling ADD gets its pooled vector at once (fake_pooled), drawn with the
prompt as the random source."""
import asyncio
import collections
import os
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import zmq
import zmq.asyncio

from common.config import ServerConfig
from common.sockets import make_socket
from common.messages import (
    BROADCAST_TOPIC, Abort, Add, Delta, EngineLoad, Heartbeat, Hello, ListLoras, LoadLora, LoadReport, Loras, Resync,
    StepOutput, TokenLogprob, UnloadLora, Welcome, encode, request_decoder, topic_for,
)

FRONTEND = "fe-test-0"
# Fake pooling models, by served name: what their Welcome says of them.
FAKE_EMBEDDING, FAKE_CROSS_ENCODER = "fake-embedding", "fake-cross-encoder"
FAKE_POOLING = {
    FAKE_EMBEDDING: {"tasks": ["embed", "token_embed"], "embedding_size": 8, "is_matryoshka": True,
                     "matryoshka_dimensions": [4, 8]},
    FAKE_CROSS_ENCODER: {"tasks": ["classify", "token_classify"], "labels": ["relevant"]},
}


def fake_pooled(add: Add) -> bytes:
    """A fake model's pooled vector for `add`: a unit vector drawn from the prompt (cut to `dimensions`),
    or a classifier's one probability."""
    rng = np.random.default_rng(abs(hash(tuple(add.prompt_token_ids))))
    if add.pooling["task"] == "classify":
        return np.array([rng.uniform(0.01, 0.99)], dtype="<f4").tobytes()
    vector = rng.normal(size=add.pooling.get("dimensions") or FAKE_POOLING[FAKE_EMBEDDING]["embedding_size"])
    return (vector / np.linalg.norm(vector)).astype("<f4").tobytes()


class FakeEngine:
    """A stand-in for one engine worker: its PULL and PUB, a WELCOME for each HELLO, heartbeats on demand."""

    model, tokenizer, max_model_len = "m", "tok", 128

    def __init__(self, server: ServerConfig, rank: int, engine_id: str, context: zmq.asyncio.Context | None = None):
        context = context or zmq.asyncio.Context.instance()
        self.engine_id = engine_id
        # The engine worker's water marks: a burst a test publishes is not dropped at ZeroMQ's default of 1,000.
        self.pull = make_socket(context, zmq.PULL, server.local_request_address(rank), bind=True, link=server.engine)
        self.pub = make_socket(context, zmq.PUB, server.local_output_address(rank), bind=True, link=server.engine)
        self.frontend_id = FRONTEND  # the last one that said HELLO
        self.added: list[Add] = []
        self.aborted: list[str] = []
        self.resyncs: list[Resync] = []
        self.seq = 0
        self.load_seq = 0
        self.running = asyncio.create_task(self.serve())

    async def serve(self):
        while True:
            await self.handle(request_decoder.decode(await self.pull.recv()))

    async def handle(self, message) -> None:
        if isinstance(message, Hello):
            self.seq = 0
            self.frontend_id = message.frontend_id
            await self.publish(topic_for(message.frontend_id), self.welcome(message.frontend_id))
        elif isinstance(message, Add):
            self.added.append(message)
        elif isinstance(message, Abort):
            self.aborted.extend(message.request_ids)
        elif isinstance(message, Resync):
            self.resyncs.append(message)

    def welcome(self, frontend_id: str) -> Welcome:
        return Welcome(self.engine_id, frontend_id, self.model, self.tokenizer, self.max_model_len)

    async def publish(self, topic: bytes, message) -> None:
        await self.pub.send_multipart([topic, encode(message)])

    async def heartbeat(self, load: EngineLoad | None = None, last_seq: int | None = None, cache_seq: int = 0) -> None:
        last_seqs = {self.frontend_id: self.seq if last_seq is None else last_seq}
        await self.publish(BROADCAST_TOPIC, Heartbeat(self.engine_id, load or EngineLoad(), last_seqs,
                                                      cache_seq=cache_seq))

    async def report(self, taken: dict[str, int], waiting: int = 0, running: int = 0, prefill_tokens: int = 0,
                     usage_minute: int = 0, usage: dict | None = None) -> None:
        """A LoadReport: the engine took `taken` ADDs from each frontend; `usage`: each tenant's TenantUse."""
        self.load_seq += 1
        report = LoadReport(self.engine_id, self.load_seq, waiting, running, prefill_tokens, 0, 0, taken,
                            usage_minute=usage_minute, usage=usage or {})
        await self.publish(BROADCAST_TOPIC, report)

    async def step(self, *deltas: Delta) -> None:
        self.seq += 1
        await self.publish(topic_for(self.frontend_id), StepOutput(self.engine_id, self.seq, list(deltas)))

    def close(self):
        self.running.cancel()
        self.pull.close()
        self.pub.close()


HEARTBEAT_S = 0.2
STEP_S = 0.002
UNSCRIPTED_TOKENS = 16  # an unscripted reply's length before its EOS


@dataclass
class Run:
    """A request the engine is generating: its reply's tokens, and how far it got."""

    add: Add
    tokens: Iterator[int]
    made: int = 0
    first: bool = True


class ScriptedEngine(FakeEngine):
    """A FakeEngine that generates. Build it with `ScriptedEngine.start(...)`: it runs on its own
    thread and event loop; `reply`, `refuse`, `added` and `aborted` are safe to use from the test's."""

    def __init__(self, server: ServerConfig, tokenizer, model: str, context: zmq.asyncio.Context,
                 lora_updates: bool = False, image_token_id: int | None = None):
        self.lora_updates = lora_updates
        self.image_token_id = image_token_id  # a vision model's, said in the Welcome
        self.loras: dict[str, str] = {}
        self.loras_version = 0
        self.hf = tokenizer.hf
        self.model, self.tokenizer, self.max_model_len = model, tokenizer.source, 8192
        self.eos = self.hf.eos_token_id
        self.plain = sorted(set(range(len(self.hf))) - set(self.hf.all_special_ids))
        # What the next ADDs get, in order: a reply's token ids (EOS follows them), or a refusal's reason.
        self.script: collections.deque[list[int] | str] = collections.deque()
        self.runs: dict[str, Run] = {}
        self.work = asyncio.Event()
        self.cached_tokens = 0  # what each request's first output says its prompt found in the prefix cache
        super().__init__(server, 0, "scripted-engine", context)
        self.tasks = [asyncio.create_task(self.generate()), asyncio.create_task(self.beat())]

    @classmethod
    def start(cls, server: ServerConfig, tokenizer, model: str, lora_updates: bool = False,
              image_token_id: int | None = None) -> "ScriptedEngine":
        started: dict = {}
        ready = threading.Event()

        def run():
            loop = asyncio.new_event_loop()
            context = zmq.asyncio.Context()

            async def build():
                started["engine"] = cls(server, tokenizer, model, context, lora_updates, image_token_id)

            loop.run_until_complete(build())
            started["engine"].loop, started["engine"].context = loop, context
            ready.set()
            loop.run_forever()
            started["engine"].close()
            loop.run_until_complete(asyncio.gather(*asyncio.all_tasks(loop), return_exceptions=True))
            context.destroy(linger=0)
            loop.close()

        thread = threading.Thread(target=run, name="scripted-engine", daemon=True)
        thread.start()
        ready.wait(10)
        started["engine"].thread = thread
        return started["engine"]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def reply(self, *texts: str) -> None:
        """The next ADDs, one each, get these texts as their replies (then EOS)."""
        for text in texts:
            self.script.append(self.hf.backend_tokenizer.encode(text, add_special_tokens=False).ids)

    def reply_ids(self, token_ids: list[int]) -> None:
        self.script.append(list(token_ids))

    def refuse(self, error: str) -> None:
        """The next ADD is refused with `error`, as vLLM's own validation refuses one."""
        self.script.append(error)

    @property
    def idle(self) -> bool:
        return not self.runs

    def welcome(self, frontend_id: str) -> Welcome:
        return Welcome(self.engine_id, frontend_id, self.model, self.tokenizer, self.max_model_len, dict(self.loras),
                       self.lora_updates, self.loras_version, image_token_id=self.image_token_id,
                       **FAKE_POOLING.get(self.model, {}))

    async def handle(self, message) -> None:
        await super().handle(message)
        if isinstance(message, Add):
            await self.admit(message)
        elif isinstance(message, Abort):
            for request_id in message.request_ids:
                self.runs.pop(request_id, None)
        elif isinstance(message, (LoadLora, UnloadLora)):
            await self.update_adapters(message)
        elif isinstance(message, ListLoras):
            await self.publish(topic_for(message.frontend_id), self.listing())

    def listing(self) -> Loras:
        return Loras(self.engine_id, self.loras_version, dict(self.loras))

    async def update_adapters(self, message: LoadLora | UnloadLora) -> None:
        """As the engine worker answers: the new list to every frontend first, then the request's end."""
        if isinstance(message, LoadLora) and not os.path.isdir(message.path):
            error = f"there is no LoRA adapter directory at lora_path {message.path!r}"
            await self.step(Delta(message.request_id, [], "error", error=error))
            return
        if isinstance(message, LoadLora):
            self.loras[message.name] = message.path
        else:
            self.loras.pop(message.name, None)
        self.loras_version += 1
        await self.publish(BROADCAST_TOPIC, self.listing())
        await self.step(Delta(message.request_id, [], "stop"))

    async def admit(self, add: Add) -> None:
        scripted = self.script.popleft() if self.script else None
        if isinstance(scripted, str):
            await self.step(Delta(add.request_id, [], "error", error=scripted))
            return
        if add.pooling is not None:
            await self.step(Delta(add.request_id, [], "stop", pooled=fake_pooled(add)))
            return
        self.runs[add.request_id] = Run(add, self.tokens(add, scripted))
        self.work.set()

    def tokens(self, add: Add, scripted: list[int] | None):
        """The reply, then EOS, then (for ignore_eos) more tokens until max_tokens."""
        seed = add.sampling.get("seed")
        rng = random.Random(f"{add.prompt_token_ids}/{seed}") if seed is not None else random.Random()
        yield from scripted if scripted is not None else (rng.choice(self.plain) for _ in range(UNSCRIPTED_TOKENS))
        yield self.eos
        while True:
            yield rng.choice(self.plain)

    async def generate(self) -> None:
        while True:
            await self.work.wait()
            if not self.runs:
                self.work.clear()
                continue
            deltas = [self.next_delta(request_id, run) for request_id, run in list(self.runs.items())]
            await self.step(*deltas)
            await asyncio.sleep(STEP_S)

    def next_delta(self, request_id: str, run: Run) -> Delta:
        sampling = run.add.sampling
        token = next(run.tokens)
        run.made += 1
        finish, stop_token = None, None
        if token in (sampling.get("stop_token_ids") or []):
            finish, stop_token = "stop", token
        elif token == self.eos and not sampling.get("ignore_eos"):
            finish = "stop"
        elif run.made >= sampling.get("max_tokens", 16):
            finish = "length"
        if finish is not None:
            del self.runs[request_id]
        delta = Delta(request_id, [token], finish, logprobs=self.logprobs([token], sampling.get("logprobs")),
                      stop_token_id=stop_token)
        if run.first and sampling.get("prompt_logprobs") is not None:
            delta.prompt_logprobs = [None, *self.logprobs(run.add.prompt_token_ids[1:], sampling["prompt_logprobs"])]
        if run.first:
            delta.num_cached_tokens = min(self.cached_tokens, len(run.add.prompt_token_ids))
        run.first = False
        return delta

    def logprobs(self, token_ids: list[int], top: int | None) -> list[list[TokenLogprob]] | None:
        """The sampled token first, then `top` others, less likely each."""
        if top is None:
            return None
        return [[TokenLogprob(token, -0.5, 1),
                 *(TokenLogprob(other, -1.0 - i, i + 2)
                   for i, other in enumerate([t for t in self.plain[:top + 1] if t != token][:top]))]
                for token in token_ids]

    async def heartbeat(self, load: EngineLoad | None = None, last_seq: int | None = None, cache_seq: int = 0) -> None:
        last_seqs = {self.frontend_id: self.seq if last_seq is None else last_seq}
        await self.publish(BROADCAST_TOPIC, Heartbeat(self.engine_id, load or EngineLoad(), last_seqs,
                                                      self.loras_version, cache_seq))

    async def beat(self) -> None:
        while True:
            await self.heartbeat(EngineLoad(running=len(self.runs)))
            await asyncio.sleep(HEARTBEAT_S)

    def close(self):
        for task in self.tasks:
            task.cancel()
        super().close()
