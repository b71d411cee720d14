"""The two configuration files, read into typed records.

conf/server.yml: ports, frontends, socket addresses, timeouts and limits.
conf/inference.yml: the model and vLLM's engine arguments (passed straight to EngineArgs).
SERVER_CONFIG and INFERENCE_CONFIG name other files; unknown keys are an error.
"""
import os
import re
from pathlib import Path
from urllib.parse import urlparse
from typing import Annotated, Any, Literal

import msgspec
import yaml

from common import default_model

ROOT = Path(__file__).resolve().parent.parent


class EngineLinkConfig(msgspec.Struct, forbid_unknown_fields=True):
    """How frontends and engine workers reach each other (server.yml's `engine:`); the live link is
    frontend.engine_client.EngineLink."""

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


class RemoteEngine(msgspec.Struct, forbid_unknown_fields=True):
    """An engine worker on another host (tcp://), reached with the settings of `engine`."""
    request_address: str
    output_address: str
    # The served name of the model it runs, whose pool it joins; empty: the first pool.
    model: str = ""


class TenantConfig(msgspec.Struct, forbid_unknown_fields=True):
    """One team sharing the service (server.yml's `tenants:`, docs/tenants.md): its keys and its limits."""
    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    # "sha256:<64 hex digits>" of each API key (python -m frontend.tenants hash): the file holds no key.
    api_key_hashes: list[Annotated[str, msgspec.Meta(pattern=r"^sha256:[0-9a-f]{64}$")]]
    # The models (pools' served names) it may use; empty: every model.
    models: list[str] = []
    # A generation's max_tokens is lowered to this (finish_reason "length" says where it stopped); 0: no cap.
    max_tokens: Annotated[int, msgspec.Meta(ge=0)] = 0
    # Requests (POST) it may have open at once on each frontend; past it, 429. 0: no limit.
    max_concurrent: Annotated[int, msgspec.Meta(ge=0)] = 0
    # Quotas over the whole fleet in each minute of the wall clock, as the engines count them; past one,
    # 429 until the minute turns. 0: none.
    requests_per_minute: Annotated[int, msgspec.Meta(ge=0)] = 0
    tokens_per_minute: Annotated[int, msgspec.Meta(ge=0)] = 0
    # Its requests' timeout in place of server.yml's request_timeout_s; 0: that one.
    request_timeout_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    # Its requests' priority class (priority.classes), and the best its requests may ask for; "": the
    # priority's default_class.
    priority_class: str = ""


class PriorityClass(msgspec.Struct, forbid_unknown_fields=True):
    """One class of requests (docs/tenants.md, "Priorities")."""
    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,32}$")]
    # The share of an engine's max_num_seqs that requests of this class may hold at once (running, or
    # waiting in vLLM's queue); the engine worker holds the class's further requests back until one ends,
    # so that the better classes always find free slots. 1: no bound.
    max_share: Annotated[float, msgspec.Meta(gt=0, le=1)] = 1.0


class PriorityConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Priority classes: a request's class is its vLLM priority, the class's place in `classes` (0, the
    first, is scheduled first) under engine_args' `scheduling_policy: priority`."""
    classes: list[PriorityClass] = msgspec.field(default_factory=lambda: [
        PriorityClass("interactive"), PriorityClass("standard"), PriorityClass("batch", max_share=0.5)])
    # The class of api_key's tenant, of requests while no key is needed, and of tenants that name none.
    default_class: str = "standard"

    def __post_init__(self):
        names = [c.name for c in self.classes]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"priority.classes must name at least one class, each once; got {names}")
        self.rank(self.default_class, "priority.default_class")

    def rank(self, name: str, field: str) -> int:
        """The place of the class `name` (its vLLM priority); ValueError naming `field` if there is none."""
        for place, c in enumerate(self.classes):
            if c.name == name:
                return place
        raise ValueError(f"{field}: {name!r} is no priority class (priority.classes: "
                         f"{', '.join(c.name for c in self.classes)})")


