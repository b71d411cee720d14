"""The frontend without vLLM: the real Starlette app (frontend.app.build_app) served by a real uvicorn
on a free loopback port, on a thread of its own, talking over real ZeroMQ sockets to a ScriptedEngine
(tests/unit/fake_engine.py) on another thread, with the embedded model's tokenizer.

A real server, not httpx's in-process ASGI transport: that one buffers a whole answer before
returning it, cannot leave in the middle of a stream, and runs no lifespan, while the app's streams,
disconnect handling, body limits and engine client's start and stop are what these tests are about.
"""
import socket
import threading
import time
from pathlib import Path

import httpx
import msgspec
import uvicorn

from common import default_model, vision_model
from common.config import ServerConfig
from frontend.__main__ import DrainingServer
from frontend.app import build_app
from frontend.bounded_head import BoundedHeadProtocol
from tests.unit.fake_engine import ScriptedEngine


def engine_addresses(run_dir: str) -> dict:
    return {"request_address": f"ipc://{run_dir}/engine-requests", "output_address": f"ipc://{run_dir}/engine-outputs"}


class Frontend:
    """One frontend app, built from the server.yml keys a test chooses, and its scripted engine."""

    def __init__(self, run_dir: str, tokenizer, overlay: dict, engine_first: bool = True, lora_updates: bool = False,
                 models: tuple[str, ...] = (), vision_tokenizer=None):
        """`models`: the served names of more models, each a pool of one scripted engine of its own after
        the first pool (the embedded model's); `pool_engines` has each by name. `vision_tokenizer`: one
        more pool, the tiny vision model's (common/vision_model.py), whose engine takes images."""
        if vision_tokenizer is not None:
            models = (*models, vision_model.NAME)
        self.tokenizer, self.lora_updates = tokenizer, lora_updates
        # The engines are reached as remote ones, so that no inference.yml is read for their count.
        engines = [engine_addresses(run_dir)]
        self.model_servers = {}
        for index, model in enumerate(models):
            Path(f"{run_dir}/p{index}").mkdir(exist_ok=True)
            self.model_servers[model] = ServerConfig(run_dir=f"{run_dir}/p{index}")
            engines.append({**engine_addresses(f"{run_dir}/p{index}"), "model": model})
        self.server = msgspec.convert({"run_dir": run_dir, "local_engines": False, "engines": engines,
                                       **overlay}, ServerConfig)
        self.engine = self.start_engine() if engine_first else None
        self.pool_engines = {model: self.start_pool_engine(model, server, vision_tokenizer)
                             for model, server in self.model_servers.items()}
        self.app = build_app(self.server, frontend_id=f"harness-0~{id(self):x}")
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        config = uvicorn.Config(self.app, loop="uvloop", http=BoundedHeadProtocol, log_level="warning", access_log=False,
                                port=listener.getsockname()[1],
                                timeout_graceful_shutdown=self.server.drain_timeout_s + 3)
        self.uvicorn = DrainingServer(config)
        self.thread = threading.Thread(target=self.uvicorn.run, kwargs={"sockets": [listener]}, daemon=True,
                                       name="harness-frontend")
        self.http = self.client()
        self.thread.start()
        self.wait(lambda: self.health().status_code in (200, 503), 30, "the frontend to listen")
        if engine_first:
            self.wait(lambda: self.health().status_code == 200 and self.health().json()["status"] == "ok", 30,
                      "the frontend to be welcomed by every pool and turn healthy")

    def start_pool_engine(self, model: str, server: ServerConfig, vision_tokenizer) -> ScriptedEngine:
        if model != vision_model.NAME:
            return ScriptedEngine.start(server, self.tokenizer, model, self.lora_updates)
        image_token_id = vision_tokenizer.hf.convert_tokens_to_ids("<image>")
        return ScriptedEngine.start(server, vision_tokenizer, model, image_token_id=image_token_id)

    def start_engine(self) -> ScriptedEngine:
        self.engine = ScriptedEngine.start(self.server, self.tokenizer, default_model.NAME, self.lora_updates)
        return self.engine

    @property
    def state(self):
        return self.app.state.frontend

    def client(self, **kwargs) -> httpx.Client:
        """An HTTP client of this frontend (and for the SDKs' `http_client`). Plain HTTP on loopback:
        no TLS context is built, which costs tens of milliseconds of CPU a client."""
        return httpx.Client(base_url=self.url, timeout=30, verify=False, **kwargs)

    def health(self) -> httpx.Response:
        try:
            return self.http.get("/health", timeout=5)
        except httpx.HTTPError as error:
            return httpx.Response(599, text=str(error))

    def post(self, path: str, body=None, **kwargs) -> httpx.Response:
        return self.http.post(path, json=body, **kwargs)

    def stream_lines(self, path: str, body: dict, **kwargs) -> list[str]:
        """A streamed answer's non-empty lines."""
        with self.http.stream("POST", path, json=body, **kwargs) as response:
            assert response.status_code == 200, response.read()
            return [line for line in response.iter_lines() if line]

    def nothing_left(self) -> bool:
        """No request holds a slot here or runs in the engine."""
        return self.state.in_flight == 0 and all(engine.idle for engine in self.engines)

    def engine_of(self, model: str) -> ScriptedEngine:
        return self.pool_engines[model]

    @property
    def engines(self) -> list[ScriptedEngine]:
        return [engine for engine in (self.engine, *self.pool_engines.values()) if engine is not None]

    def reset(self) -> None:
        for engine in self.engines:
            engine.script.clear()
            engine.cached_tokens = 0
        self.wait(self.nothing_left, 10, "the requests of the test before to end")

    @staticmethod
    def wait(predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.02)

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        self.thread.join(30)
        self.http.close()
        for engine in self.engines:
            engine.stop()


class Frontends:
    """Harness frontends by overlay, each started on first use and kept until the session ends."""

    def __init__(self, run_root, tokenizer):
        self.run_root, self.tokenizer = run_root, tokenizer
        self.started: dict[str, Frontend] = {}

    def get(self, lora_updates: bool = False, models: tuple[str, ...] = (), vision: bool = False,
            **overlay) -> Frontend:
        """The frontend for these server.yml keys; `lora_updates`: its engine takes LoRA adapters at run time;
        `models`: more pools, `vision`: the tiny vision model's pool too (Frontend)."""
        key = msgspec.json.encode([overlay, lora_updates, models, vision], order="sorted").decode()
        if key not in self.started:
            run_dir = self.run_root / f"f{len(self.started)}"  # ipc:// paths must stay short
            run_dir.mkdir()
            self.started[key] = Frontend(str(run_dir), self.tokenizer, overlay, lora_updates=lora_updates,
                                         models=models, vision_tokenizer=self.vision_tokenizer() if vision else None)
        frontend = self.started[key]
        frontend.reset()
        return frontend

    def vision_tokenizer(self):
        from frontend.text.tokenizer import Tokenizer

        return Tokenizer(str(vision_model.ensure(Path(self.tokenizer.source).parent)))

    def stop(self) -> None:
        for frontend in self.started.values():
            frontend.stop()
