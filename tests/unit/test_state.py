"""A pool's tokenizer follower outlives a tokenizer that fails to load, and tries again; the engine
client here is real but never connected, and the loads are a fake (FakeTokenizer)."""
import asyncio

from common.config import ServerConfig
from common.messages import Welcome
from frontend.run import pool
from frontend.run.state import FrontendState


class FakeTokenizer:
    """Fails to load the first `failures` times, as a half-written model directory would."""

    failures = 2
    attempts = 0

    def __init__(self, source: str):
        FakeTokenizer.attempts += 1
        if FakeTokenizer.attempts <= FakeTokenizer.failures:
            raise OSError(f"no tokenizer in {source}")
        self.source = source


async def test_a_failed_tokenizer_load_is_logged_and_tried_again(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(pool, "Tokenizer", FakeTokenizer)
    monkeypatch.setattr(pool, "TOKENIZER_RETRY_S", 0.01)
    frontend = FrontendState(ServerConfig(run_dir=str(tmp_path)), "test-0~unit")
    model = frontend.pools[0]
    model.client.links[0].welcome = Welcome("engine-1", "test-0~unit", "model", "/models/m", 64)
    follower = asyncio.create_task(model.follow_tokenizer())
    try:
        for _ in range(200):
            if model._tokenizer is not None:
                break
            await asyncio.sleep(0.01)
        assert not follower.done()
        assert model._tokenizer.source == "/models/m" and FakeTokenizer.attempts == 3
        assert caplog.text.count("could not load the tokenizer from /models/m") == 2
    finally:
        follower.cancel()
        for link in model.client.links:
            link.push.close()
            link.sub.close()