class RouterConfig(msgspec.Struct, forbid_unknown_fields=True):
    """How each frontend picks the engine for a request (docs/fleet.md)."""
    # "prefix": the engine likely to hold the prompt's prefix, unless load says otherwise; "load": least
    # loaded; "round_robin" and "vllm_dp" (vLLM's own data-parallel balancer): to compare against.
    policy: Literal["prefix", "load", "round_robin", "vllm_dp"] = "prefix"
    # How "prefix" and "load" weigh an engine's load (frontend/load_view.py): "tokens", the prefill queued
    # there and the decoding a new request would share, in prefill tokens' worth of compute, from each
    # engine's LoadReport; "requests", vLLM's 4 x waiting + running.
    load_score: Literal["tokens", "requests"] = "tokens"
    # Tokens of load by which an engine holding a prompt's prefix may exceed the least loaded one and
    # still get the prompt (load_score "tokens"): one prefill step of vLLM's default on an H100 or H200.
    affinity_window_tokens: int = 8192
    # ... or while its load is at most this many times the least loaded one's (0: off). Under saturation
    # every engine queues far more than one window, and by tokens alone a held prefix leaves whenever the
    # queues differ by a few prompts.
    affinity_window_ratio: float = 1.5
    # Tokens per hashed block of a prompt; vLLM's default KV block size on GPU.
    block_size: int = 16
    # A prompt goes to the engine holding its prefix when the prefix covers at least this share of it.
    min_match_ratio: float = 0.5
    # Load (4 x waiting + running) is out of balance, and routing goes by load alone, when the most
    # and the least loaded engines differ by more than abs AND the most loaded exceeds rel x the least
    # (load_score "requests").
    balance_abs_threshold: int = 32
    balance_rel_threshold: float = 1.5
    # Prompt blocks remembered per engine (least recently routed forgotten first): the approximate
    # picture of that engine's prefix cache.
    blocks_per_engine: int = 200_000
    # Where the router learns which engine holds a prefix. "exact": each engine reports the blocks its
    # prefix cache takes in and drops (vLLM's KV-cache events), and this frontend's own sends count
    # only until the engine's report can have come; "approximate": only what this frontend sent where.
    placement: Literal["exact", "approximate"] = "exact"
    # Prompt blocks each frontend keeps of one engine's reports (exact placement); past it, the earliest
    # reported are forgotten. 2^20 blocks of 16 tokens (16.8 M tokens) is twice the KV cache of Llama-3-8B
    # on 8 H200s, and takes about 75 MiB of each frontend's memory per engine when full.
    max_reported_blocks: int = 1_048_576


class RequestLimits(msgspec.Struct, forbid_unknown_fields=True):
    """Bounds on what one request may ask for; past one, a 400 that names the field."""

    max_prompts: int = 256  # prompts in one /v1/completions request
    max_generations: int = 256  # prompts x n: the engine requests one HTTP request becomes
    max_stop_strings: int = 64
    max_stop_string_chars: int = 256
    max_bad_words: int = 64
    max_messages: int = 2048
    # Content blocks (or parts) of one message, and of all messages, tool results and items of one request.
    max_content_blocks_per_message: int = 512
    max_content_blocks: int = 8192
    max_tools: int = 128
    max_logit_bias: int = 1024
    # Nesting of tool parameters, response_format and structured_outputs schemas, in JSON levels.
    max_schema_depth: int = 64
    # Rendering a chat template past this is a 400; the rendered prompt may hold at most this many characters.
    chat_template_timeout_s: float = 5.0
    max_chat_prompt_chars: int = 2_097_152
    # Inputs of one pooling request (embeddings, /pooling, /classify; score pairs and rerank documents),
    # each an engine request, and their tokens in all.
    max_pooling_inputs: int = 256
    max_pooling_tokens: int = 262_144
    # Images (docs/images.md): per request; bytes of one image as sent or fetched; pixels of one image
    # decoded (4096 x 4096); seconds to fetch one image from an allowed_media_domains URL.
    max_images_per_request: int = 16
    max_image_bytes: int = 10_485_760
    max_image_pixels: int = 16_777_216
    image_fetch_timeout_s: float = 10.0


class CorsConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Which browser pages on other origins may call the API (Starlette's CORSMiddleware), as vLLM's
    --allowed-origins, --allowed-methods, --allowed-headers, --allow-credentials. No origin: none may."""
    allowed_origins: list[str] = []
    allowed_methods: list[str] = msgspec.field(default_factory=lambda: ["*"])
    allowed_headers: list[str] = msgspec.field(default_factory=lambda: ["*"])
    allow_credentials: bool = False

    def __post_init__(self):
        if "*" in self.allowed_origins and self.allow_credentials:
            raise ValueError('cors.allowed_origins ["*"] with cors.allow_credentials true would let every web page '
                             "call the API with its visitors' credentials: list the origins allowed, or set "
                             "allow_credentials false")


class TracingConfig(msgspec.Struct, forbid_unknown_fields=True):
    """OpenTelemetry traces of requests, from the frontends and the engine workers (docs/tracing.md)."""
    # Where spans go over OTLP, e.g. http://collector:4318/v1/traces (http/protobuf) or collector:4317
    # (grpc). Empty: tracing is off, and costs nothing.
    otlp_endpoint: str = ""
    protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    # The share of traces started here that are recorded; a client's traceparent decides for its own
    # (parent-based sampling).
    sample_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0
    service_name: str = "llm-serving"  # the resource's service.name


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
    # "json": one JSON object a log line (time, level, logger, process, message, and a request's id,
    # tenant and trace id), in frontends and engine workers.
    log_format: Literal["text", "json"] = "text"
    # One log line for each HTTP request a frontend answers (method, path, status, seconds) and each
    # request an engine worker ends (how it ended), as vLLM's --enable-log-requests.
    log_requests: bool = False
    max_body_bytes: int = 1_048_576
    # Open connections nginx accepts from one client address; past it, 429. 0: no limit.
    max_connections_per_client: int = 1024
    # When set (or API_KEY in the env), every route but /health needs "Authorization: Bearer <api_key>"
    # or "x-api-key: <api_key>".
    api_key: str = ""
    # When set (or ADMIN_API_KEY in the env), the operator's routes (loading and unloading LoRA adapters)
    # take it, and only it; unset, they refuse everyone.
    admin_api_key: str = ""
    # Teams, each with API keys of its own and limits (docs/tenants.md); with any, every route but the
    # probes needs a key. tenants_file names a YAML file with a `tenants:` list of more, read again on SIGHUP.
    tenants: list[TenantConfig] = []
    tenants_file: str = ""
    # A prompt token found in the prefix cache counts this much of a token against tokens_per_minute.
    cached_token_weight: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.1
    # Host headers answered besides the loopback names (localhost, 127.x.x.x, ::1), which are always
    # answered. Empty: on a loopback `host` only loopback names (a web page a DNS rebinding points at
    # 127.0.0.1 is refused), elsewhere any. ["*"]: any Host.
    allowed_hosts: list[str] = []
    # Generations one frontend runs at once; past it, 503 with Retry-After at once.
    max_in_flight: int = 1024
    # A request still running after this is answered 504 and aborted in the engine.
    request_timeout_s: float = 600.0
    # On SIGTERM a frontend stops taking requests and lets running ones finish for this long; those
    # still running then end with a 503 (in a stream, its protocol's error event).
    drain_timeout_s: float = 30.0
    # How /v1/chat/completions finds tool calls in the text under tool_choice "auto": "hermes"
    # (<tool_call>{...}</tool_call>), "llama3_json" ({"name": ..., "parameters": ...}), or "" for none.
    tool_parser: Literal["hermes", "llama3_json", ""] = "hermes"
    # How chat output splits into reasoning_content and content: "deepseek_r1" (thinking until
    # </think>, with or without <think>), "qwen3" (only between <think> and </think>), or "" for none.
    reasoning_parser: Literal["deepseek_r1", "qwen3", ""] = ""
    # Chat templates sent in a request (`chat_template`, `chat_template_kwargs.chat_template`) are
    # refused unless this is true: a template is code the server runs (vLLM's --trust-request-chat-template).
    trust_request_chat_template: bool = False
    # Hosts whose http(s) image URLs the frontends fetch (exact names, as vLLM's --allowed-media-domains);
    # empty: images come only inline, as data URLs or base64 (docs/images.md).
    allowed_media_domains: list[str] = []
    limits: RequestLimits = msgspec.field(default_factory=RequestLimits)
    cors: CorsConfig = msgspec.field(default_factory=CorsConfig)
    engine: EngineLinkConfig = msgspec.field(default_factory=EngineLinkConfig)
    # false: this host runs no engine worker; its frontends use only `engines` (a frontend-only host).
    local_engines: bool = True
    # A local engine worker that crashes this many times in a row, each time within
    # engine_crash_window_s of its start, is stopped and the service exits naming it. 0: no limit.
    engine_crash_limit: int = 3
    engine_crash_window_s: float = 900.0
    # A request whose engine is lost, drains or stalls goes on on another engine at most this many times
    # (docs/failures.md); 0: never.
    migration_limit: Annotated[int, msgspec.Meta(ge=0)] = 2
    # An engine with requests whose steps have not advanced for this long is stalled: no new requests
    # go to it, and its requests move.
    stall_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    # Engine workers on other hosts, ranked after this host's own engines.
    engines: list[RemoteEngine] = []
    router: RouterConfig = msgspec.field(default_factory=RouterConfig)
    priority: PriorityConfig = msgspec.field(default_factory=PriorityConfig)
    tracing: TracingConfig = msgspec.field(default_factory=TracingConfig)

    def path(self, value: str) -> Path:
        return (ROOT / value).resolve()

    @property
    def request_address(self) -> str:
        return self.local_request_address(0)

    @property
    def output_address(self) -> str:
        return self.local_output_address(0)

    def local_request_address(self, rank: int) -> str:
        return self._local_address(self.engine.request_address, rank, "requests")

    def local_output_address(self, rank: int) -> str:
        return self._local_address(self.engine.output_address, rank, "outputs")

    def _local_address(self, configured: str, rank: int, kind: str) -> str:
        """Engine `rank` of this host: ipc:// in run_dir by default (engine-requests for the first, as
        with one engine), or the configured tcp:// port plus the rank."""
        if not configured:
            name = f"engine-{kind}" if rank == 0 else f"engine-{rank}-{kind}"
            return f"ipc://{self.path(self.run_dir)}/{name}"
        if rank == 0:
            return configured
        url = urlparse(configured)
        if url.scheme != "tcp" or url.port is None:
            raise SystemExit(f"{configured}: several local engines need tcp://host:port addresses (or none)")
        return f"tcp://{url.hostname}:{url.port + rank}" if ":" not in url.hostname else \
            f"tcp://[{url.hostname}]:{url.port + rank}"

    def pool_addresses(self, local_pools: list[tuple[str, int]]) -> dict[str, list[tuple[str, str]]]:
        """The (request, output) address of every engine a frontend talks to, by pool (the served name of
        its model), each pool's by rank: first this host's engine workers, `local_pools` giving each pool's
        name and count (numbered together, pool by pool: InferenceConfig.first_slot), then `engines`. A
        remote engine without `model` joins the first pool; a pool named "" (remote engines only, none
        named) is called what its engines' Welcome says."""
        pools: dict[str, list[tuple[str, str]]] = {}
        slot = 0
        for name, count in local_pools if self.local_engines else []:
            pools[name] = [(self.local_request_address(s), self.local_output_address(s))
                           for s in range(slot, slot + count)]
            slot += count
        for remote in self.engines:
            name = remote.model or next(iter(pools), "")
            pools.setdefault(name, []).append((remote.request_address, remote.output_address))
        return pools


class SimulatorConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The simulated engine of `engine_backend: simulated` (docs/fleet.md, "The simulated engine")."""
    # The step-time profile measured on a real GPU (common/step_time.py); a relative path is from the root.
    profile: str = "bench/profiles/h200-llama-3-8b.json"
    # Each step sleeps time_scale x its modelled time: >1 slows the simulated GPU so a small host keeps up.
    time_scale: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    # Seeds the tokens of requests that give no seed of their own (engine i uses seed + i).
    seed: int = 0
    # Chance that each generated token is EOS (past min_tokens, unless ignore_eos): a mean of 1/p tokens.
    eos_probability: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.005

    @property
    def profile_path(self) -> Path:
        return (ROOT / self.profile).resolve()


# What a pool's `task` sets in vLLM's engine arguments, unless engine_args set it themselves.
TASK_ENGINE_ARGS = {
    "auto": {},
    "generate": {"runner": "generate"},
    "embed": {"runner": "pooling", "convert": "embed"},
    "score": {"runner": "pooling", "convert": "classify"},
    "classify": {"runner": "pooling", "convert": "classify"},
}


class PoolConfig(msgspec.Struct, forbid_unknown_fields=True):
    """One model and its engine workers (a pool): the whole of inference.yml when it serves one model,
    each entry of `models:` when it serves several."""
    # A hub id or a directory in HF format; empty serves the embedded default model.
    model: str = ""
    # The name clients give as `model` (vLLM's --served-model-name); empty: engine_args' served_model_name,
    # else `model`, else the embedded default model's name.
    served_model_name: str = ""
    # "vllm": each engine worker runs vLLM; "simulated": a simulated engine with vLLM's scheduler and
    # KV cache and a GPU's measured step times, without vLLM or a GPU (for measuring fleets).
    engine_backend: Literal["vllm", "simulated"] = "vllm"
    # true: vLLM's own scheduler with one step added, which resumes a moved request's structured-output
    # grammar (engine_worker/resumed_grammar.py); false: vLLM's own scheduler, and grammar-bound
    # requests never move to this pool's engines.
    resume_grammars: bool = True
    simulator: SimulatorConfig = msgspec.field(default_factory=SimulatorConfig)
    # Pins the engine workers to these GPUs; empty leaves CUDA_VISIBLE_DEVICES as it is.
    cuda_visible_devices: str = ""
    # Gibibytes of memory for the KV cache when vLLM runs on the CPU.
    cpu_kv_cache_gib: int = 2
    # The CPUs (ids, as in /proc/cpuinfo) the pool's engine workers run on, with the engine core and vLLM
    # workers each starts; empty: every CPU. vLLM's processes wait for each other by spinning, so on a
    # CPU-only host they take every core they may: leave the frontends one (docs/configuration.md).
    engine_cpus: list[int] = []
    engine_args: dict[str, Any] = {}
    # LoRA adapters served beside the model, name -> path (a directory in PEFT's format, or a hub id);
    # each name is a model id of its own (docs/lora.md).
    lora_modules: dict[str, str] = {}
    # POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's VLLM_ALLOW_RUNTIME_LORA_UPDATING).
    allow_runtime_lora_updating: bool = False
    # The directory run-time loads read from: a lora_path is taken relative to it, and must lie inside it
    # once resolved (symlinks followed). Empty: run-time loads are refused.
    lora_root: str = ""
    # true: a run-time lora_path found nowhere under lora_root that reads as a hub id (org/name) is
    # downloaded from the Hugging Face hub, as vLLM does; false: never.
    lora_hub_downloads: bool = False
    # What the pool serves (docs/pooling.md): "auto" takes vLLM's detection from the model's architecture
    # and files; "generate", "embed", or "score"/"classify" (a sequence classifier, such as a cross-encoder)
    # set vLLM's runner and convert for a model detected otherwise.
    task: Literal["auto", "generate", "embed", "score", "classify"] = "auto"

    @property
    def served_name(self) -> str:
        """What the model is called in /v1/models, in requests' `model` and in vLLM's own metrics."""
        if self.served_model_name:
            return self.served_model_name
        names = self.engine_args.get("served_model_name")
        if names:
            return names if isinstance(names, str) else names[0]
        return self.model or default_model.NAME

    @property
    def data_parallel_size(self) -> int:
        """Engine workers on this host, as `vllm serve --data-parallel-size`; each a whole replica."""
        return int(self.engine_args.get("data_parallel_size", 1))

    @property
    def tensor_parallel_size(self) -> int:
        return int(self.engine_args.get("tensor_parallel_size", 1))

    @property
    def serves_lora(self) -> bool:
        return bool(self.lora_modules) or self.allow_runtime_lora_updating

    def vllm_engine_args(self) -> dict[str, Any]:
        """What goes to EngineArgs: data parallelism is ours (separate engine workers), not vLLM's.
        Adapters turn vLLM's LoRA support on unless engine_args say otherwise."""
        args = {key: value for key, value in self.engine_args.items() if key != "data_parallel_size"}
        if self.serves_lora:
            args.setdefault("enable_lora", True)
        for key, value in TASK_ENGINE_ARGS[self.task].items():
            args.setdefault(key, value)
        return args

    def gpus_of(self, rank: int, all_gpus: int | None = None) -> str:
        """CUDA_VISIBLE_DEVICES of local engine `rank`: GPUs rank*tp .. rank*tp+tp-1 of
        cuda_visible_devices (or of the host's GPUs); "" leaves the environment as it is."""
        return gpus_of(rank, self.tensor_parallel_size, self.data_parallel_size, self.cuda_visible_devices, all_gpus)


