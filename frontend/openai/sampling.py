"""What an OpenAI request asks of the engine: one GenerationSpec per choice, and the grammar its
response_format or vLLM's structured_outputs extra asks for.

n choices are n engine requests, fanned out here; with a seed, choice i gets seed + i, so the
choices differ and each is reproducible.
"""
from frontend.http import HTTPError
from frontend.media import PromptImages
from frontend.openai.protocol import ResponseFormat, SamplingRequest, StructuredOutputs
from frontend.request_bounds import as_list
from frontend.run.generation import GenerationSpec
from frontend.text.structured_outputs import COMPACT, check_schema, is_json_grammar

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
    # The keys were checked to be token ids (frontend.request_bounds.check_logit_bias).
    return {int(token): bias for token, bias in logit_bias.items()}


def choice_specs(body: SamplingRequest, prompt_ids: list[int], sampling: dict,
                 images: PromptImages | None = None) -> list[GenerationSpec]:
    specs = []
    for i in range(body.n):
        seeded = sampling if body.seed is None else {**sampling, "seed": body.seed + i}
        specs.append(
            GenerationSpec(prompt_ids, seeded, as_list(body.stop), body.include_stop_str_in_output,
                           body.skip_special_tokens, images)
        )
    return specs


def requested_grammar(body: SamplingRequest, max_depth: int) -> dict | None:
    """The grammar from `response_format` or vLLM's `structured_outputs` extra, if any, its JSON
    schema checked (a worker thread's work: checking grows with the schema)."""
    from_format = response_format_grammar(body.response_format)
    from_extra = extra_grammar(body.structured_outputs)
    if from_format and from_extra:
        raise HTTPError(400, "give response_format or structured_outputs, not both", "structured_outputs")
    if from_format and "json" in from_format:
        check_schema(from_format["json"], max_depth, "response_format.json_schema.schema")
    if from_extra and "json" in from_extra:
        from_extra["json"] = check_schema(from_extra["json"], max_depth, "structured_outputs.json")
    return from_format or from_extra


def response_format_grammar(response_format: ResponseFormat | None) -> dict | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return {"json_object": True, **COMPACT}
    if response_format.json_schema is None or response_format.json_schema.schema is None:
        raise HTTPError(400, "response_format of type json_schema needs json_schema.schema",
                        "response_format.json_schema")
    return {"json": response_format.json_schema.schema, **COMPACT}


def extra_grammar(extra: StructuredOutputs | None) -> dict | None:
    if extra is None:
        return None
    given = {name: getattr(extra, name) for name in extra.__struct_fields__ if getattr(extra, name) is not None}
    if len(given) != 1:
        raise HTTPError(400, "structured_outputs takes exactly one of json, regex, choice, grammar, json_object",
                        "structured_outputs")
    return {**given, **COMPACT} if is_json_grammar(given) else given
