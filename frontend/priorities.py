"""A request's priority class (docs/tenants.md, "Priorities"): its tenant's `priority_class`, which is also
the best class its requests may ask for. A request asks for a class with `X-Priority: <class name>` (every
route) or vLLM's `priority` field (the OpenAI routes: the class's place in priority.classes, 0 first); asking
for a better class than its tenant's gets the tenant's, as a tenant's max_tokens caps a request's. The class
rides on the wire as vLLM's priority (Add.priority)."""
import dataclasses

from common.config import PriorityConfig
from frontend.http import HTTPError
from frontend.tenants import Tenant, current_tenant, set_current_tenant

PRIORITY_HEADER = b"x-priority"


def header_priority(tenant: Tenant, config: PriorityConfig, header: bytes | None) -> tuple[Tenant, HTTPError | None]:
    """The request's tenant with its class lowered to the header's, or a 400 naming the header."""
    if header is None:
        return tenant, None
    name = header.decode("latin-1").strip()
    place = next((place for place, c in enumerate(config.classes) if c.name == name), None)
    if place is None:
        return tenant, HTTPError(400, f"X-Priority must name a priority class ({names(config)}); "
                                      f"got {header[:40].decode('latin-1')!r}", "X-Priority")
    return lowered(tenant, place), None


def ask_priority(requested: int | None, config: PriorityConfig) -> None:
    """vLLM's `priority` field of the request's body: the class at that place, at best its tenant's."""
    if requested is None:
        return
    if not 0 <= requested < len(config.classes):
        raise HTTPError(400, f"priority must be the place of a priority class, 0 (scheduled first) to "
                             f"{len(config.classes) - 1}: {names(config)}; got {requested}", "priority")
    set_current_tenant(lowered(current_tenant(), requested))


def lowered(tenant: Tenant, place: int) -> Tenant:
    return dataclasses.replace(tenant, priority=place) if place > tenant.priority else tenant


def names(config: PriorityConfig) -> str:
    return ", ".join(f"{place} {c.name}" for place, c in enumerate(config.classes))
