"""Every message that crosses a process boundary, and nothing else.

Frontends PUSH `EngineRequest`s to the engine's PULL socket. The engine PUBlishes
`EngineOutput`s: on each frontend's own topic (`topic_for(frontend_id)`) a `Welcome` and then one
`StepOutput` per engine step that advanced any of that frontend's requests, numbered 1, 2, 3, …
after the Welcome (and from an engine reporting its prefix cache a `CachedBlocks` snapshot after
the Welcome, and after each `Resync` the frontend sends); on the broadcast topic a `Heartbeat`
every heartbeat interval, a `LoadReport` after each engine step that changed its load (at most one a
step, numbered 1, 2, 3, … per engine: each is whole, so a lost one costs nothing but its news),
`CachedBlocks` as its prefix cache changes (numbered per engine: a gap, or a `LoadReport` or
`Heartbeat` naming a later number, means one was lost, and the frontend sends `Resync`), and a
`Goodbye` when the engine shuts down. Each message is msgpack: a type tag first, then the fields in
order.
"""
from typing import Any

import msgspec


class TraceContext(msgspec.Struct, array_like=True, omit_defaults=True):
    """W3C trace context (docs/tracing.md): the frontend's span that the engine's spans of a request are
    children of. Only a sampled request carries one."""

    trace_id: bytes  # 16 bytes
    span_id: bytes  # 8 bytes
    state: str = ""  # the tracestate header, as the client sent it


class Add(msgspec.Struct, tag="add", array_like=True):
    request_id: str
    frontend_id: str
    prompt_token_ids: list[int]
    # Keyword arguments for vLLM's SamplingParams, passed through as they are, except
    # "structured_outputs": a plain dict (json, regex, choice, grammar or json_object) that the
    # engine turns into vLLM's StructuredOutputsParams.
    sampling: dict[str, Any]
    lora: str | None = None  # the name of the LoRA adapter to apply; None: the base model
    # A request moved here from a lost engine: its prompt's last `resumed_tokens` ids are the output it
    # had generated, which its structured-output grammar resumes after (engine_worker/resumed_grammar.py).
    resumed_tokens: int = 0
    # A pooling request (embed, classify) instead of a generation: keyword arguments for vLLM's
    # PoolingParams (task, dimensions, use_activation, extra_kwargs); `sampling` is then empty.
    pooling: dict[str, Any] | None = None
    # The prompt's images, each as the client gave it (PNG, JPEG, ...; at most limits.max_image_bytes), in
    # the order of the prompt's image placeholder tokens (Welcome.image_token_id), which vLLM's processor
    # for the model expands to the model's own placeholders.
    images: list[bytes] = []
    trace: TraceContext | None = None  # None (one byte): the request is not traced
    tenant: str = ""  # whose request it is (docs/tenants.md): the engine counts its use in LoadReport.usage
    # Its priority class, by place in server.yml's priority.classes (0 first): vLLM's priority under
    # `scheduling_policy: priority`, and what the engine worker bounds each class's share of its slots by.
    priority: int = 0


class LoadLora(msgspec.Struct, tag="load_lora", array_like=True):
    """Load a LoRA adapter under `name`. The engine answers on the frontend's topic with a Delta for
    `request_id`: finish_reason "stop" once loaded, "error" with the reason if not."""

    request_id: str
    frontend_id: str
    name: str
    path: str


class UnloadLora(msgspec.Struct, tag="unload_lora", array_like=True):
    """Unload the LoRA adapter `name`; answered like LoadLora."""

    request_id: str
    frontend_id: str
    name: str


class SetOffline(msgspec.Struct, tag="set_offline", array_like=True):
    """Take the engine out of the frontends' routing (`offline`) or put it back; its heartbeats then
    say so to every frontend. Answered like LoadLora, with the state changed."""

    request_id: str
    frontend_id: str
    offline: bool


class ResetPrefixCache(msgspec.Struct, tag="reset_prefix_cache", array_like=True):
    """Empty the engine's prefix cache (vLLM's reset_prefix_cache: only while no request holds a block of
    it). Answered like LoadLora: "stop" once emptied, "error" with the reason if not."""

    request_id: str
    frontend_id: str


class ListLoras(msgspec.Struct, tag="list_loras", array_like=True):
    """Ask for the engine's LoRA adapters: a heartbeat named a version of them this frontend has not
    got (the Loras message of a change was lost). Answered with Loras on the frontend's topic."""

    frontend_id: str


class Abort(msgspec.Struct, tag="abort", array_like=True):
    request_ids: list[str]


