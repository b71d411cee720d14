"""The layers in front of every route, without an engine: the browser guard (Host, Origin, CORS),
the API keys, the rank header, routing's own 404 and 405, and JSON's content type, each answering
in the shape of the path's protocol. The routes behind them are stand-ins that count their calls."""
import httpx
import msgspec
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Route

from common.config import ServerConfig
from frontend.anthropic.routes import anthropic_route
from frontend.app import error_handlers
from frontend.auth import TenantAuthMiddleware
from frontend.tenants import Tenants
from frontend.browser_guard import BrowserGuard, host_name, is_loopback_name
from frontend.http import read_json
from frontend.router import RoutingScopeMiddleware

SERVICE = "http://127.0.0.1:7080"
EVIL = "https://evil.example"


class Body(msgspec.Struct):
    prompt: str


def guarded_app(calls: list, **server) -> Starlette:
    async def generate(request):
        await read_json(request, Body, 1000)
        calls.append(request.url.path)
        return JSONResponse({"ok": True})

    async def fails(request):
        raise RuntimeError("a bug")

    config = msgspec.convert(server, ServerConfig)
    return Starlette(
        routes=[Route("/generate", generate, methods=["POST"]), anthropic_route("/v1/messages", generate),
                Route("/v1/load_lora_adapter", generate, methods=["POST"]), Route("/v1/fails", fails),
                Route("/v1/messages/fails", fails)],
        exception_handlers=error_handlers(),
        middleware=[Middleware(BrowserGuard, server=config),
                    Middleware(TenantAuthMiddleware, tenants=Tenants(config, config.api_key, config.admin_api_key)),
                    Middleware(RoutingScopeMiddleware, engines=2)])


async def call(app, method: str, path: str, headers: dict | None = None, body: bytes | None = b'{"prompt": "hi"}',
               base_url: str = SERVICE) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as http:
        return await http.request(method, path, headers=headers, content=body)


JSON = {"content-type": "application/json"}


def openai_error(answer: httpx.Response, status: int, param: str | None) -> bool:
    error = answer.json()["error"]
    return answer.status_code == status and error["code"] == status and error["param"] == param


def anthropic_error(answer: httpx.Response, status: int) -> dict:
    body = answer.json()
    assert answer.status_code == status and body["type"] == "error" and set(body["error"]) == {"type", "message"}
    return body["error"]


async def test_a_page_from_another_origin_is_refused_before_the_route_runs():
    calls = []
    app = guarded_app(calls)
    for headers in ({"origin": EVIL, **JSON}, {"origin": EVIL, "content-type": "text/plain"}, {"origin": EVIL}):
        answer = await call(app, "POST", "/generate", headers)
        assert openai_error(answer, 403, "origin") and "cors.allowed_origins" in answer.json()["error"]["message"]
    assert anthropic_error(await call(app, "POST", "/v1/messages", {"origin": EVIL, **JSON}), 403)["type"] == \
        "permission_error"
    assert calls == []
    same = await call(app, "POST", "/generate", {"origin": SERVICE, **JSON})  # the dashboard's own origin
    assert same.status_code == 200 and calls == ["/generate"]


async def test_an_allowed_origin_is_served_with_cors_headers_and_a_refused_preflight_is_json():
    calls = []
    app = guarded_app(calls, cors={"allowed_origins": ["https://app.example"]})
    answer = await call(app, "POST", "/generate", {"origin": "https://app.example", **JSON})
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://app.example"
    preflight = {"origin": "https://app.example", "access-control-request-method": "POST"}
    assert (await call(app, "OPTIONS", "/generate", preflight, None)).status_code == 200
    refused = {**preflight, "origin": EVIL}
    assert openai_error(await call(app, "OPTIONS", "/generate", refused, None), 400, "origin")
    assert "preflight" in anthropic_error(await call(app, "OPTIONS", "/v1/messages", refused, None), 400)["message"]


@pytest.mark.parametrize("headers", [{}, {"content-type": "text/plain"},
                                     {"content-type": "application/x-www-form-urlencoded"}],
                         ids=["none", "text/plain", "form"])
async def test_json_routes_take_only_a_json_content_type(headers):
    calls = []
    app = guarded_app(calls)
    assert openai_error(await call(app, "POST", "/generate", headers), 415, "content-type")
    assert "content-type" in anthropic_error(await call(app, "POST", "/v1/messages", headers), 415)["message"]
    assert calls == []