class InferenceConfig(PoolConfig, forbid_unknown_fields=True):
    """inference.yml: one model at the top level, or several under `models:` (docs/pools.md)."""
    # Each entry a pool of its own; when given, the keys above stay unset.
    models: list[PoolConfig] = []

    def __post_init__(self):
        if not self.models:
            return
        unset = PoolConfig()
        moved = [name for name in PoolConfig.__struct_fields__ if getattr(self, name) != getattr(unset, name)]
        if moved:
            raise ValueError(f"with `models`, every model's keys go in its entry: move {', '.join(moved)} into one")
        # A request's model names one pool: a model or a LoRA adapter of one, never two of them.
        names = [name for pool in self.models for name in (pool.served_name, *pool.lora_modules)]
        if duplicate := next((name for name in names if names.count(name) > 1), None):
            raise ValueError(f"two models or LoRA adapters are served as {duplicate!r}: give each a name of its own")

    @property
    def pools(self) -> list[PoolConfig]:
        return self.models or [self]

    def first_slot(self, pool: int) -> int:
        """The local engine workers of every pool are numbered together (their sockets, orphans and
        event sockets): pool `pool`'s rank r is slot first_slot(pool) + r."""
        return sum(config.data_parallel_size for config in self.pools[:pool])

    @property
    def local_engines(self) -> int:
        return self.first_slot(len(self.pools))

    def program(self, pool: int, rank: int) -> str:
        """The supervisord program of a local engine worker: engine-<rank> while there is one pool, else
        engine-<served name>-<rank>, the name made safe for supervisord and file names."""
        if len(self.pools) == 1:
            return f"engine-{rank}"
        return f"engine-{re.sub(r'[^A-Za-z0-9_.-]+', '-', self.pools[pool].served_name)}-{rank}"


