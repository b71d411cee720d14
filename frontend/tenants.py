"""Tenants: the teams that share the service, each known by the API keys it holds (docs/tenants.md).

Keys are kept as SHA-256 digests, so that server.yml and the tenants file hold no secret. An API key is
a random secret of 128 bits or more, not a word a person chose: no guessing reverses a fast digest of
one, so a password hash (bcrypt, argon2), which costs tens of milliseconds of CPU by design, would
only slow every request. A key presented is looked up by its digest, so the time a lookup takes says
nothing about the key.

`python -m frontend.tenants new-key` prints a fresh key and its digest; `python -m frontend.tenants hash`
prints the digest of a key read from standard input (the same as `printf %s KEY | sha256sum`).
"""
import argparse
import contextlib
import contextvars
import hashlib
import logging
import secrets
import sys
from dataclasses import dataclass

import msgspec

from common.config import RESERVED_TENANTS, PriorityConfig, ServerConfig, TenantConfig, load_tenants
from frontend.metrics import open_tenant_series

log = logging.getLogger(__name__)

# The tenant of server.yml's api_key (and of every request while no key is configured), and of admin_api_key.
DEFAULT, ADMIN = RESERVED_TENANTS
MAX_KEY_BYTES = 512  # a longer header value is no key this service gave out: refused without hashing


@dataclass(frozen=True)
class Tenant:
    name: str
    models: frozenset[str] = frozenset()
    max_tokens: int = 0
    max_concurrent: int = 0
    request_timeout_s: float = 0.0
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    admin: bool = False
    priority: int = 0  # its requests' priority class, by place in priority.classes (vLLM's priority)

    def may_use(self, model: str) -> bool:
        return not self.models or model in self.models

    @classmethod
    def of(cls, config: TenantConfig, priority: PriorityConfig) -> "Tenant":
        place = priority.rank(config.priority_class or priority.default_class, "priority_class")
        return cls(config.name, frozenset(config.models), config.max_tokens, config.max_concurrent,
                   config.request_timeout_s, config.requests_per_minute, config.tokens_per_minute, priority=place)


ANONYMOUS = Tenant(DEFAULT)  # its priority is the default class's: Tenants.anonymous


def key_hash(key: str | bytes) -> str:
    return "sha256:" + hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()


def keyring(server: ServerConfig, api_key: str, admin_api_key: str) -> dict[str, Tenant]:
    """Every key's digest and the tenant it opens (ValueError: the tenants configured are wrong)."""
    ring = {digest: Tenant.of(config, server.priority)
            for config in load_tenants(server) for digest in config.api_key_hashes}
    if api_key:
        ring[key_hash(api_key)] = default_tenant(server)
    if admin_api_key:
        ring[key_hash(admin_api_key)] = Tenant(ADMIN, admin=True)
    return ring


def default_tenant(server: ServerConfig) -> Tenant:
    return Tenant(DEFAULT, priority=server.priority.rank(server.priority.default_class, "priority.default_class"))


class Tenants:
    """The keys one frontend takes now, and how many requests each tenant has open on it."""

    def __init__(self, server: ServerConfig, api_key: str = "", admin_api_key: str = ""):
        self.api_key, self.admin_api_key = api_key, admin_api_key
        self.priority = server.priority  # the classes as at start: a reload changes tenants only
        self.ring = keyring(server, api_key, admin_api_key)
        self.anonymous = default_tenant(server)  # every request's while no key is needed
        self.open: dict[str, int] = {}
        open_tenant_series(self.names())

    @property
    def keys_required(self) -> bool:
        """Some key other than the admin's is configured: requests without one are refused."""
        return any(not tenant.admin for tenant in self.ring.values())

    def reload(self, server: ServerConfig) -> None:
        """Take `server`'s tenants in place of the current ones; requests already admitted go on as
        their tenant was. A configuration that does not load changes nothing."""
        server = msgspec.structs.replace(server, priority=self.priority)
        try:
            self.ring = keyring(server, self.api_key, self.admin_api_key)
            self.anonymous = default_tenant(server)
        except ValueError as error:
            log.error("tenants not reloaded, the ones before stay: %s", error)
            return
        open_tenant_series(self.names())
        log.info("tenants reloaded: %d keys of %d tenants", len(self.ring), len(self.names()))

    def names(self) -> set[str]:
        """The tenants that can be served: those of the keys, or the anonymous one while none is needed."""
        return {tenant.name for tenant in self.ring.values()} | (set() if self.keys_required else {ANONYMOUS.name})

    def holder(self, headers: dict) -> Tenant | None:
        """The tenant whose key the request carries (Bearer, or x-api-key), else None."""
        for value in (headers.get(b"x-api-key"), bearer(headers.get(b"authorization", b""))):
            if value and len(value) <= MAX_KEY_BYTES and (tenant := self.ring.get(key_hash(value))):
                return tenant
        return None


def bearer(authorization: bytes) -> bytes | None:
    scheme, _, token = authorization.partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else None


_tenant: contextvars.ContextVar[Tenant] = contextvars.ContextVar("tenant", default=ANONYMOUS)


def current_tenant() -> Tenant:
    return _tenant.get()


def set_current_tenant(tenant: Tenant) -> None:
    """For the rest of the request (tenant_scope ends it): what its body asked changed its tenant's terms."""
    _tenant.set(tenant)


@contextlib.contextmanager
def tenant_scope(tenant: Tenant):
    token = _tenant.set(tenant)
    try:
        yield tenant
    finally:
        _tenant.reset(token)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m frontend.tenants")
    parser.add_argument("command", choices=["hash", "new-key"],
                        help="hash: the digest of the key on standard input; new-key: a fresh key and its digest")
    if parser.parse_args().command == "hash":
        key = sys.stdin.read().removesuffix("\n")
        if not key:
            parser.error("no key on standard input")
        print(key_hash(key))
    else:
        key = "sk-" + secrets.token_urlsafe(32)
        print(f"key:    {key}\nsha256: {key_hash(key)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
