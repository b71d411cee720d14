"""Tenants' quotas over the whole fleet (docs/tenants.md, "Quotas"): `requests_per_minute` and
`tokens_per_minute`. The engines count them, since every request of every frontend reaches one: each
engine reports what each tenant used on it in the current minute in every LoadReport, to every
frontend, and a frontend adds up the latest report of each engine. No frontend counts anything of its
own, so any number of frontends, on any hosts, hold one budget.

The window is the wall clock's minute, `int(time.time() // 60)` on every host (NTP keeps them within
milliseconds): a fixed window, so that every frontend reads the same sum, and a tenant's budget comes
back whole when the minute turns. A frontend's view is as old as the last report of each engine: one
engine step, and the PUB/SUB hop."""
import math
import time
from collections.abc import Iterable

from common.messages import LoadReport, TenantUse
from frontend.http import HTTPError
from frontend.tenants import Tenant

MINUTE_S = 60


class RateLimited(HTTPError):
    """A 429, naming the tenant's limit it reached (for llm_tenant_rate_limited_total)."""

    def __init__(self, limit: str, message: str, headers: dict):
        super().__init__(429, message, headers=headers)
        self.limit = limit


def current_minute(now: float) -> int:
    return int(now // MINUTE_S)


def fleet_use(reports: Iterable[LoadReport], tenant: str, minute: int) -> TenantUse:
    """What `tenant` used in `minute` on every engine, by the reports given (one an engine)."""
    use = TenantUse()
    for report in reports:
        row = report.usage.get(tenant) if report.usage_minute == minute else None
        if row is not None:
            use.requests += row.requests
            use.prompt_tokens += row.prompt_tokens
            use.cached_tokens += row.cached_tokens
            use.output_tokens += row.output_tokens
    return use


def counted_tokens(use: TenantUse, cached_token_weight: float) -> int:
    """The tokens a quota counts: prompt tokens computed and output tokens whole, cached ones at their weight."""
    return use.prompt_tokens + use.output_tokens + math.ceil(use.cached_tokens * cached_token_weight)


def quota_refusal(tenant: Tenant, reports: Iterable[LoadReport], cached_token_weight: float,
                  now: float | None = None) -> RateLimited | None:
    """A 429 when `tenant` has used a quota up in this minute, with OpenAI's x-ratelimit-* headers and
    Retry-After (the seconds until the minute turns); else None."""
    if not (tenant.requests_per_minute or tenant.tokens_per_minute):
        return None
    now = time.time() if now is None else now
    use = fleet_use(reports, tenant.name, current_minute(now))
    reset_s = math.ceil(MINUTE_S - now % MINUTE_S)
    headers, spent, limits = {}, [], []
    for kind, limit, used in (("requests", tenant.requests_per_minute, use.requests),
                              ("tokens", tenant.tokens_per_minute, counted_tokens(use, cached_token_weight))):
        if limit:
            headers |= {f"x-ratelimit-limit-{kind}": str(limit),
                        f"x-ratelimit-remaining-{kind}": str(max(limit - used, 0)),
                        f"x-ratelimit-reset-{kind}": f"{reset_s}s"}
            if used >= limit:
                spent.append(f"{limit} {kind} a minute (used {used})")
                limits.append(f"{kind}_per_minute")
    if not spent:
        return None
    return RateLimited(limits[0], f"the tenant {tenant.name!r} has used its {' and '.join(spent)}; the next "
                                  f"minute starts in {reset_s} s", headers={"Retry-After": str(reset_s), **headers})
