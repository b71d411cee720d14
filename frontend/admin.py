"""The operator's engine routes, behind the admin API key (frontend/auth.py): take one engine out of
routing for maintenance, put it back, and empty engines' prefix caches.

    POST /admin/engines/{rank}/offline    no new request goes to engine `rank` (pinned ones still do);
                                          what runs there finishes there
    POST /admin/engines/{rank}/online     it takes new requests again
    POST /admin/engines/{rank}/reset_prefix_cache
                                          empty engine `rank`'s prefix cache (vLLM's reset_prefix_cache)
    POST /admin/engines/reset_prefix_cache
                                          the same on every engine of the pool

`rank` is the engine's rank in its model's pool: `?model=NAME` names the pool (default: the first).

The engine keeps the offline state and says it in every heartbeat, so every frontend follows within one
heartbeat interval, whichever frontend the call reached; an engine that restarts starts online. The
answer is the engine's entry of /health once the engine has taken the change.

vLLM empties its prefix cache only while no request holds a block of it: an engine with requests
refuses, and the answer is 409 naming it; those that emptied theirs stay emptied. The engine tells every
frontend at once (its CachedBlocks), and each forgets what it routed there.
"""
import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from frontend.engine_client import EngineClient, EngineUnavailable
from frontend.http import HTTPError
from frontend.run.state import FrontendState


async def take_offline(request: Request) -> Response:
    return await set_offline(request, True)


async def put_online(request: Request) -> Response:
    return await set_offline(request, False)


def pool_of(request: Request) -> EngineClient:
    """The engines of the pool `?model=` names (default: the first); 404 when there is none."""
    state: FrontendState = request.app.state.frontend
    pool, name = state.named(request.query_params.get("model"))
    if pool is None:
        raise HTTPError(404, f"there is no model {name[:256]!r}", "model")
    return pool.client


def rank_of(request: Request, client: EngineClient) -> int:
    rank = request.path_params["rank"]
    if not 0 <= rank < client.size:
        raise HTTPError(404, f"there is no engine {rank}: the engines are 0 to {client.size - 1}", "rank")
    return rank


async def set_offline(request: Request, offline: bool) -> Response:
    client = pool_of(request)
    rank = rank_of(request, client)
    refusal = await client.set_offline(rank, offline)
    if refusal is not None:
        raise EngineUnavailable(f"engine {rank} did not take the change: {refusal}")
    return JSONResponse(client.links[rank].view())


async def reset_one(request: Request) -> Response:
    client = pool_of(request)
    return await reset_prefix_caches(client, [rank_of(request, client)])


async def reset_all(request: Request) -> Response:
    client = pool_of(request)
    return await reset_prefix_caches(client, list(range(client.size)))


async def reset_prefix_caches(client: EngineClient, ranks: list[int]) -> Response:
    """Empty the engines' prefix caches: 200 with the ranks once every one has; 503 (asking none) while one
    is not up; 409 naming those whose requests held blocks."""
    if down := [rank for rank in ranks if not client.links[rank].up]:
        raise EngineUnavailable(f"engines {down} are not up: no prefix cache was emptied")
    refusals = await asyncio.gather(*(client.reset_prefix_cache(rank) for rank in ranks))
    emptied = [rank for rank, refusal in zip(ranks, refusals) if refusal is None]
    for rank in emptied:  # an engine that reports no cache (approximate placement) tells no frontend
        client.router.forget(rank)
    if refused := [f"engine {rank}: {refusal}" for rank, refusal in zip(ranks, refusals) if refusal is not None]:
        raise HTTPError(409, f"{'; '.join(refused)} (emptied: engines {emptied})", "rank")
    return JSONResponse({"model": client.links[ranks[0]].model, "emptied": emptied})


ADMIN_ROUTES = [
    Route("/admin/engines/{rank:int}/offline", take_offline, methods=["POST"]),
    Route("/admin/engines/{rank:int}/online", put_online, methods=["POST"]),
    Route("/admin/engines/{rank:int}/reset_prefix_cache", reset_one, methods=["POST"]),
    Route("/admin/engines/reset_prefix_cache", reset_all, methods=["POST"]),
]
