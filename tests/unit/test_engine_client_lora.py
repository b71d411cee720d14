"""The fleet client's LoRA adapters (frontend/engine_client.py) over real ZeroMQ sockets, with
LoraFakeEngine standing in for each engine worker (tests/unit/fake_engine.py's FakeEngine, which
also answers LoadLora, UnloadLora and ListLoras): each engine sends its adapters when they change and
their version in each heartbeat, a frontend that missed a change asks for them, requests for one go
only where it is, and a load reaches every engine."""
import asyncio

import pytest

from common.config import ServerConfig
from common.messages import (
    BROADCAST_TOPIC, Delta, EngineLoad, Heartbeat, ListLoras, LoadLora, Loras, UnloadLora, Welcome, topic_for,
)
from frontend.router import RoutingScope, routing_scope
from tests.unit.fake_engine import FRONTEND, FakeEngine
from tests.unit.test_engine_client import fleet_of, until


class LoraFakeEngine(FakeEngine):
    def __init__(self, server: ServerConfig, rank: int, engine_id: str):
        self.loras: dict[str, str] = {}
        self.version = 0
        self.asked: list[ListLoras] = []
        self.refusal: str | None = None  # the next LoadLora/UnloadLora is refused with it
        self.updates: list = []
        super().__init__(server, rank, engine_id)

    def welcome(self, frontend_id: str) -> Welcome:
        return Welcome(self.engine_id, frontend_id, self.model, self.tokenizer, self.max_model_len, dict(self.loras),
                       True, self.version)

    async def handle(self, message) -> None:
        await super().handle(message)
        if isinstance(message, (LoadLora, UnloadLora)):
            self.updates.append(message)
            await self.update(message)
        elif isinstance(message, ListLoras):
            self.asked.append(message)
            await self.publish(topic_for(message.frontend_id), Loras(self.engine_id, self.version, dict(self.loras)))

    async def update(self, message: LoadLora | UnloadLora) -> None:
        if self.refusal is not None:
            await self.step(Delta(message.request_id, [], "error", error=self.refusal))
            return
        if isinstance(message, LoadLora):
            self.loras[message.name] = message.path
        else:
            self.loras.pop(message.name)
        self.version += 1
        await self.publish(BROADCAST_TOPIC, Loras(self.engine_id, self.version, dict(self.loras)))
        await self.step(Delta(message.request_id, [], "stop"))

    async def heartbeat(self, load: EngineLoad | None = None, last_seq: int | None = None, cache_seq: int = 0) -> None:
        last_seqs = {self.frontend_id: self.seq if last_seq is None else last_seq}
        await self.publish(BROADCAST_TOPIC, Heartbeat(self.engine_id, load or EngineLoad(), last_seqs, self.version,
                                                      cache_seq))


@pytest.fixture
async def fleet(tmp_path):
    async for client_and_engines in fleet_of(LoraFakeEngine, tmp_path):
        yield client_and_engines


async def test_requests_for_an_adapter_go_only_to_engines_that_have_it(fleet):
    client, engines = fleet
    # A change whose Loras message this frontend missed: the heartbeat's version makes it ask.
    engines[1].loras["sql"], engines[1].version = "/adapters/sql", 1
    # Engine 1 is far busier, but only it has the adapter.
    await engines[1].heartbeat(EngineLoad(running=50, waiting=50))
    await until(lambda: client.loras == {"sql": "/adapters/sql"})
    assert [asked.frontend_id for asked in engines[1].asked] == [FRONTEND] and engines[0].asked == []
    assert client.runtime_lora_updating
    for i in range(4):
        with routing_scope(RoutingScope(lora="sql")):  # as served_model leaves it for a request naming "sql"
            client.add(f"r{i}", [1, 2, 3], {"max_tokens": 4})
    assert {client.requests[f"r{i}"].link.rank for i in range(4)} == {1}
    await until(lambda: len(engines[1].added) == 4)
    assert {add.lora for add in engines[1].added} == {"sql"}
    for i in range(4):
        client.release(f"r{i}", abort=True)


async def test_a_load_reaches_every_engine_and_each_answers(fleet):
    client, engines = fleet
    answers = await asyncio.wait_for(client.update_loras("chat", "/adapters/chat"), 5)
    assert answers == {0: None, 1: None}
    assert [type(u) for e in engines for u in e.updates] == [LoadLora, LoadLora]
    assert client.loras == {"chat": "/adapters/chat"} and all(link.serves("chat") for link in client.links)
    engines[1].refusal = "No adapter found"
    answers = await asyncio.wait_for(client.update_loras("chat", None), 5)
    assert answers == {0: None, 1: "No adapter found"}
    # Engine 0 dropped it, engine 1 still has it: requests for it go to engine 1.
    assert (client.links[0].serves("chat"), client.links[1].serves("chat")) == (False, True)
    # Loading it again goes only where it is missing.
    engines[1].refusal = None
    assert await asyncio.wait_for(client.update_loras("chat", "/adapters/chat"), 5) == {0: None}
    assert len(engines[1].updates) == 2 and all(link.serves("chat") for link in client.links)
    assert all(link.streams == {} for link in client.links)
