"""The frontend's Starlette app: routes, error handlers, and the engine client's lifetime."""
import contextlib

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.config import ServerConfig
from frontend.engine_client import EngineLost, EngineUnavailable
from frontend.generate_route import generate_endpoint
from frontend.generation import EngineRefused
from frontend.http import HTTPError
from frontend.state import FrontendState


async def health(request: Request) -> Response:
    state: FrontendState = request.app.state.frontend
    load = state.client.load
    body = {
        "status": "ok" if state.ready else "engine unavailable",
        "frontend": state.frontend_id,
        "engine": state.client.engine_id,
        "running": load.running,
        "waiting": load.waiting,
        "kv_cache_usage": load.kv_cache_usage,
    }
    return JSONResponse(body, 200 if state.ready else 503)


def error_handlers() -> dict:
    def unavailable(request, error):
        return HTTPError(503, str(error), headers={"Retry-After": "1"}).response()

    return {
        HTTPError: lambda request, error: error.response(),
        EngineUnavailable: unavailable,
        EngineLost: unavailable,
        EngineRefused: lambda request, error: HTTPError(400, str(error)).response(),
        # Nobody reads this answer: the client has gone.
        ClientDisconnect: lambda request, error: Response(status_code=499),
    }


def build_app(server: ServerConfig, frontend_id: str) -> Starlette:
    state = FrontendState(server, frontend_id)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await state.start()
        yield
        await state.stop()

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/generate", generate_endpoint, methods=["POST"]),
        ],
        exception_handlers=error_handlers(),
        lifespan=lifespan,
    )
    app.state.frontend = state
    return app
