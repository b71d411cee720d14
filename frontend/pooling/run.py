"""One pooling request as the routes see it: each input's token ids in, each input's pooled vector out.

Every input is an engine request of its own, sent at once, so the engine batches them as vLLM's own
server does; each is counted on the generation series of its model (requests, prompt tokens, e2e).
Whatever ends the HTTP request early (an error, the client gone) aborts the inputs still running.
"""
import asyncio

import numpy as np

from frontend import tracing
from frontend.engine_client import EngineLost, RequestTimeout
from frontend.metrics import GenerationMeter
from frontend.run.generation import EngineRefused
from frontend.run.pool import Pool
from frontend.tenants import current_tenant


async def pool_inputs(pool: Pool, prompts: list[list[int]], pooling: dict,
                      extras: list[dict] | None = None) -> list[np.ndarray]:
    """The pooled vector of each prompt (float32), in order; `pooling` is PoolingParams' keyword arguments,
    to which `extras` adds each prompt's own."""
    extras = extras or [{}] * len(prompts)
    runs = [asyncio.ensure_future(pool_one(pool, prompt, {**pooling, **extra}))
            for prompt, extra in zip(prompts, extras)]
    try:
        return await asyncio.gather(*runs)
    finally:
        for run in runs:  # the first failure ends the others too
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)


async def pool_one(pool: Pool, prompt: list[int], pooling: dict) -> np.ndarray:
    request_id = tracing.new_request_id()
    client = pool.client
    # Nothing may raise between taking the slot and the `try` that gives it back.
    queue = client.add(request_id, prompt, {}, pooling)
    tenant = current_tenant()
    meter = GenerationMeter(client.model, len(prompt), tenant.name, client.classes[tenant.priority])
    finished = False
    try:
        delta = await queue.get()
        finished = True
        if isinstance(delta, (EngineLost, RequestTimeout)):
            raise delta
        if delta.finish_reason == "error":
            raise EngineRefused(delta.error)
        if delta.finish_reason == "abort" or delta.pooled is None:
            raise EngineLost(delta.error or "the engine aborted the request")
        meter.finish_reason = "stop"
        return np.frombuffer(delta.pooled, dtype="<f4")
    except Exception as error:
        meter.failure = error
        raise
    finally:
        meter.end()
        client.release(request_id, abort=not finished)
