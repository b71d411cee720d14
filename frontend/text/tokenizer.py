"""The model's tokenizer, loaded from the same place the engine loaded the model."""
import asyncio
from concurrent.futures import ThreadPoolExecutor

from transformers import AutoTokenizer

from frontend import tracing


class Tokenizer:
    def __init__(self, source: str):
        self.source = source
        self.hf = AutoTokenizer.from_pretrained(source)
        self.backend = self.hf.backend_tokenizer  # the Rust tokenizer: fast encode and decode
        self.vocab_size = len(self.hf)  # added tokens included: every id a request may name is below it
        self.batcher = EncodeBatcher(self.backend)

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text).ids

    async def encode_prompts(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        """Prompt ids, encoded off the event loop together with other requests' prompts."""
        with tracing.span("tokenize", **{"llm.prompts": len(texts)}):
            return await self.batcher.encode(texts, add_special_tokens)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)


# Up to this many characters (about 200 tokens of English) a prompt that finds the batcher idle is
# encoded on the event loop: it takes about as long as the hop to the worker thread and back.
INLINE_CHARS = 1000


class EncodeBatcher:
    """Encodes the prompts of requests that arrive while a batch is being encoded in one call, on
    a worker thread. A 1024-token prompt takes about 2 ms to encode, and `encode()` holds the GIL:
    on the event loop, a burst of long prompts would hold up every stream of this frontend and
    each other. `encode_batch()` releases the GIL and spreads the batch over the cores. A short
    prompt that finds nothing being encoded is encoded at once, where it is."""

    def __init__(self, backend):
        self.backend = backend
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="tokenizer")
        self.waiting: list[tuple[list[str], bool, asyncio.Future]] = []
        self.busy = False

    async def encode(self, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        if not self.busy and sum(map(len, texts)) <= INLINE_CHARS:
            return [self.backend.encode(text, add_special_tokens=add_special_tokens).ids for text in texts]
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.waiting.append((texts, add_special_tokens, future))
        if not self.busy:
            self.busy = True
            loop.call_soon(self.start_batch, loop)  # also takes what arrives in this loop turn
        return await future

    def start_batch(self, loop) -> None:
        batch, self.waiting = self.waiting, []
        encoding = loop.run_in_executor(self.executor, self.encode_batch, batch)
        encoding.add_done_callback(lambda done: self.finish_batch(loop, batch, done))

    def encode_batch(self, batch: list) -> list[list[list[int]] | Exception]:
        """On the worker thread: each request's ids, or the error its own texts raised."""
        results: list = [None] * len(batch)
        for flag in (True, False):
            members = [index for index, (_, add_special_tokens, _) in enumerate(batch) if add_special_tokens is flag]
            texts = [text for index in members for text in batch[index][0]]
            if not texts:
                continue
            try:
                encodings = iter(self.backend.encode_batch(texts, add_special_tokens=flag))
            except Exception:  # one request's text the tokenizer refuses: find which, alone
                for index in members:
                    results[index] = self.encode_alone(batch[index][0], flag)
                continue
            for index in members:
                results[index] = [next(encodings).ids for _ in batch[index][0]]
        return results

    def encode_alone(self, texts: list[str], add_special_tokens: bool) -> list[list[int]] | Exception:
        try:
            return [encoding.ids for encoding in self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)]
        except Exception as error:
            return error

    def finish_batch(self, loop, batch: list, done: asyncio.Future) -> None:
        results = done.result() if not done.exception() else [done.exception()] * len(batch)
        for (_, _, future), result in zip(batch, results):
            if future.done():  # its request went away meanwhile
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
        if self.waiting:
            self.start_batch(loop)
        else:
            self.busy = False
