"""What a web page in a visitor's browser may make this service do: nothing, unless server.yml says so.

A page on any origin can send requests to a local service; the browser only hides the answers.
So, before any work:
- the Host must be one the service answers to: on a loopback listen, a loopback name or one of
  `allowed_hosts` (a page whose name a DNS rebinding points at 127.0.0.1 sends its own name);
- a request from another origin (its `Origin` is not the service's own) must come from one of
  `cors.allowed_origins`, or it is refused at once (a POST a page sends without a preflight
  never runs); a preflight from such an origin is refused too;
- JSON routes take only `content-type: application/json` (frontend.http.read_json), which no page
  can send to another origin without a preflight.
CORS itself is Starlette's CORSMiddleware; every refusal is JSON in the route's protocol shape.
"""
import ipaddress
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware

from common.config import ServerConfig
from frontend.error_shapes import error_response
from frontend.http import HTTPError

PREFLIGHT_FIELDS = {"origin": "origin", "method": "access-control-request-method",
                    "headers": "access-control-request-headers",
                    "private-network": "access-control-request-private-network"}


def host_name(host: str) -> str:
    """The name in a Host header, without its port or an IPv6 literal's brackets, lower-cased."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def is_loopback_name(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def allowed_hosts(server: ServerConfig) -> set[str] | None:
    """The Host names answered besides loopback names; None: any."""
    if "*" in server.allowed_hosts or (not server.allowed_hosts and not is_loopback_name(server.host)):
        return None
    return {host_name(host) for host in server.allowed_hosts}


class BrowserGuard(CORSMiddleware):
    def __init__(self, app, server: ServerConfig):
        cors = server.cors
        super().__init__(app, allow_origins=cors.allowed_origins, allow_methods=cors.allowed_methods,
                         allow_headers=cors.allowed_headers, allow_credentials=cors.allow_credentials)
        self.hosts = allowed_hosts(server)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        error = self.refusal(headers, scope["method"])
        if error is not None:
            await error_response(error, scope["path"])(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def refusal(self, headers: Headers, method: str) -> HTTPError | None:
        host = headers.get("host")
        if host is not None and not self.host_allowed(host):
            return HTTPError(403, f"this service does not answer to the host {host[:100]!r}: add it to "
                                  "allowed_hosts in server.yml if it is a name of this service", "host")
        origin = headers.get("origin")
        if origin is None or same_origin(origin, host):
            return None
        if method == "OPTIONS" and "access-control-request-method" in headers:
            preflight = self.preflight_response(headers)
            if preflight.status_code == 200:
                return None
            refused = preflight.body.decode().removeprefix("Disallowed CORS ").split(", ")
            return HTTPError(400, f"CORS preflight refused: {', '.join(refused)} not allowed "
                                  "(cors in server.yml)", PREFLIGHT_FIELDS.get(refused[0], "origin"),
                             headers={"vary": preflight.headers["vary"]})
        if not self.is_allowed_origin(origin):
            return HTTPError(403, f"requests from the origin {origin[:100]!r} are not allowed: add it to "
                                  "cors.allowed_origins in server.yml to let its pages call this API", "origin")
        return None

    def host_allowed(self, host: str) -> bool:
        name = host_name(host)
        return self.hosts is None or is_loopback_name(name) or name in self.hosts


def same_origin(origin: str, host: str | None) -> bool:
    """The page is the service's own (the dashboard): its origin names the host and port asked."""
    try:
        return host is not None and urlsplit(origin).netloc.lower() == host.strip().lower()
    except ValueError:
        return False