class Hello(msgspec.Struct, tag="hello", array_like=True):
    frontend_id: str


class Resync(msgspec.Struct, tag="resync", array_like=True):
    """The frontend lost a CachedBlocks: the engine answers with a whole snapshot on its topic."""

    frontend_id: str


EngineRequest = Add | Abort | Hello | LoadLora | UnloadLora | Resync | ListLoras | SetOffline | ResetPrefixCache


class TokenLogprob(msgspec.Struct, array_like=True):
    token_id: int
    logprob: float
    rank: int | None = None


class Delta(msgspec.Struct, array_like=True):
    """What one request produced in one step: new token ids, and how it ended if it did."""

    request_id: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop", "length", "abort" or "error"
    error: str | None = None  # why the engine refused or failed the request
    # One entry per new token: the sampled token first, then the top alternatives.
    logprobs: list[list[TokenLogprob]] | None = None
    prompt_logprobs: list[list[TokenLogprob] | None] | None = None
    # The id in the request's stop_token_ids that ended it (vLLM's stop_reason); None for EOS or length.
    stop_token_id: int | None = None
    # A pooling request's result, in its one Delta (finish_reason "stop"): the pooled vector as
    # little-endian float32, exactly as vLLM computed it (an embedding, or a classifier's probabilities).
    pooled: bytes | None = None
    # On a request's first Delta, when the engine's prompt is longer than the ADD's (the model's processor
    # expanded its images into placeholder tokens): the prompt's length as the engine runs it.
    prompt_tokens: int | None = None
    # With a request's first output: its prompt tokens found in the prefix cache (vLLM's num_cached_tokens).
    num_cached_tokens: int | None = None


class StepOutput(msgspec.Struct, tag="step", array_like=True):
    engine_id: str
    seq: int
    deltas: list[Delta]


class Welcome(msgspec.Struct, tag="welcome", array_like=True):
    engine_id: str
    frontend_id: str
    model: str  # the name it is served under
    tokenizer: str  # where the frontend loads the same tokenizer from
    max_model_len: int
    loras: dict[str, str] = {}  # the LoRA adapters it serves: name -> path
    runtime_lora_updating: bool = False  # it takes LoadLora and UnloadLora
    loras_version: int = 0  # changes with every change of `loras`
    # Its structured-output grammars can resume after a moved request's generated tokens (Add.resumed_tokens).
    resumes_grammars: bool = False
    # What its model does, as vLLM's supported tasks: "generate", or pooling tasks ("embed", "classify", ...).
    tasks: list[str] = msgspec.field(default_factory=lambda: ["generate"])
    # How the model reads a (query, document) pair for scoring: joined by the tokenizer's separator
    # (a cross-encoder), or simply concatenated (an LLM turned reranker); vLLM's use_sep_token.
    score_sep_token: bool = True
    # An embedding model: the length of its vectors, and whether a request may ask for fewer
    # (`dimensions`: matryoshka; any from 1 up, or only those listed when it lists them).
    embedding_size: int = 0
    is_matryoshka: bool = False
    matryoshka_dimensions: list[int] | None = None
    labels: list[str] = []  # a classifier's label of each class, in order
    # The token the chat template writes for each image part; None: the model takes no images.
    image_token_id: int | None = None


class GpuLoad(msgspec.Struct, array_like=True):
    index: int
    name: str
    utilization_pct: float
    memory_used_bytes: int
    memory_total_bytes: int
    power_watts: float


class EngineLoad(msgspec.Struct, array_like=True):
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    gpus: list[GpuLoad] = []
    # Prompt tokens looked up in vLLM's prefix cache since the engine started, and those found there.
    prefix_cache_queries_total: int = 0
    prefix_cache_hits_total: int = 0
    # A simulated engine only: its steps' modelled time x time_scale, and the wall time they took, in
    # seconds since it started (engine_worker/simulator/engine.py's TimeKept); 0 for vLLM.
    simulated_modelled_s_total: float = 0.0
    simulated_busy_s_total: float = 0.0
    # Requests the scheduler preempted since the engine started (its KV cache ran out of blocks): each
    # gives its blocks back and computes its tokens again later.
    preemptions_total: int = 0


