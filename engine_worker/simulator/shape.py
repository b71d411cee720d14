"""The engine arguments that shape a simulated engine, each from inference.yml's `engine_args` when it
gives it, else from the engine arguments its step-time profile was measured under (so a simulated
engine has the measured engine's KV cache), else a default of the simulator's own."""
from typing import Annotated, Any, Literal

import msgspec

from engine_worker.simulator.kv_cache import cdiv

# Used when neither inference.yml nor the profile gives the argument.
DEFAULTS = {
    "max_num_seqs": 256,
    "max_num_batched_tokens": 8192,
    "block_size": 16,
    "num_gpu_blocks": 8192,
    "enable_prefix_caching": True,
    "enable_chunked_prefill": True,
    "max_logprobs": 20,
    "scheduling_policy": "fcfs",
    "async_scheduling": False,
    "scheduler_reserve_full_isl": True,  # vLLM's default
}
# inference.yml names the KV cache size as vLLM's override; a profile records the size vLLM found.
CONFIG_NAMES = {"num_gpu_blocks": "num_gpu_blocks_override"}

Positive = Annotated[int, msgspec.Meta(gt=0)]


class EngineShape(msgspec.Struct, frozen=True):
    max_num_seqs: Positive
    max_num_batched_tokens: Positive
    block_size: Positive
    num_gpu_blocks: Positive
    max_model_len: Positive
    enable_prefix_caching: bool
    enable_chunked_prefill: bool
    max_logprobs: int
    scheduling_policy: Literal["fcfs", "priority"] = "fcfs"
    async_scheduling: bool = False
    scheduler_reserve_full_isl: bool = True


def engine_shape(engine_args: dict[str, Any], measured_under: dict[str, Any],
                 model_max_len: int | None) -> EngineShape:
    """The shape from inference.yml's engine_args, the profile's engine_args and the model's own
    context length (its config's max_position_embeddings); ValueError if it cannot serve."""
    def given(name: str, default):
        for value in (engine_args.get(CONFIG_NAMES.get(name, name)), measured_under.get(name),
                      measured_under.get(CONFIG_NAMES.get(name, name))):
            if value is not None:
                return value
        return default

    values = {name: given(name, default) for name, default in DEFAULTS.items()}
    values["max_model_len"] = given("max_model_len", model_max_len)
    if values["max_model_len"] is None:
        raise ValueError("no max_model_len: give engine_args.max_model_len (the model's config has no "
                         "max_position_embeddings)")
    try:
        shape = msgspec.convert(values, EngineShape)
    except msgspec.ValidationError as error:
        raise ValueError(f"engine_args: {error}") from None
    check(shape)
    return shape


def check(shape: EngineShape) -> None:
    """What vLLM refuses at start, refused here too."""
    # Block 0 is vLLM's null block; one request of max_model_len tokens must fit in the rest.
    if (shape.num_gpu_blocks - 1) * shape.block_size < shape.max_model_len:
        raise ValueError(f"a KV cache of {shape.num_gpu_blocks} blocks of {shape.block_size} tokens holds fewer "
                         f"than max_model_len ({shape.max_model_len}) tokens: raise num_gpu_blocks_override "
                         f"to at least {cdiv(shape.max_model_len, shape.block_size) + 1} or lower max_model_len")
    if shape.max_num_batched_tokens < shape.max_num_seqs:
        raise ValueError(f"max_num_batched_tokens ({shape.max_num_batched_tokens}) is smaller than max_num_seqs "
                         f"({shape.max_num_seqs})")
    if not shape.enable_chunked_prefill and shape.max_num_batched_tokens < shape.max_model_len:
        raise ValueError(f"without chunked prefill, max_num_batched_tokens ({shape.max_num_batched_tokens}) must be "
                         f"at least max_model_len ({shape.max_model_len})")
