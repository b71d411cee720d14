"""API keys. With `api_key` set, every route but /health and its probes needs it: `Authorization:
Bearer <key>`, or `x-api-key: <key>` as Anthropic's clients send it. The operator's routes (ADMIN_PATHS:
loading and unloading LoRA adapters; everything under /admin/: engines out of routing and back) need
`admin_api_key` instead, whether or not `api_key` is set, and refuse everyone while it is not; the
admin key opens every route. Refusals are in the route's protocol shape."""
import hmac
import os

from common.config import ServerConfig
from frontend.error_shapes import error_response
from frontend.http import HTTPError

OPEN_PATHS = {"/health", "/health/live", "/health/ready"}  # probes carry no key
ADMIN_PATHS = {"/v1/load_lora_adapter", "/v1/unload_lora_adapter"}
ADMIN_PREFIX = "/admin/"
HOW = "Authorization: Bearer <key>, or x-api-key: <key>"


def api_keys(server: ServerConfig) -> tuple[str, str]:
    """The API key and the admin API key; the environment's API_KEY and ADMIN_API_KEY come first."""
    return (os.environ.get("API_KEY") or server.api_key, os.environ.get("ADMIN_API_KEY") or server.admin_api_key)


class ApiKeyMiddleware:
    def __init__(self, app, api_key: str, admin_api_key: str = ""):
        self.app = app
        self.api_key, self.admin_api_key = api_key.encode(), admin_api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            error = self.refusal(scope["path"], dict(scope["headers"]))
            if error is not None:
                await error_response(error, scope["path"])(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, path: str, headers: dict) -> HTTPError | None:
        admin = self.holds(self.admin_api_key, headers)
        if path in ADMIN_PATHS or path.startswith(ADMIN_PREFIX):
            if admin:
                return None
            if not self.admin_api_key:
                return HTTPError(403, "the operator's routes are off: set admin_api_key in server.yml "
                                      "(or ADMIN_API_KEY in the environment) to use them")
            if self.holds(self.api_key, headers):
                return HTTPError(403, "this route needs the admin API key (admin_api_key), not the API key")
            return HTTPError(401, f"the admin API key is needed: {HOW}")
        if not self.api_key or admin or self.holds(self.api_key, headers):
            return None
        return HTTPError(401, f"a valid API key is needed: {HOW}")

    @staticmethod
    def holds(key: bytes, headers: dict) -> bool:
        if not key:
            return False
        # Constant-time, both: how much of a guess matched must not show in the answer's timing.
        bearer = hmac.compare_digest(headers.get(b"authorization", b""), b"Bearer " + key)
        return hmac.compare_digest(headers.get(b"x-api-key", b""), key) | bearer