@pytest.mark.parametrize("host", ["evil.example", "evil.example:7080", "10.0.0.5:7080"])
async def test_a_loopback_listen_answers_loopback_hosts_only(host):
    calls = []
    app = guarded_app(calls)
    answer = await call(app, "POST", "/generate", {"host": host, **JSON})
    assert openai_error(answer, 403, "host") and "allowed_hosts" in answer.json()["error"]["message"]
    assert anthropic_error(await call(app, "POST", "/v1/messages", {"host": host, **JSON}), 403)
    for loopback in ("localhost:7080", "127.0.0.1", "[::1]:7080", "app.localhost"):
        assert (await call(app, "POST", "/generate", {"host": loopback, **JSON})).status_code == 200
    configured = guarded_app(calls, allowed_hosts=["llm.internal"])
    assert (await call(configured, "POST", "/generate", {"host": "llm.internal:7080", **JSON})).status_code == 200
    anywhere = guarded_app(calls, host="0.0.0.0", api_key="k")
    assert (await call(anywhere, "POST", "/generate", {"host": host, "x-api-key": "k", **JSON})).status_code == 200


def test_host_names():
    assert [host_name(h) for h in ("A.example:80", "[::1]:7080", "::1", "localhost")] == \
        ["a.example", "::1", "::1", "localhost"]
    assert is_loopback_name("127.3.2.1") and is_loopback_name("::1") and not is_loopback_name("example.com")


@pytest.mark.parametrize("value", ["9" * 5000, "2", "-1", "x", " ", "1" * 7], ids=lambda v: v[:8] or "empty")
async def test_a_bad_rank_header_is_a_400_in_the_paths_shape(value):
    app = guarded_app([])
    answer = await call(app, "POST", "/generate", {"x-data-parallel-rank": value, **JSON})
    assert openai_error(answer, 400, "X-data-parallel-rank")
    error = anthropic_error(await call(app, "POST", "/v1/messages", {"x-data-parallel-rank": value, **JSON}), 400)
    assert "X-data-parallel-rank" in error["message"]


async def test_routing_errors_under_messages_are_anthropics():
    app = guarded_app([])
    assert anthropic_error(await call(app, "POST", "/v1/messages/batches", JSON), 404)["type"] == "not_found_error"
    assert anthropic_error(await call(app, "GET", "/v1/messages", None, None), 405)
    assert anthropic_error(await call(app, "OPTIONS", "/v1/messages", None, None), 405)
    assert openai_error(await call(app, "GET", "/generate", None, None), 405, None)
    assert openai_error(await call(app, "POST", "/v1/nothing", JSON), 404, None)


async def test_the_admin_routes_take_the_admin_key_only():
    calls = []
    app = guarded_app(calls, api_key="plain", admin_api_key="admin")
    route = "/v1/load_lora_adapter"
    assert (await call(app, "POST", route, {"authorization": "Bearer plain", **JSON})).status_code == 403
    assert (await call(app, "POST", route, {"x-api-key": "wrong", **JSON})).status_code == 401
    assert (await call(app, "POST", route, JSON)).status_code == 401
    assert calls == []
    assert (await call(app, "POST", route, {"authorization": "Bearer admin", **JSON})).status_code == 200
    assert (await call(app, "POST", "/generate", {"x-api-key": "admin", **JSON})).status_code == 200
    assert (await call(app, "POST", "/generate", {"x-api-key": "plain", **JSON})).status_code == 200
    without = guarded_app(calls)  # no admin key set: the operator's routes refuse everyone
    answer = await call(without, "POST", route, {"authorization": "Bearer anything", **JSON})
    assert openai_error(answer, 403, None) and "admin_api_key" in answer.json()["error"]["message"]


def test_any_origin_with_credentials_is_refused_at_start():
    with pytest.raises(msgspec.ValidationError, match=r"cors\.allowed_origins.*cors\.allow_credentials"):
        msgspec.convert({"cors": {"allowed_origins": ["*"], "allow_credentials": True}}, ServerConfig)


async def test_a_bug_is_a_json_500_in_the_paths_shape():
    app = guarded_app([])
    assert openai_error(await call(app, "GET", "/v1/fails", None, None), 500, None)
    assert anthropic_error(await call(app, "GET", "/v1/messages/fails", None, None), 500)["type"] == "api_error"
