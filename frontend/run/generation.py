"""One generation as the routes see it: token ids in, text pieces out.

Sends the ADD, reads the request's Deltas, detokenizes, applies stop strings (sending an ABORT when
one matches), and always leaves the engine clean: a generation that ends early for any reason
(client gone, stop string, error) aborts its engine request.
"""
import asyncio
from dataclasses import dataclass, field

from common.messages import Delta, TokenLogprob
from frontend import tracing
from frontend.engine_client import EngineClient, EngineLost, RequestTimeout
from frontend.media import PromptImages
from frontend.metrics import GenerationMeter
from frontend.tenants import current_tenant
from frontend.text.detokenizer import Detokenizer
from frontend.text.stop_strings import StopStrings


class EngineRefused(Exception):
    """The engine's own validation refused the request (vLLM's SamplingParams, context length)."""


@dataclass
class Piece:
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    logprobs: list[list[TokenLogprob]] | None = None
    prompt_logprobs: list[list[TokenLogprob] | None] | None = None
    # What ended it, as vLLM's stop_reason: the stop string matched, the stop token id, or None.
    stop_reason: int | str | None = None
    prompt_tokens: int | None = None  # the engine's count of the prompt, where it differs (Delta.prompt_tokens)
    cached_tokens: int | None = None  # with the first piece: the prompt tokens found in the prefix cache


@dataclass
class GenerationSpec:
    prompt_token_ids: list[int]
    sampling: dict  # vLLM SamplingParams keyword arguments, without stop strings
    stop: list[str] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    images: PromptImages | None = None


async def generate(client: EngineClient, tokenizer, spec: GenerationSpec):
    """Yield Pieces until the request finishes; the last one has a finish_reason."""
    request_id = tracing.new_request_id()
    detokenizer = Detokenizer(tokenizer, spec.skip_special_tokens)
    stops = StopStrings(spec.stop, spec.include_stop_str_in_output)
    trace = tracing.generation(request_id, len(spec.prompt_token_ids))
    try:
        queue = client.add(request_id, spec.prompt_token_ids, spec.sampling, images=spec.images, trace=trace)
    except Exception as error:
        if trace is not None:
            trace.end(None, 0, error)
        raise
    # The slot is taken: nothing may raise before the `try` that gives it back.
    tenant = current_tenant()
    meter = GenerationMeter(client.model, len(spec.prompt_token_ids), tenant.name, client.classes[tenant.priority])
    finished = False
    try:
        while not finished:
            # A backlog of Deltas makes get() return at once: yield, so one request's backlog does not
            # hold up the other requests on this event loop.
            await asyncio.sleep(0)
            delta = await queue.get()
            if isinstance(delta, (EngineLost, RequestTimeout)):
                finished = True
                raise delta
            if delta.finish_reason == "error":
                finished = True
                raise EngineRefused(delta.error)
            if delta.finish_reason == "abort":
                finished = True
                raise EngineLost(delta.error or "the engine aborted the request")
            meter.tokens_arrived(len(delta.token_ids))
            if trace is not None and delta.token_ids:
                trace.tokens_arrived()
            if delta.num_cached_tokens is not None:
                meter.cached_tokens = delta.num_cached_tokens
            finished = delta.finish_reason is not None
            text = detokenizer.add(shown_ids(delta, spec.include_stop_str_in_output))
            if finished:
                text += detokenizer.flush()
            text = stops.feed(text)
            if stops.matched is not None:
                meter.finish_reason = "stop"
                yield Piece(text, delta.token_ids, "stop", delta.logprobs, delta.prompt_logprobs, stops.matched,
                            delta.prompt_tokens, delta.num_cached_tokens)
                return
            if finished:
                text += stops.flush()
            meter.finish_reason = delta.finish_reason
            yield Piece(text, delta.token_ids, delta.finish_reason, delta.logprobs, delta.prompt_logprobs,
                        delta.stop_token_id, delta.prompt_tokens, delta.num_cached_tokens)
    except Exception as error:
        meter.failure = error
        raise
    finally:
        meter.end()
        client.release(request_id, abort=not finished)
        if trace is not None:
            trace.end(meter.finish_reason, meter.tokens, meter.failure)


def shown_ids(delta: Delta, include_stop_token: bool) -> list[int]:
    """As vLLM: the token that stopped a request (EOS, a stop_token_ids entry) is not in its text,
    unless include_stop_str_in_output."""
    if delta.finish_reason == "stop" and delta.token_ids and not include_stop_token:
        return delta.token_ids[:-1]
    return delta.token_ids
