"""What an OpenAI request asks of the engine: one GenerationSpec per choice.

n choices are n engine requests, fanned out here; with a seed, choice i gets seed + i, so the
choices differ and each is reproducible.
"""
from frontend.openai.protocol import SamplingRequest
from frontend.request_bounds import as_list
from frontend.text.generation import GenerationSpec

# Fields passed to vLLM's SamplingParams under their own names, when given.
ENGINE_FIELDS = (
    "temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty",
    "min_tokens", "stop_token_ids", "bad_words", "allowed_token_ids",
)


def sampling_kwargs(body: SamplingRequest, max_tokens: int, structured: dict | None, **extra) -> dict:
    """SamplingParams keyword arguments for one choice, seed left out."""
    sampling = {name: getattr(body, name) for name in ENGINE_FIELDS if getattr(body, name) is not None}
    sampling["max_tokens"] = max_tokens
    if body.ignore_eos:
        sampling["ignore_eos"] = True
    if body.logit_bias:
        sampling["logit_bias"] = token_biases(body.logit_bias)
    if structured is not None:
        sampling["structured_outputs"] = structured
    sampling.update({name: value for name, value in extra.items() if value is not None})
    return sampling


def token_biases(logit_bias: dict[str, float]) -> dict[int, float]:
    # The keys were checked to be token ids (frontend.request_bounds).
    return {int(token): bias for token, bias in logit_bias.items()}


def choice_specs(body: SamplingRequest, prompt_ids: list[int], sampling: dict) -> list[GenerationSpec]:
    specs = []
    for i in range(body.n):
        seeded = sampling if body.seed is None else {**sampling, "seed": body.seed + i}
        specs.append(
            GenerationSpec(prompt_ids, seeded, as_list(body.stop), body.include_stop_str_in_output,
                           body.skip_special_tokens)
        )
    return specs
