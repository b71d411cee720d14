"""What one frontend process holds: its engine client and the model's tokenizer. Nothing in it
outlives a request, so any number of frontends can run side by side."""
import asyncio
import logging

from common.config import ServerConfig
from frontend.engine_client import EngineClient, EngineUnavailable
from frontend.http import HTTPError
from frontend.text.tokenizer import Tokenizer

log = logging.getLogger(__name__)

TOKENIZER_RETRY_S = 5.0


class FrontendState:
    def __init__(self, server: ServerConfig, frontend_id: str):
        self.server = server
        self.frontend_id = frontend_id
        self.client = EngineClient(server, frontend_id)
        self._tokenizer: Tokenizer | None = None
        self.draining = False  # set on SIGTERM: running requests finish, /health says 503
        self.tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self.client.start()
        self.tasks.append(asyncio.create_task(self.follow_tokenizer()))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await self.client.stop()

    async def end_running_requests(self, after_s: float) -> None:
        """The drain's end: what still runs after `after_s` ends with a 503 "shutting down", an error
        event in its stream's own shape, rather than a connection cut mid-stream."""
        await asyncio.sleep(after_s)
        if self.client.in_flight:
            log.warning("drain time over: ending %d requests still running", self.client.in_flight)
        self.client.shut_down("the server is shutting down")

    async def follow_tokenizer(self) -> None:
        """Load the tokenizer of whatever model the engine that welcomed us serves. A load that fails
        is logged and tried again a little later; until one succeeds the frontend is not ready."""
        while True:
            welcome = self.client.welcome
            if welcome is not None and (self._tokenizer is None or self._tokenizer.source != welcome.tokenizer):
                log.info("loading the tokenizer from %s", welcome.tokenizer)
                try:
                    self._tokenizer = await asyncio.to_thread(Tokenizer, welcome.tokenizer)
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
            raise EngineUnavailable("the engine is not available")
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        return self.client.welcome.max_model_len

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
