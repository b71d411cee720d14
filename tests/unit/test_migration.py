"""Moving a generation to another engine (frontend/migration.py, EngineClient.move): the fleet client
over real ZeroMQ sockets with two FakeEngines (tests/unit/fake_engine.py) driven message by message."""
import asyncio

import pytest

from common.messages import BROADCAST_TOPIC, Delta, EngineLoad, Goodbye, Heartbeat
from frontend.engine_client import EngineClient, EngineLost
from frontend.metrics import MIGRATIONS, NOT_MOVED
from frontend.router import RoutingScope, routing_scope
from frontend.run.generation import GenerationSpec, generate
from tests.unit.fake_engine import FRONTEND, FakeEngine
from tests.unit.test_engine_client import fleet_of, until

PROMPT = [1, 2, 3]


@pytest.fixture
async def fleet(tmp_path):
    async for client_and_engines in fleet_of(FakeEngine, tmp_path):
        yield client_and_engines


def on(client: EngineClient, request_id: str) -> int:
    return client.requests[request_id].link.rank


async def taken(engine: FakeEngine, count: int):
    await until(lambda: len(engine.added) >= count)
    return engine.added[count - 1]


async def generated(client, engines, request_id: str, tokens: list[int], **sampling):
    """Add a request and have its engine generate `tokens` (not the last): the queue, and its engine's rank."""
    queue = client.add(request_id, PROMPT, {"max_tokens": 10, **sampling})
    rank = on(client, request_id)
    await taken(engines[rank], 1)
    await engines[rank].step(Delta(request_id, tokens))
    assert (await asyncio.wait_for(queue.get(), 5)).token_ids == tokens
    return queue, rank


async def test_a_drained_request_goes_on_from_its_tokens_with_max_tokens_reduced(fleet):
    client, engines = fleet
    before = MIGRATIONS.labels("drain")._value.get()
    queue, rank = await generated(client, engines, "r1", [7, 8, 9], min_tokens=5, temperature=0.5)
    await engines[rank].publish(BROADCAST_TOPIC, Goodbye(f"engine-{rank}"))
    other = engines[1 - rank]
    add = await taken(other, 1)
    assert add.request_id == "r1.1"
    assert add.prompt_token_ids == PROMPT + [7, 8, 9] and add.resumed_tokens == 3
    assert add.sampling == {"max_tokens": 7, "min_tokens": 2, "temperature": 0.5}
    await other.step(Delta("r1.1", [10]), Delta("r1.1", [11], "length"))
    assert [(await queue.get()).token_ids for _ in range(2)] == [[10], [11]]
    assert MIGRATIONS.labels("drain")._value.get() == before + 1
    client.release("r1", abort=False)
    assert client.requests == {}


async def test_a_request_with_no_output_yet_is_simply_sent_elsewhere(fleet):
    client, engines = fleet
    queue = client.add("r1", PROMPT, {"max_tokens": 10})
    rank = on(client, "r1")
    await engines[rank].heartbeat(last_seq=5)  # outputs of it lost on the way: the link gives it up
    add = await taken(engines[1 - rank], 1)
    assert (add.prompt_token_ids, add.sampling, add.resumed_tokens) == (PROMPT, {"max_tokens": 10}, 0)
    assert on(client, "r1") == 1 - rank and queue.empty()


async def test_a_pooling_request_whose_engine_goes_is_sent_whole_to_another(fleet):
    client, engines = fleet
    pooling = {"task": "embed", "dimensions": None, "use_activation": None}
    queue = client.add("p1", PROMPT, {}, pooling)
    rank = on(client, "p1")
    await taken(engines[rank], 1)
    await engines[rank].publish(BROADCAST_TOPIC, Goodbye(f"engine-{rank}"))
    add = await taken(engines[1 - rank], 1)
    assert (add.request_id, add.prompt_token_ids, add.sampling, add.pooling) == ("p1.1", PROMPT, {}, pooling)
    await engines[1 - rank].step(Delta("p1.1", [], "stop", pooled=b"\0\0\x80?"))
    assert (await asyncio.wait_for(queue.get(), 5)).pooled == b"\0\0\x80?"
    client.release("p1", abort=False)


