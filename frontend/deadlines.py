"""A request's own deadline: `X-Request-Timeout: <seconds>` shortens its tenant's request_timeout_s (or
server.yml's) for that request, never lengthens it (docs/tenants.md, "Deadlines"). The timeout runs from
when the request is sent to the engine: past it, a request still waiting in vLLM's queue is aborted there
before it starts, and one running ends with a 504 and is aborted."""
import dataclasses
import re

from frontend.http import HTTPError
from frontend.tenants import Tenant

TIMEOUT_HEADER = b"x-request-timeout"
SECONDS = re.compile(rb"\s*([0-9]{1,9}(\.[0-9]{1,6})?)\s*")


def request_timeout(tenant: Tenant, server_timeout_s: float, header: bytes | None) -> tuple[Tenant, HTTPError | None]:
    """The request's tenant with its timeout lowered to the header's, or a 400 naming the header."""
    if header is None:
        return tenant, None
    found = SECONDS.fullmatch(header)
    seconds = float(found.group(1)) if found else 0.0
    if seconds <= 0:
        shown = header[:40].decode("latin-1")
        return tenant, HTTPError(400, f"X-Request-Timeout must be a number of seconds above 0, such as 30 or 2.5; "
                                      f"got {shown!r}", "X-Request-Timeout")
    cap = tenant.request_timeout_s or server_timeout_s
    return dataclasses.replace(tenant, request_timeout_s=min(seconds, cap)), None
