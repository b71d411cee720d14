"""Optional API key: with one configured, every route but /health needs `Authorization: Bearer <key>`,
or `x-api-key: <key>` as Anthropic's clients send it. Refusals on the Messages routes are in
Anthropic's error shape."""
import hmac

from frontend.anthropic.errors import error_response
from frontend.http import HTTPError

OPEN_PATHS = {"/health"}
ANTHROPIC_PREFIX = "/v1/messages"


class ApiKeyMiddleware:
    def __init__(self, app, api_key: str):
        self.app = app
        self.bearer = f"Bearer {api_key}".encode()
        self.key = api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS and not self.allowed(dict(scope["headers"])):
            error = HTTPError(401, "a valid API key is needed: Authorization: Bearer <key>, or x-api-key: <key>")
            anthropic = scope["path"].startswith(ANTHROPIC_PREFIX)
            response = error_response(error) if anthropic else error.response()
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def allowed(self, headers: dict) -> bool:
        # Constant-time, both: how much of a guess matched must not show in the answer's timing.
        bearer = hmac.compare_digest(headers.get(b"authorization", b""), self.bearer)
        return hmac.compare_digest(headers.get(b"x-api-key", b""), self.key) | bearer
