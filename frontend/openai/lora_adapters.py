"""POST /v1/load_lora_adapter and /v1/unload_lora_adapter, with vLLM's bodies and answers: every engine
that is up loads or unloads the adapter, and the answer waits for all of them.

Only with the admin API key (frontend/auth.py). Off (404) unless an engine says it takes run-time
updates (`allow_runtime_lora_updating` in inference.yml, as vLLM's VLLM_ALLOW_RUNTIME_LORA_UPDATING);
each engine checks the path against its `lora_root`. A load goes to the engines without the adapter,
so loading again after an engine restarted puts it back there. Every frontend learns of a change
from the engines' Loras messages, and of one it missed from the version in their heartbeats
(docs/lora.md). With several models, `model` names the one whose engines take the adapter; without
it, the first whose engines take run-time updates.
"""
from typing import Annotated

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from frontend.engine_client import EngineUnavailable
from frontend.http import HTTPError, read_json
from frontend.run.pool import Pool
from frontend.run.state import FrontendState

Name = Annotated[str, Meta(min_length=1, max_length=256)]
Path = Annotated[str, Meta(min_length=1, max_length=4096)]


class LoadLoraAdapterRequest(msgspec.Struct, forbid_unknown_fields=True):
    lora_name: Name
    lora_path: Path
    model: str | None = None  # the base model, with several
    # vLLM's other fields, accepted only as false: reloading in place is not offered (unload, then
    # load), nor 3-D (MoE) weights.
    load_inplace: bool = False
    is_3d_lora_weight: bool = False


class UnloadLoraAdapterRequest(msgspec.Struct, forbid_unknown_fields=True):
    lora_name: Name
    model: str | None = None  # the base model, with several
    lora_int_id: int | None = None  # vLLM accepts it and goes by the name; so does this server


async def load_lora_adapter(request: Request) -> Response:
    state: FrontendState = request.app.state.frontend
    body = await read_json(request, LoadLoraAdapterRequest, state.server.max_body_bytes)
    pool = runtime_updating(state, body.model)
    if body.load_inplace:
        raise HTTPError(400, "load_inplace is not supported: unload the adapter, then load it again", "load_inplace")
    if body.is_3d_lora_weight:
        raise HTTPError(400, "3-D LoRA weights are not supported", "is_3d_lora_weight")
    if any(body.lora_name == other.model for other in state.pools):
        raise HTTPError(400, f"the LoRA adapter {body.lora_name!r} conflicts with a served model", "lora_name")
    others = [other for other in state.pools if other is not pool]
    if taken := next((other.model for other in others if body.lora_name in other.client.loras), None):
        raise HTTPError(400, f"the LoRA adapter {body.lora_name!r} is already served by {taken}", "lora_name")
    loaded_from = pool.client.loras.get(body.lora_name, body.lora_path)
    if loaded_from != body.lora_path:
        raise HTTPError(400, f"the LoRA adapter {body.lora_name!r} is already loaded from {loaded_from}", "lora_path")
    if not pool.client.lora_targets(body.lora_name, body.lora_path):
        raise HTTPError(400, f"the LoRA adapter {body.lora_name!r} has already been loaded", "lora_name")
    await update(pool, body.lora_name, body.lora_path)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


async def unload_lora_adapter(request: Request) -> Response:
    state: FrontendState = request.app.state.frontend
    body = await read_json(request, UnloadLoraAdapterRequest, state.server.max_body_bytes)
    pool = runtime_updating(state, body.model)
    if not pool.client.lora_targets(body.lora_name, None):
        raise HTTPError(404, f"the LoRA adapter {body.lora_name!r} cannot be found", "lora_name")
    await update(pool, body.lora_name, None)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")


def runtime_updating(state: FrontendState, model: str | None) -> Pool:
    """The pool whose engines the update goes to, once it is known they take it."""
    if model is not None:
        pool, name = state.pool_for(model, task=None)
        if name != pool.model:
            raise HTTPError(400, f"model must name a served model, not the LoRA adapter {name!r}", "model")
    else:
        pool = next((pool for pool in state.pools if pool.client.runtime_lora_updating), state.pools[0])
    if not pool.client.up_links():
        raise EngineUnavailable("no engine is available")
    if not pool.client.runtime_lora_updating:
        raise HTTPError(404, "loading and unloading LoRA adapters at run time is off: set "
                             "allow_runtime_lora_updating in inference.yml to turn it on")
    return pool


async def update(pool: Pool, name: str, path: str | None) -> None:
    """Load or unload on every engine that is up; a refusal by any is a 400 naming each engine's reason."""
    answers = await pool.client.update_loras(name, path)
    refusals = [f"engine {rank}: {reason}" for rank, reason in sorted(answers.items()) if reason is not None]
    if refusals:
        field = "lora_path" if path is not None else "lora_name"
        raise HTTPError(400, f"could not {'load' if path else 'unload'} the LoRA adapter {name!r}: "
                             f"{'; '.join(refusals)}", field)
