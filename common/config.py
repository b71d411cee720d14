"""The two configuration files, read into typed records.

conf/server.yml: ports, frontends, socket addresses, timeouts and limits.
conf/inference.yml: the model and vLLM's engine arguments (passed straight to EngineArgs).
SERVER_CONFIG and INFERENCE_CONFIG name other files; unknown keys are an error.
"""
import os
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

ROOT = Path(__file__).resolve().parent.parent


class EngineLink(msgspec.Struct, forbid_unknown_fields=True):
    # Empty means ipc:// sockets in run_dir.
    request_address: str = ""
    output_address: str = ""
    heartbeat_interval_s: float = 0.5
    heartbeat_timeout_s: float = 2.5
    hello_interval_s: float = 0.2
    # Messages queued per peer before PUB drops (a gap the frontend detects) or PUSH blocks.
    send_hwm: int = 100_000
    receive_hwm: int = 100_000
    # CURVE encryption and key authentication on both sockets; required for a tcp:// address
    # that leaves the host. Keys: `python -m common.curve DIR`.
    curve: bool = False
    curve_keys_dir: str = ""


class RequestLimits(msgspec.Struct, forbid_unknown_fields=True):
    """Bounds on what one request may ask for; past one, a 400 that names the field."""

    max_prompts: int = 256  # prompts in one /v1/completions request
    max_generations: int = 256  # prompts x n: the engine requests one HTTP request becomes
    max_stop_strings: int = 64
    max_stop_string_chars: int = 256
    max_bad_words: int = 64
    max_messages: int = 2048
    max_tools: int = 128
    max_logit_bias: int = 1024
    # Nesting of tool parameters, response_format and structured_outputs schemas, in JSON levels.
    max_schema_depth: int = 64
    # Rendering a chat template past this is a 400; the rendered prompt may hold at most this many characters.
    chat_template_timeout_s: float = 5.0
    max_chat_prompt_chars: int = 2_097_152


class ServerConfig(msgspec.Struct, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 7080
    frontends: int = 2
    frontend_base_port: int = 7081
    # Every frontend binds host:port itself with SO_REUSEPORT (the kernel spreads connections) and
    # no nginx runs: for hosts without nginx, such as the benchmark GPU host.
    reuse_port: bool = False
    run_dir: str = ".run"
    data_dir: str = ".data"
    log_level: str = "info"
    max_body_bytes: int = 1_048_576
    # When set, every route but /health needs "Authorization: Bearer <api_key>" (or API_KEY in the env).
    api_key: str = ""
    # Generations one frontend runs at once; past it, 503 with Retry-After at once.
    max_in_flight: int = 1024
    # A request still running after this is answered 504 and aborted in the engine.
    request_timeout_s: float = 600.0
    # On SIGTERM a frontend stops taking requests and lets running ones finish for this long.
    drain_timeout_s: float = 30.0
    # How /v1/chat/completions finds tool calls in the text under tool_choice "auto": "hermes"
    # (<tool_call>{...}</tool_call>), "llama3_json" ({"name": ..., "parameters": ...}), or "" for none.
    tool_parser: Literal["hermes", "llama3_json", ""] = "hermes"
    # Chat templates sent in a request (`chat_template`, `chat_template_kwargs.chat_template`) are
    # refused unless this is true: a template is code the server runs (vLLM's --trust-request-chat-template).
    trust_request_chat_template: bool = False
    limits: RequestLimits = msgspec.field(default_factory=RequestLimits)
    engine: EngineLink = msgspec.field(default_factory=EngineLink)

    def path(self, value: str) -> Path:
        return (ROOT / value).resolve()

    @property
    def request_address(self) -> str:
        return self.engine.request_address or f"ipc://{self.path(self.run_dir)}/engine-requests"

    @property
    def output_address(self) -> str:
        return self.engine.output_address or f"ipc://{self.path(self.run_dir)}/engine-outputs"


class InferenceConfig(msgspec.Struct, forbid_unknown_fields=True):
    # A hub id or a directory in HF format; empty serves the embedded default model.
    model: str = ""
    # Pins the engine worker to these GPUs; empty leaves CUDA_VISIBLE_DEVICES as it is.
    cuda_visible_devices: str = ""
    # Gibibytes of memory for the KV cache when vLLM runs on the CPU.
    cpu_kv_cache_gib: int = 2
    engine_args: dict[str, Any] = {}


def _load(kind: type, env: str, default: str):
    file = Path(os.environ.get(env) or ROOT / "conf" / default)
    data = yaml.safe_load(file.read_text()) or {}
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as error:
        raise SystemExit(f"{file}: {error}") from None


def load_server() -> ServerConfig:
    return _load(ServerConfig, "SERVER_CONFIG", "server.yml")


def load_inference() -> InferenceConfig:
    return _load(InferenceConfig, "INFERENCE_CONFIG", "inference.yml")
