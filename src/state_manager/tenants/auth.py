"""Who is calling, and for which tenant.

Keys are checked against the database and remembered for a short time (settings.api_key_cache_seconds),
so a revoked key stops working on other instances within that time and on this one at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from state_manager.db.database import Database
from state_manager.errors import BadRequest, Forbidden, NotFound, TooManyRequests, Unauthorized
from state_manager.observability import metrics
from state_manager.observability.logging import note_request_key
from state_manager.ratelimit import Limit, RateLimiter, RateLimitPolicy, Refused, limit_headers_var
from state_manager.tenants import service
from state_manager.tenants.schemas import KeyKind

_TENANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Principal:
    kind: KeyKind
    tenant_id: str | None  # the tenant a tenant key is bound to
    key_id: str | None  # None when authentication is disabled
    limit: Limit | None = None  # its rate limit, the settings' default unless it has its own; None: none


ANONYMOUS_ADMIN = Principal(kind=KeyKind.ADMIN, tenant_id=None, key_id=None)
V = TypeVar("V")
REFRESH_SHARE = 0.2  # refreshed in the background in the last fifth of their life


class _Remembered(Generic[V]):
    """Answers kept for `ttl` seconds, never longer; one load per key at a time; a key still in use is
    reloaded in the background before it expires. Without that, a busy key expired under load and every
    request in flight at that moment loaded it at once (seen as a latency spike every `ttl` seconds).
    A load that raises is not kept."""

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._entries: dict[str, tuple[float, V]] = {}
        self._loading: dict[str, asyncio.Task[V]] = {}
        self._cleared = 0  # a load that began before the last clear() is not kept

    def known(self, key: str) -> tuple[bool, V | None]:
        """(True, value) if an unexpired answer is kept for `key`; never loads."""
        entry = self._entries.get(key)
        if entry is None or entry[0] <= time.monotonic():
            return False, None
        return True, entry[1]

    async def get(self, key: str, load: Callable[[], Awaitable[V]]) -> V:
        if self._ttl <= 0:
            return await load()
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            if entry[0] - now < self._ttl * REFRESH_SHARE and key not in self._loading:
                self._start(key, load)
            return entry[1]
        task = self._loading.get(key) or self._start(key, load)
        return await asyncio.shield(task)

    def _start(self, key: str, load: Callable[[], Awaitable[V]]) -> asyncio.Task[V]:
        task = asyncio.ensure_future(self._load(key, load, self._cleared))
        self._loading[key] = task
        task.add_done_callback(lambda done: self._done(key, done))
        return task

    def _done(self, key: str, done: asyncio.Task[V]) -> None:
        self._loading.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved: a failed background refresh leaves the entry to expire

    async def _load(self, key: str, load: Callable[[], Awaitable[V]], cleared: int) -> V:
        value = await load()
        if cleared == self._cleared:
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[key] = (time.monotonic() + self._ttl, value)
        return value

    def clear(self) -> None:
        self._cleared += 1
        self._entries.clear()
        self._loading.clear()  # later requests load afresh instead of waiting for an older answer


def valid_tenant_id(value: str) -> str:
    if not _TENANT_ID.match(value):
        raise BadRequest(
            "X-Tenant-ID must be 1 to 64 letters, digits and ._- (starting with a letter or digit)"
        )
    return value


def _refused(refused: Refused, detail: str, scope: str) -> TooManyRequests:
    limit = refused.limit
    return TooManyRequests(
        detail,
        extra={
            "scope": scope,
            "retry_after": refused.retry_after,
            "limit_per_second": limit.per_second,
            "burst": limit.burst,
        },
        headers={
            "Retry-After": str(refused.retry_after),
            "RateLimit-Limit": str(limit.burst),
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": str(refused.retry_after),
        },
    )


class Authenticator:
    def __init__(
        self,
        db: Database,
        *,
        cache_seconds: float,
        required: bool,
        default_tenant_id: str,
        limiter: RateLimiter | None = None,
        limits: RateLimitPolicy | None = None,
    ) -> None:
        self._db = db
        self.required = required
        self.default_tenant_id = default_tenant_id
        self.limiter = limiter or RateLimiter()
        self.limits = limits or RateLimitPolicy(enabled=False, key_default=None, auth_failures=None)
        # Failed authentications are counted per client address only when limits are on.
        self._failures = self.limits.auth_failures if self.limits.enabled else None
        self._keys: _Remembered[Principal | None] = _Remembered(cache_seconds)
        self._tenants: _Remembered[str] = _Remembered(cache_seconds)

    def forget(self) -> None:
        """Drop what this instance remembers (after a key is revoked or a tenant changes)."""
        self._keys.clear()
        self._tenants.clear()

    async def principal(self, presented: str | None, client: str | None = None) -> Principal:
        """The key's principal, once within its rate limit. `client` is the caller's address: an address
        that fails to authenticate too often is refused (429) before its keys reach the database."""
        if not self.required:
            return ANONYMOUS_ADMIN
        if not presented:
            raise Unauthorized("send an API key as `Authorization: Bearer <key>` or `X-API-Key`")

        async def verify() -> Principal | None:
            async with self._db.transaction(None, write=False) as conn:
                verified = await service.verify_key(conn, presented)
            if verified is None:
                return None
            return Principal(
                kind=verified.kind,
                tenant_id=verified.tenant_id,
                key_id=str(verified.id),
                limit=self.limits.key_limit(verified.rate_limit_per_second, verified.rate_limit_burst),
            )

        digest = hashlib.sha256(presented.encode()).hexdigest()
        failures = self._failures
        if failures is not None and client is not None:
            refused = self.limiter.exhausted("auth-failures:" + client)
            if refused is not None:
                _, remembered = self._keys.known(digest)
                if remembered is None:  # only a key this process already verified gets through
                    metrics.RATE_LIMITED.child("auth-failures").inc()
                    raise _refused(refused, "too many failed authentications from this address", "address")
        found = await self._keys.get(digest, verify)
        if found is None:
            if failures is not None and client is not None:
                refused = self.limiter.take("auth-failures:" + client, failures)
                if refused is not None:
                    metrics.RATE_LIMITED.child("auth-failures").inc()
                    raise _refused(refused, "too many failed authentications from this address", "address")
            raise Unauthorized("unknown or revoked API key")
        if found.key_id is not None:
            note_request_key(found.key_id)
            if found.limit is not None:
                refused = self.limiter.take("key:" + found.key_id, found.limit, limit_headers_var.get())
                if refused is not None:
                    metrics.RATE_LIMITED.child(found.kind.value).inc()
                    raise _refused(refused, "this key sent more requests than its rate limit allows", "key")
        return found

    async def tenant_for(self, principal: Principal, requested: str | None) -> str:
        """The tenant a request acts for: a tenant key's own, or the one a service/admin key names."""
        if requested is not None:
            requested = valid_tenant_id(requested)
        if principal.kind is KeyKind.TENANT:
            assert principal.tenant_id is not None
            if requested is not None and requested != principal.tenant_id:
                raise Forbidden("this key acts for its own tenant only")
            return principal.tenant_id
        if requested is None:
            if not self.required:
                return self.default_tenant_id
            raise BadRequest("name the tenant with the X-Tenant-ID header")
        return await self.known_tenant(requested)

    async def known_tenant(self, tenant_id: str) -> str:
        """`tenant_id`, once checked to exist (remembered for the cache time); NotFound otherwise."""

        async def check() -> str:
            async with self._db.transaction(None, write=False) as conn:
                exists = await service.tenant_exists(conn, tenant_id)
            if not exists:
                raise NotFound(f"tenant {tenant_id!r} not found")
            return tenant_id

        return await self._tenants.get(tenant_id, check)
