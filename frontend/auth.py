"""Optional API key: with one configured, every route but /health needs `Authorization: Bearer <key>`."""
import hmac

from frontend.http import HTTPError

OPEN_PATHS = {"/health"}


class ApiKeyMiddleware:
    def __init__(self, app, api_key: str):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            # Constant-time: how much of a guess matched must not show in the answer's timing.
            if not hmac.compare_digest(given, self.expected):
                response = HTTPError(401, "a valid API key is needed: Authorization: Bearer <key>").response()
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
