"""The operator's engine routes, behind the admin API key (frontend/auth.py): take one engine out of
routing for maintenance, and put it back.

    POST /admin/engines/{rank}/offline    no new request goes to engine `rank` (pinned ones still do);
                                          what runs there finishes there
    POST /admin/engines/{rank}/online     it takes new requests again

`rank` is the engine's rank in its model's pool: `?model=NAME` names the pool (default: the first).

The engine keeps the state and says it in every heartbeat, so every frontend follows within one
heartbeat interval, whichever frontend the call reached; an engine that restarts starts online.
The answer is the engine's entry of /health once the engine has taken the change.
"""
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from frontend.engine_client import EngineUnavailable
from frontend.http import HTTPError
from frontend.run.state import FrontendState


async def take_offline(request: Request) -> Response:
    return await set_offline(request, True)


async def put_online(request: Request) -> Response:
    return await set_offline(request, False)


async def set_offline(request: Request, offline: bool) -> Response:
    state: FrontendState = request.app.state.frontend
    pool, name = state.named(request.query_params.get("model"))
    if pool is None:
        raise HTTPError(404, f"there is no model {name[:256]!r}", "model")
    client, rank = pool.client, request.path_params["rank"]
    if not 0 <= rank < client.size:
        raise HTTPError(404, f"there is no engine {rank}: the engines are 0 to {client.size - 1}", "rank")
    refusal = await client.set_offline(rank, offline)
    if refusal is not None:
        raise EngineUnavailable(f"engine {rank} did not take the change: {refusal}")
    return JSONResponse(client.links[rank].view())


ADMIN_ROUTES = [
    Route("/admin/engines/{rank:int}/offline", take_offline, methods=["POST"]),
    Route("/admin/engines/{rank:int}/online", put_online, methods=["POST"]),
]