async def test_the_generation_run_sees_one_stream_and_every_token_once(fleet, tokenizer):
    """Tokens from both engines arrive as one generation: each once, in order, so usage counts each once."""
    client, engines = fleet
    spec = GenerationSpec(PROMPT, {"max_tokens": 4})
    pieces = generate(client, tokenizer.backend, spec)
    first = asyncio.ensure_future(pieces.__anext__())
    await until(lambda: client.requests or first.done())
    assert not first.done(), first.exception()
    [request_id] = client.requests
    rank = on(client, request_id)
    await taken(engines[rank], 1)
    await engines[rank].step(Delta(request_id, [300, 301]))
    got = [(await first).token_ids]
    await engines[rank].publish(BROADCAST_TOPIC, Goodbye(f"engine-{rank}"))
    add = await taken(engines[1 - rank], 1)
    assert add.sampling["max_tokens"] == 2
    await engines[1 - rank].step(Delta(add.request_id, [302]), Delta(add.request_id, [303], "length"))
    got += [piece.token_ids async for piece in pieces]
    assert got == [[300, 301], [302], [303]]
    assert client.requests == {}


async def test_a_pinned_request_is_not_moved(fleet):
    client, engines = fleet
    before = NOT_MOVED.labels("pinned")._value.get()
    with routing_scope(RoutingScope(pinned=1)):
        queue = client.add("r1", PROMPT, {"max_tokens": 10})
    await taken(engines[1], 1)
    await engines[1].publish(BROADCAST_TOPIC, Goodbye("engine-1"))
    error = await asyncio.wait_for(queue.get(), 5)
    assert isinstance(error, EngineLost) and "pinned" in str(error)
    assert engines[0].added == [] and NOT_MOVED.labels("pinned")._value.get() == before + 1
    client.release("r1", abort=False)


async def test_a_request_moves_at_most_migration_limit_times(tmp_path):
    async for client, engines in fleet_of(FakeEngine, tmp_path, migration_limit=1):
        queue, rank = await generated(client, engines, "r1", [7])
        await engines[rank].heartbeat(last_seq=9)  # lost once: it moves
        add = await taken(engines[1 - rank], 1)
        await engines[1 - rank].step(Delta(add.request_id, [8]))
        assert (await queue.get()).token_ids == [8]
        await engines[1 - rank].heartbeat(last_seq=9)  # lost again: the limit is reached
        error = await asyncio.wait_for(queue.get(), 5)
        assert isinstance(error, EngineLost) and "migration_limit" in str(error)
        client.release("r1", abort=False)


async def test_a_request_with_a_grammar_moves_only_to_an_engine_that_resumes_grammars(fleet):
    client, engines = fleet
    queue, rank = await generated(client, engines, "r1", [7], structured_outputs={"json": {"type": "object"}})
    assert not client.links[1 - rank].resumes_grammars  # FakeEngine's Welcome says it cannot
    await engines[rank].publish(BROADCAST_TOPIC, Goodbye(f"engine-{rank}"))
    error = await asyncio.wait_for(queue.get(), 5)
    assert isinstance(error, EngineLost) and "grammar" in str(error)
    assert engines[1 - rank].added == []
    client.release("r1", abort=False)


async def test_a_stalled_engines_requests_are_aborted_there_and_move(tmp_path):
    async for client, engines in fleet_of(FakeEngine, tmp_path, stall_timeout_s=1.0):
        queue, rank = await generated(client, engines, "r1", [7, 8])
        stalled = engines[rank]
        await stalled.publish(BROADCAST_TOPIC, Heartbeat(stalled.engine_id, EngineLoad(running=1),
                                                         {FRONTEND: stalled.seq}, since_progress_s=5.0))
        add = await taken(engines[1 - rank], 1)
        assert add.prompt_token_ids == PROMPT + [7, 8]
        await until(lambda: "r1" in stalled.aborted)
        assert client.links[rank].view()["stalled"] and not client.links[rank].routable
        client.add("r2", PROMPT, {"max_tokens": 1})  # new requests avoid it
        assert on(client, "r2") == 1 - rank
