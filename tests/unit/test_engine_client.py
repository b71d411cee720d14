"""The frontend's fleet client (frontend/engine_client.py) over real ZeroMQ sockets, with
FakeEngine (tests/unit/fake_engine.py) standing in for each engine worker, so the links' handshake,
gap check, heartbeat watch and routing can be driven message by message without vLLM."""
import asyncio
import time

import msgspec
import pytest

from common.config import ServerConfig
from common.messages import BROADCAST_TOPIC, CachedBlocks, Delta, Goodbye, StepOutput, encode, topic_for
from frontend.engine_client import EngineClient, EngineLost, EngineUnavailable, ShuttingDown
from frontend.metrics import CACHE_RESYNCS
from tests.unit.fake_engine import FRONTEND, FakeEngine


async def until(predicate, timeout: float = 5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.fixture
async def fleet(tmp_path):
    async for client_and_engines in fleet_of(FakeEngine, tmp_path):
        yield client_and_engines


async def fleet_of(engine_class, tmp_path, **overrides):
    """An EngineClient of two links, welcomed and heard from by two engines of `engine_class`, on a
    server.yml with `overrides`."""
    link = {"hello_interval_s": 0.05, "heartbeat_timeout_s": 30}
    server = msgspec.convert({"run_dir": str(tmp_path), "engine": link, **overrides}, ServerConfig)
    engines = [engine_class(server, rank, f"engine-{rank}") for rank in range(2)]
    client = EngineClient(server, FRONTEND, server.pool_addresses([("m", 2)])["m"])
    client.start()
    await until(lambda: all(link.ready for link in client.links))
    for engine in engines:
        await engine.heartbeat()
    await until(lambda: client.heartbeat_fresh() and all(link.up for link in client.links))
    yield client, engines
    await client.stop()
    for engine in engines:
        engine.close()


def add_to(client: EngineClient, request_id: str):
    """A prompt shorter than a block: routed by load alone."""
    return client.add(request_id, [1, 2, 3], {"max_tokens": 4})


async def test_a_bad_output_message_is_dropped_and_the_link_reads_on(fleet):
    client, engines = fleet
    queue = add_to(client, "r1")
    engine = engines[client.requests["r1"].link.rank]
    await engine.pub.send_multipart([topic_for(FRONTEND), b"\xc1 not msgpack"])
    await engine.step(Delta("r1", [7], "length"))
    delta = await asyncio.wait_for(queue.get(), 5)
    assert delta.token_ids == [7]


async def test_a_flood_of_outputs_arrives_whole_and_leaves_the_event_loop_turning(fleet):
    """The reader drains the socket in batches: every step of a burst arrives, in order, and other
    tasks run while it does."""
    client, engines = fleet
    queue = add_to(client, "r1")
    engine = engines[client.requests["r1"].link.rank]
    turns = []

    async def other_task():
        while True:
            turns.append(queue.qsize())
            await asyncio.sleep(0)

    other = asyncio.create_task(other_task())
    for token in range(2000):
        await engine.pub.send_multipart([topic_for(FRONTEND), encode(StepOutput(engine.engine_id, token + 1,
                                                                                [Delta("r1", [token])]))])
    engine.seq = 2000
    await until(lambda: queue.qsize() == 2000)
    other.cancel()
    assert [queue.get_nowait().token_ids[0] for _ in range(2000)] == list(range(2000))
    assert client.requests["r1"].link.ready  # no gap was seen
    assert any(0 < size < 2000 for size in turns), "the other task never ran while the outputs arrived"


async def test_a_heartbeat_that_arrived_while_this_process_was_held_keeps_the_engine(tmp_path):
    """After the frontend itself was held past the heartbeat timeout (a loaded host), the watch, which the
    event loop may run before its reader, reads what waits first: only a silent engine is lost."""
    async for client, engines in fleet_of(FakeEngine, tmp_path, engine={"hello_interval_s": 0.05,
                                                                        "heartbeat_timeout_s": 0.5}):
        link = client.links[0]
        await engines[0].heartbeat()  # sent at once: the reader has not run when this returns
        time.sleep(0.8)  # this process held, the heartbeat unread in the socket
        assert not link.heartbeat_overdue()
        time.sleep(0.8)  # and now the engine is silent
        assert link.heartbeat_overdue()


async def test_the_time_this_frontend_was_held_is_not_counted_as_the_engines_silence(tmp_path):
    """A stalled host stalls the engine's heartbeats and the frontend alike: silence is counted in time
    the frontend ran, so an engine's requests stay with it unless it stays silent once the frontend runs."""
    async for client, engines in fleet_of(FakeEngine, tmp_path, engine={"hello_interval_s": 0.05,
                                                                        "heartbeat_timeout_s": 0.5}):
        add_to(client, "r1")
        link = client.requests["r1"].link
        await engines[link.rank].heartbeat()
        await asyncio.sleep(0.1)
        time.sleep(1.0)  # the whole host held: no heartbeat sent, none read
        await asyncio.sleep(0.2)
        assert "r1" in link.streams, "moved away for a silence that was this frontend's own"
        await until(lambda: "r1" not in link.streams, 5)  # silent while the frontend runs: lost, and it moves


async def test_a_request_that_cannot_be_encoded_leaves_nothing_behind(fleet):
    client, _ = fleet
    with pytest.raises(TypeError):
        client.add("r1", [1, 2], {"max_tokens": object()})
    assert client.requests == {} and all(link.streams == {} for link in client.links)


async def test_losing_one_engine_touches_only_its_requests(fleet):
    client, engines = fleet
    client.links[1].draining = True  # only engine 0 up: r0 goes there
    first = add_to(client, "r0")
    client.links[1].draining, client.links[0].draining = False, True
    second = add_to(client, "r1")
    client.links[0].draining = False
    assert (client.requests["r0"].link.rank, client.requests["r1"].link.rank) == (0, 1)
    # Engine 1's heartbeat says it sent this frontend a message that never came: its link gives r1 up,
    # and r1, with nothing generated yet, goes to engine 0 (tests/unit/test_migration.py).
    await engines[1].heartbeat(last_seq=5)
    await until(lambda: [add.request_id for add in engines[0].added] == ["r0", "r1.1"])
    await engines[0].step(Delta("r0", [3], "length"), Delta("r1.1", [4], "length"))
    assert (await asyncio.wait_for(first.get(), 5)).token_ids == [3]
    assert (await asyncio.wait_for(second.get(), 5)).token_ids == [4]
    client.release("r0", abort=False)
    client.release("r1", abort=False)
    assert client.requests == {}


async def test_a_draining_engine_gets_no_new_requests(fleet):
    client, engines = fleet
    await engines[0].publish(BROADCAST_TOPIC, Goodbye("engine-0"))
    await until(lambda: client.links[0].draining)
    for i in range(6):
        add_to(client, f"r{i}")
    assert {flight.link.rank for flight in client.requests.values()} == {1}
    await engines[1].publish(BROADCAST_TOPIC, Goodbye("engine-1"))
    await until(lambda: client.links[1].draining)
    with pytest.raises(EngineUnavailable):
        add_to(client, "r9")
    assert [engine["up"] for engine in client.engines()] == [False, False]


async def test_least_loaded_counts_our_own_sends_before_any_report(fleet):
    client, engines = fleet
    for i in range(8):  # short prompts: by load alone, alternating as our own sends add up
        add_to(client, f"r{i}")
    ranks = [flight.link.rank for flight in client.requests.values()]
    assert ranks.count(0) == ranks.count(1) == 4


async def test_the_engines_report_acknowledges_our_sends_and_counts_them_from_then_on(fleet):
    """Our sends count in their engine's load until its LoadReport says it took them; from then on its
    figures count them, as they count every other frontend's."""
    client, engines = fleet
    for i in range(8):
        add_to(client, f"r{i}")
    view = client.links[0].load_view
    assert len(view.unacknowledged) == 4
    await until(lambda: len(engines[0].added) == 4)
    # Engine 0 took two of ours and 30 of another frontend's, and finished ours already.
    await engines[0].report({FRONTEND: 2, "host-9~z": 30}, waiting=20, running=10, prefill_tokens=600)
    await until(lambda: view.report.seq == 1)
    assert len(view.unacknowledged) == 2 and view.waiting == 20
    # Another frontend's queue there: our next requests go to engine 1.
    for i in range(8, 11):
        add_to(client, f"r{i}")
    assert [client.requests[f"r{i}"].link.rank for i in range(8, 11)] == [1, 1, 1]
    await engines[0].report({FRONTEND: 4, "host-9~z": 30})
    await until(lambda: not view.unacknowledged)


async def test_a_lost_cache_report_brings_a_resync_and_the_snapshot_restores_the_record(fleet):
    client, engines = fleet
    link, engine = client.links[0], engines[0]
    resyncs_before = CACHE_RESYNCS.labels(link.model, "0")._value.get()
    snapshot = CachedBlocks("engine-0", 0, [11, 12], [], True)
    await engine.publish(topic_for(FRONTEND), snapshot)
    await engine.publish(BROADCAST_TOPIC, CachedBlocks("engine-0", 1, [13], [], False))
    await until(lambda: 13 in link.cache_record)
    await engine.publish(BROADCAST_TOPIC, CachedBlocks("engine-0", 3, [15], [], False))  # 2 never came
    await until(lambda: len(engine.resyncs) == 1)
    assert 15 not in link.cache_record and CACHE_RESYNCS.labels(link.model, "0")._value.get() == resyncs_before + 1
    await engine.publish(topic_for(FRONTEND), CachedBlocks("engine-0", 3, [11, 13, 14, 15], [12], True))
    await engine.publish(BROADCAST_TOPIC, CachedBlocks("engine-0", 3, [15], [], False))  # in the snapshot
    await engine.publish(BROADCAST_TOPIC, CachedBlocks("engine-0", 4, [16], [], False))
    await until(lambda: 16 in link.cache_record)
    assert sorted(link.cache_record.blocks) == [11, 13, 14, 15, 16]
    # The last change lost, with nothing after it: the heartbeat's number shows it.
    await engine.heartbeat(cache_seq=5)
    await until(lambda: len(engine.resyncs) == 2)


async def test_shutting_down_ends_every_running_request_aborts_it_and_takes_no_new_one(fleet):
    client, engines = fleet
    queues = [add_to(client, f"r{i}") for i in range(4)]
    client.shut_down("the server is shutting down")
    for queue in queues:
        error = await asyncio.wait_for(queue.get(), 5)
        assert isinstance(error, ShuttingDown) and str(error) == "the server is shutting down"
    await until(lambda: sorted(engines[0].aborted + engines[1].aborted) == ["r0", "r1", "r2", "r3"])
    with pytest.raises(EngineUnavailable, match="shutting down"):
        add_to(client, "r9")
    for i in range(4):
        client.release(f"r{i}", abort=False)
    assert client.requests == {} and all(link.streams == {} for link in client.links)


async def test_an_engine_that_serves_another_model_than_its_pools_is_never_used(tmp_path, caplog):
    link = {"hello_interval_s": 0.05, "heartbeat_timeout_s": 30}
    server = msgspec.convert({"run_dir": str(tmp_path), "engine": link}, ServerConfig)
    engines = [FakeEngine(server, rank, f"engine-{rank}") for rank in range(2)]
    engines[1].model = "other"  # a remote engine given the wrong `model` in server.yml
    client = EngineClient(server, FRONTEND, server.pool_addresses([("m", 2)])["m"], name="m")
    client.start()
    try:
        await until(lambda: client.links[0].ready
                    and "engine 1 of m serves 'other', not 'm': it is not used" in caplog.text)
        await asyncio.sleep(0.3)  # several HELLOs answered: still not used, and said once
        assert not client.links[1].ready and client.links[1].welcome is None
        assert caplog.text.count("serves 'other'") == 1
        for engine in engines:
            await engine.heartbeat()
        await until(lambda: client.links[0].up)
        for i in range(4):
            add_to(client, f"r{i}")
        await until(lambda: len(engines[0].added) == 4)
        assert engines[1].added == []
    finally:
        await client.stop()
        for engine in engines:
            engine.close()


async def test_an_emptied_cache_empties_the_record_and_what_this_frontend_sent_there(fleet):
    client, engines = fleet
    prompt = list(range(100, 164))  # four blocks: routed by prefix, remembered where sent
    client.add("r1", prompt, {"max_tokens": 4})
    link = client.requests["r1"].link
    engine, sent = engines[link.rank], client.router.sent[link.rank]
    assert len(sent) == 4
    await engine.publish(topic_for(FRONTEND), CachedBlocks(engine.engine_id, 1, [11, 12], [], True))  # a snapshot
    await until(lambda: 11 in link.cache_record)
    assert len(sent) == 4  # a snapshot forgets no send: it may predate their prefill
    await engine.publish(BROADCAST_TOPIC, CachedBlocks(engine.engine_id, 2, [], [], True, emptied=True))
    await until(lambda: not sent)
    assert len(link.cache_record) == 0