def listed_gpus(visible: str) -> list[str]:
    """The GPUs a cuda_visible_devices value lists, in order, one entry per mention ("0,0" is GPU 0 twice)."""
    return [gpu.strip() for gpu in visible.split(",") if gpu.strip()]


def gpus_of(rank: int, tp: int, dp: int, visible: str, all_gpus: int | None) -> str:
    if visible:
        pool = listed_gpus(visible)
    elif dp > 1 and all_gpus:
        pool = [str(index) for index in range(all_gpus)]
    else:
        return visible  # one engine, or no GPU known: as before, leave CUDA_VISIBLE_DEVICES alone
    if dp == 1 and rank == 0:
        return ",".join(pool)
    wanted = pool[rank * tp:(rank + 1) * tp]
    if len(wanted) < tp:
        raise SystemExit(f"engine {rank} needs GPUs {rank * tp}..{rank * tp + tp - 1} but only {len(pool)} "
                         f"are there ({dp} engines x tensor_parallel_size {tp})")
    return ",".join(wanted)


def config_file(env: str, default: str) -> Path:
    return Path(os.environ.get(env) or ROOT / "conf" / default)


def _load(kind: type, env: str, default: str, file: Path | None = None):
    file = file or config_file(env, default)
    data = yaml.safe_load(file.read_text()) or {}
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as error:
        raise SystemExit(f"{file}: {error}") from None


class TenantsFile(msgspec.Struct, forbid_unknown_fields=True):
    """The file server.yml's tenants_file names."""
    tenants: list[TenantConfig] = []


RESERVED_TENANTS = ("default", "admin")  # the tenants of api_key and admin_api_key


def load_tenants(server: ServerConfig) -> list[TenantConfig]:
    """server.yml's tenants, then tenants_file's (relative to the checkout); ValueError names what is
    wrong: the file, a name taken, a key held twice."""
    tenants = list(server.tenants)
    if server.tenants_file:
        path = server.path(server.tenants_file)
        try:
            tenants += msgspec.convert(yaml.safe_load(path.read_text()) or {}, TenantsFile).tenants
        except (OSError, yaml.YAMLError, msgspec.ValidationError) as error:
            raise ValueError(f"{path}: {error}") from None
    names, digests = set(RESERVED_TENANTS), set()
    for tenant in tenants:
        if tenant.name in names:
            raise ValueError(f"tenants: the name {tenant.name!r} is given twice or reserved "
                             f"({' and '.join(RESERVED_TENANTS)} are the tenants of api_key and admin_api_key)")
        names.add(tenant.name)
        if tenant.priority_class:
            server.priority.rank(tenant.priority_class, f"tenants: {tenant.name!r}'s priority_class")
        if digests & set(tenant.api_key_hashes):
            raise ValueError(f"tenants: {tenant.name!r} holds a key another tenant holds too")
        digests |= set(tenant.api_key_hashes)
    return tenants


def load_server() -> ServerConfig:
    return _load(ServerConfig, "SERVER_CONFIG", "server.yml")


def load_inference(file: Path | None = None) -> InferenceConfig:
    """INFERENCE_CONFIG's file (conf/inference.yml by default), or `file`."""
    return _load(InferenceConfig, "INFERENCE_CONFIG", "inference.yml", file)