class Heartbeat(msgspec.Struct, tag="heartbeat", array_like=True):
    engine_id: str
    load: EngineLoad
    # For each frontend, the seq of the last StepOutput published to it before this heartbeat
    # (PUB keeps order on one connection), so a frontend notices the loss of its last message too.
    last_seqs: dict[str, int] = {}
    # The version of its LoRA adapters: a frontend that holds another asks for them (ListLoras). The
    # list itself goes out only when it changes (Loras), being up to 1,024 names and paths.
    loras_version: int = 0
    cache_seq: int = 0  # the number of the last CachedBlocks published before this heartbeat
    # Seconds since the step loop last finished a step (or found nothing to do): while it holds requests,
    # how long they have made no progress. The heartbeat comes from its own thread, so it says so even
    # while a step hangs.
    since_progress_s: float = 0.0
    offline: bool = False  # an operator took it out of routing (SetOffline)


class TenantUse(msgspec.Struct, array_like=True):
    """What one tenant used on one engine in one minute."""

    requests: int = 0  # ADDs taken, but those moved here from a lost engine
    prompt_tokens: int = 0  # prompt tokens computed
    cached_tokens: int = 0  # prompt tokens found in the prefix cache (vLLM's num_cached_tokens)
    output_tokens: int = 0


class LoadReport(msgspec.Struct, tag="load", array_like=True):
    """The engine's load after a step, for every frontend's router: the one load view they share."""

    engine_id: str
    seq: int  # 1, 2, 3, … per engine
    waiting: int  # vLLM's scheduler: requests waiting, and running
    running: int
    # Prompt tokens still to compute, of the requests with no output token yet, net of the prefix-cache
    # hits the engine estimated for each when it took it.
    prefill_tokens: int
    kv_tokens: int  # tokens of KV cache in use (vLLM's kv_cache_usage x its cache size)
    free_blocks: int  # KV cache blocks no request holds (free, or cached and evictable)
    # For each frontend, the ADDs the engine took from it since its last Welcome (running, finished or
    # refused): what each frontend sent is counted in the figures above from then on.
    taken: dict[str, int] = {}
    cache_seq: int = 0  # the number of the last CachedBlocks published before this report
    # Each tenant's use of this engine in the wall clock's minute `usage_minute` (int(time.time() // 60)):
    # what every frontend adds up to hold tenants to their quotas (frontend/quotas.py).
    usage_minute: int = 0
    usage: dict[str, TenantUse] = {}
    # Requests of a bounded priority class the engine worker holds back, vLLM's slots for the class being
    # full (engine_worker/priority_hold.py): counted in none of the figures above.
    held: int = 0
    # The frontends it hears from (HELLO or ADD in the last FORGET_AFTER_S), one for each place one runs:
    # how many routers may be sending it the same burst within one step (frontend/router.py).
    frontends: int = 0


class Loras(msgspec.Struct, tag="loras", array_like=True):
    """The engine's LoRA adapters, name -> path: on the broadcast topic at each change (before the
    frontend that asked for it is answered), and to one frontend that sent ListLoras."""

    engine_id: str
    version: int
    loras: dict[str, str]


class Goodbye(msgspec.Struct, tag="goodbye", array_like=True):
    """The engine is going: sent before it aborts what it still runs, so frontends move those elsewhere."""

    engine_id: str
    failed: bool = False  # its engine failed (rather than being asked to stop)


class CachedBlocks(msgspec.Struct, tag="cached", array_like=True):
    """Prompt blocks the engine's prefix cache took in and dropped, as the router hashes them
    (common/blocks.py). `cleared`: it holds none but `stored` (a whole snapshot, after each Welcome and
    Resync, or after the engine emptied its prefix cache). `seq` numbers the changes, 1, 2, 3, … per
    engine; a snapshot carries the number of the last change it includes."""

    engine_id: str
    seq: int
    stored: list[int]
    removed: list[int]
    cleared: bool = False
    # The engine dropped every block (vLLM's AllBlocksCleared, on the broadcast topic): what a frontend sent
    # there before is gone from its cache too.
    emptied: bool = False


EngineOutput = StepOutput | Welcome | Heartbeat | Goodbye | CachedBlocks | LoadReport | Loras

BROADCAST_TOPIC = b"*|"


def frontend_slot(frontend_id: str) -> str:
    """Where a frontend runs: its id is `<slot>~<start>`, `<slot>` being `<host>-<index>` and `<start>`
    new with each process start. A HELLO from a new id in a slot means the one before it there is gone."""
    return frontend_id.partition("~")[0]


def topic_for(frontend_id: str) -> bytes:
    # The separator keeps SUB's prefix match exact: "fe-1|" is not a prefix of "fe-10|".
    return frontend_id.encode() + b"|"


encode = msgspec.msgpack.Encoder().encode
request_decoder = msgspec.msgpack.Decoder(EngineRequest)
output_decoder = msgspec.msgpack.Decoder(EngineOutput)
