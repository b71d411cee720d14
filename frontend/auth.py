"""API keys and the tenant each opens (frontend/tenants.py). With `api_key` or `tenants` set, every route
but /health and its probes needs a key: `Authorization: Bearer <key>`, or `x-api-key: <key>` as
Anthropic's clients send it. The operator's routes (ADMIN_PATHS: loading and unloading LoRA adapters;
everything under /admin/: engines out of routing and back) need `admin_api_key` instead, whether or not
other keys are set, and refuse everyone while it is not; the admin key opens every route. A tenant's
`max_concurrent` counts its open POSTs here, and its quotas (frontend/quotas.py) turn POSTs away here,
so every route, present or future, is held to them. Refusals are in the route's protocol shape."""
import os
from collections.abc import Callable, Iterable

from common.config import PriorityConfig, ServerConfig
from frontend.error_shapes import error_response
from common.messages import LoadReport
from frontend.http import HTTPError
from frontend.metrics import TENANT_LIMITED, TENANT_REQUESTS
from frontend.deadlines import TIMEOUT_HEADER, request_timeout
from frontend.priorities import PRIORITY_HEADER, header_priority
from frontend.quotas import RateLimited, quota_refusal
from frontend.tenants import Tenant, Tenants, tenant_scope

OPEN_PATHS = {"/health", "/health/live", "/health/ready"}  # probes carry no key
ADMIN_PATHS = {"/v1/load_lora_adapter", "/v1/unload_lora_adapter"}
ADMIN_PREFIX = "/admin/"
HOW = "Authorization: Bearer <key>, or x-api-key: <key>"
RETRY = {"Retry-After": "1"}


def api_keys(server: ServerConfig) -> tuple[str, str]:
    """The API key and the admin API key; the environment's API_KEY and ADMIN_API_KEY come first."""
    return (os.environ.get("API_KEY") or server.api_key, os.environ.get("ADMIN_API_KEY") or server.admin_api_key)


class TenantAuthMiddleware:
    def __init__(self, app, tenants: Tenants, reports: Callable[[], Iterable[LoadReport]] = tuple,
                 cached_token_weight: float = 0.0, request_timeout_s: float = 600.0,
                 priority: PriorityConfig | None = None):
        self.app = app
        self.tenants = tenants
        self.request_timeout_s = request_timeout_s  # server.yml's, for tenants without their own
        self.reports = reports  # every engine's latest LoadReport, whose usage the quotas add up
        self.cached_token_weight = cached_token_weight
        self.priority = priority or PriorityConfig()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        tenant = self.tenants.holder(dict(scope["headers"]))
        error = self.refusal(scope["path"], dict(scope["headers"]), tenant)
        tenant = tenant or self.tenants.anonymous
        post = scope["method"] == "POST"
        counted = post and tenant.max_concurrent > 0
        if error is None and counted and self.tenants.open.get(tenant.name, 0) >= tenant.max_concurrent:
            error = RateLimited("max_concurrent", f"the tenant {tenant.name!r} has its limit of "
                                f"{tenant.max_concurrent} requests open at once on this server", headers=RETRY)
        if error is None and post:
            error = quota_refusal(tenant, self.reports(), self.cached_token_weight)
        if error is None:
            tenant, error = request_timeout(tenant, self.request_timeout_s, dict(scope["headers"]).get(TIMEOUT_HEADER))
        if error is None:
            tenant, error = header_priority(tenant, self.priority, dict(scope["headers"]).get(PRIORITY_HEADER))
        if error is not None:
            if isinstance(error, RateLimited):
                TENANT_LIMITED.labels(tenant.name, error.limit).inc()
            await error_response(error, scope["path"])(scope, receive, send)
            return
        if post:
            TENANT_REQUESTS.labels(tenant.name).inc()
        if counted:
            self.tenants.open[tenant.name] = self.tenants.open.get(tenant.name, 0) + 1
        try:
            with tenant_scope(tenant):
                await self.app(scope, receive, send)
        finally:
            if counted:
                self.tenants.open[tenant.name] -= 1

    def refusal(self, path: str, headers: dict, tenant: Tenant | None) -> HTTPError | None:
        if path in ADMIN_PATHS or path.startswith(ADMIN_PREFIX):
            if tenant is not None and tenant.admin:
                return None
            if not self.tenants.admin_api_key:
                return HTTPError(403, "the operator's routes are off: set admin_api_key in server.yml "
                                      "(or ADMIN_API_KEY in the environment) to use them")
            if tenant is not None:
                return HTTPError(403, "this route needs the admin API key (admin_api_key), not the API key")
            return HTTPError(401, f"the admin API key is needed: {HOW}")
        if tenant is not None or not self.tenants.keys_required:
            return None
        given = "the API key given is not one this server knows" if has_key(headers) else "an API key is needed"
        return HTTPError(401, f"{given}: {HOW}")


def has_key(headers: dict) -> bool:
    return b"x-api-key" in headers or b"authorization" in headers
