"""A request with a backlog of Deltas does not hold the event loop: run on a fake engine client
(FakeEngineClient: queues filled by the test, no sockets) and the real generation code."""
import asyncio

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers.pre_tokenizers import ByteLevel

from common.messages import Delta
from frontend.run.generation import GenerationSpec, generate


def byte_tokenizer() -> Tokenizer:
    vocab = {symbol: i for i, symbol in enumerate(sorted(ByteLevel.alphabet()))}
    tokenizer = Tokenizer(models.BPE(vocab, []))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


class FakeEngineClient:
    """Hands each request the queue the test prepared for it."""

    model = "m"
    classes = ["interactive", "standard", "batch"]

    def __init__(self, queues: dict[str, asyncio.Queue]):
        self.queues = list(queues.values())
        self.released = 0

    def add(self, request_id, prompt_token_ids, sampling, images=None, trace=None):
        return self.queues.pop(0)

    def release(self, request_id, abort):
        self.released += 1


async def test_a_request_with_a_huge_backlog_does_not_starve_another():
    tokenizer = byte_tokenizer()
    letter = tokenizer.token_to_id("a")
    backlog, short = asyncio.Queue(), asyncio.Queue()
    count = 5_000
    for i in range(count):
        backlog.put_nowait(Delta(f"heavy-{i}", [letter], "length" if i == count - 1 else None))
    for i in range(3):
        short.put_nowait(Delta("light", [letter], "length" if i == 2 else None))
    client = FakeEngineClient({"heavy": backlog, "light": short})
    heavy_pieces = 0

    async def heavy():
        nonlocal heavy_pieces
        async for _ in generate(client, tokenizer, GenerationSpec([1], {})):
            heavy_pieces += 1

    async def light():
        text = ""
        async for piece in generate(client, tokenizer, GenerationSpec([1], {}, stop=["zzz"])):
            text += piece.text
        return text, heavy_pieces

    heavy_task = asyncio.create_task(heavy())
    text, heavy_done_meanwhile = await asyncio.create_task(light())
    await heavy_task
    assert text == "aaa"
    assert heavy_done_meanwhile < count / 100  # the light request ended while the heavy one had barely started
    assert heavy_pieces == count and client.released == 2
