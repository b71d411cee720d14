"""One model as a frontend serves it: its pool of engine workers (an EngineClient, which routes among
them) and its tokenizer, loaded from wherever those engines loaded the model."""
import asyncio
import logging

from frontend.engine_client import EngineClient, EngineUnavailable
from frontend.http import HTTPError
from frontend.metrics import open_series
from frontend.text.tokenizer import Tokenizer

log = logging.getLogger(__name__)

TOKENIZER_RETRY_S = 5.0
# What a route's task asks of a model, as a 400 says it.
TASK_ROUTES = {
    "generate": "generates text",
    "embed": "embeds (an embedding model)",
    "classify": "classifies (a sequence classifier or cross-encoder)",
}


class Pool:
    def __init__(self, client: EngineClient):
        self.client = client
        self._tokenizer: Tokenizer | None = None

    @property
    def model(self) -> str:
        return self.client.model

    async def follow_tokenizer(self) -> None:
        """Load the tokenizer of whatever model the engine that welcomed us serves. A load that fails
        is logged and tried again a little later; until one succeeds the pool is not ready."""
        while True:
            welcome = self.client.welcome
            if welcome is not None and (self._tokenizer is None or self._tokenizer.source != welcome.tokenizer):
                log.info("loading the tokenizer of %s from %s", welcome.model, welcome.tokenizer)
                try:
                    self._tokenizer = await asyncio.to_thread(Tokenizer, welcome.tokenizer)
                    open_series(self.model)
                except Exception:
                    log.exception("could not load the tokenizer from %s; trying again in %g s",
                                  welcome.tokenizer, TOKENIZER_RETRY_S)
                    await asyncio.sleep(TOKENIZER_RETRY_S)
            await asyncio.sleep(0.1)

    @property
    def ready(self) -> bool:
        welcome = self.client.welcome
        return (
            self.client.heartbeat_fresh()
            and self._tokenizer is not None
            and self._tokenizer.source == welcome.tokenizer
        )

    @property
    def tokenizer(self) -> Tokenizer:
        if not self.ready:
            raise EngineUnavailable(f"the engines of {self.model or 'the model'} are not available")
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        return self.client.welcome.max_model_len

    @property
    def image_token_id(self) -> int | None:
        """The token the chat template writes for each image; None: the model takes no images."""
        return self.client.welcome.image_token_id

    @property
    def tasks(self) -> list[str]:
        """vLLM's tasks for the model (its engines' Welcome): "generate", or pooling tasks."""
        return self.client.welcome.tasks

    def check_task(self, task: str, name: str) -> None:
        """A 400 naming `model` when the model `name` (this pool's) cannot do `task`."""
        if task in self.tasks:
            return
        does = "generates text" if "generate" in self.tasks else f"is a pooling model ({', '.join(self.tasks)})"
        wants = TASK_ROUTES.get(task, task)
        raise HTTPError(400, f"the model {name[:256]!r} {does}; this route needs a model that {wants}", "model")

    async def encode(self, text: str) -> list[int]:
        return (await self.tokenizer.encode_prompts([text]))[0]

    def check_context(self, prompt_tokens: int, max_tokens: int, field: str = "max_tokens") -> None:
        limit = self.max_model_len
        if prompt_tokens + max_tokens > limit:
            raise HTTPError(
                400,
                f"the prompt ({prompt_tokens} tokens) plus {field} ({max_tokens}) is more than the "
                f"model's context of {limit} tokens",
                field,
            )
