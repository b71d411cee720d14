"""Admission: each ADD is checked and turned into vLLM's request on the thread that reads the request
socket, so vLLM's per-request work (SamplingParams checks, structured-output grammar validation,
bad_words tokenization) never holds up the step loop, and an ADD reaches the loop's inbox with no
thread between the socket and it. Messages keep their order: an ABORT or a HELLO waits behind the
ADDs that arrived before it.
"""
import inspect
import logging
import queue

from common.messages import Add
from engine_worker import resumed_grammar
from engine_worker.cache_events import CacheIndex
from engine_worker.images import prompt_of
from engine_worker.step_loop import Admitted, Refused

log = logging.getLogger(__name__)


def admitter(inbox: queue.Queue, prepare, cache: CacheIndex | None = None, tracing=None):
    """What the request reader hands each (time received, message) to: it puts the message into
    `inbox`, each ADD as Admitted or Refused. Each Admitted carries its prompt tokens that the prefix
    cache (`cache`, when the engine reports it) does not hold now, for the load report; finding them
    hashes the prompt, so it runs here rather than on the step thread. A traced ADD's span starts here
    (`tracing`, engine_worker/tracing.py)."""

    def admit(received_at: float, message) -> None:
        if type(message) is Add:
            prompt = message.prompt_token_ids
            traced = tracing is not None and message.trace is not None
            try:
                message = prepare(message, received_at, tracing.admitted(message, received_at) if traced else None)
            except Exception as error:  # vLLM's own validation: the request is refused, nothing else
                message = Refused(message, str(error))
            else:
                cached = cache.cached_tokens(prompt) if cache is not None else 0
                message = message._replace(prefill_tokens=len(prompt) - cached)
        inbox.put((received_at, message))

    return admit


class VllmRequests:
    """Builds what LLMEngine.add_request takes: SamplingParams from the wire's keyword arguments, and
    the request processed by vLLM's input processor, which add_request then takes as it is."""

    def __init__(self, engine, adapters):
        self.adapters = adapters
        # Under any other policy vLLM orders requests by arrival alone, and a vLLM may refuse a priority there.
        config = getattr(engine, "vllm_config", None)
        self.takes_priority = getattr(getattr(config, "scheduler_config", None), "policy", "fcfs") == "priority"
        # Named `processor` before vLLM 0.11; a vLLM with neither gets its checks in add_request.
        self.processor = getattr(engine, "input_processor", None) or getattr(engine, "processor", None)
        if self.processor is None:
            log.warning("this vLLM has no input processor to call: requests are checked on the step thread")
            return
        accepted = inspect.signature(self.processor.process_inputs).parameters
        self.extra = {"supported_tasks": engine.get_supported_tasks()} if "supported_tasks" in accepted else {}
        self.takes_trace_headers = "trace_headers" in accepted

    def __call__(self, message: Add, received_at: float, trace_headers: dict | None = None) -> Admitted:
        """`trace_headers`: the request's W3C trace context, for vLLM's own spans (its otlp_traces_endpoint)."""
        params = sampling_params(message.sampling) if message.pooling is None else pooling_params(message.pooling)
        lora = self.adapters.request_for(message.lora)
        if self.processor is None:
            if lora is not None:
                raise ValueError("LoRA adapters need a vLLM with an input processor")
            if message.pooling is None:
                resumed_grammar.mark(message.request_id, params, message.resumed_tokens)
            return Admitted(message, prompt_of(message), params)
        traced = {"trace_headers": trace_headers} if trace_headers and self.takes_trace_headers else {}
        priority = {"priority": message.priority} if self.takes_priority else {}
        request = self.processor.process_inputs(
            message.request_id, prompt_of(message), params,
            arrival_time=received_at, lora_request=lora, **self.extra, **traced, **priority,
        )
        if message.pooling is not None:
            return Admitted(message, request, request.pooling_params)
        resumed_grammar.mark(message.request_id, request.sampling_params, message.resumed_tokens)
        return Admitted(message, request, request.sampling_params)


def sampling_params(sampling: dict):
    """vLLM's SamplingParams from the frontend's keyword arguments. A structured-outputs spec
    crosses the wire as a plain dict (json, regex, choice, grammar or json_object) and becomes
    vLLM's object here."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    kwargs = dict(sampling)
    if (structured := kwargs.pop("structured_outputs", None)) is not None:
        kwargs["structured_outputs"] = StructuredOutputsParams(**structured)
    return SamplingParams(**kwargs, detokenize=False, output_kind=RequestOutputKind.DELTA)


def pooling_params(pooling: dict):
    """vLLM's PoolingParams from the frontend's keyword arguments (task, dimensions, use_activation,
    extra_kwargs)."""
    from vllm import PoolingParams

    return PoolingParams(**pooling)
