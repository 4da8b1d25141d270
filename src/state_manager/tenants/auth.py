"""Who is calling, and for which tenant.

Keys are checked against the database and remembered for a short time (settings.api_key_cache_seconds),
so a revoked key stops working on other instances within that time and on this one at once.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass

from state_manager.db.database import Database
from state_manager.errors import BadRequest, Forbidden, NotFound, Unauthorized
from state_manager.tenants import service
from state_manager.tenants.schemas import KeyKind

_TENANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Principal:
    kind: KeyKind
    tenant_id: str | None  # the tenant a tenant key is bound to
    key_id: str | None  # None when authentication is disabled


ANONYMOUS_ADMIN = Principal(kind=KeyKind.ADMIN, tenant_id=None, key_id=None)


def valid_tenant_id(value: str) -> str:
    if not _TENANT_ID.match(value):
        raise BadRequest(
            "X-Tenant-ID must be 1 to 64 letters, digits and ._- (starting with a letter or digit)"
        )
    return value


class Authenticator:
    def __init__(self, db: Database, *, cache_seconds: float, required: bool, default_tenant_id: str) -> None:
        self._db = db
        self._ttl = cache_seconds
        self.required = required
        self.default_tenant_id = default_tenant_id
        self._keys: dict[str, tuple[float, Principal | None]] = {}
        self._tenants: dict[str, float] = {}

    def forget(self) -> None:
        """Drop what this instance remembers (after a key is revoked or a tenant changes)."""
        self._keys.clear()
        self._tenants.clear()

    async def principal(self, presented: str | None) -> Principal:
        if not self.required:
            return ANONYMOUS_ADMIN
        if not presented:
            raise Unauthorized("send an API key as `Authorization: Bearer <key>` or `X-API-Key`")
        digest = hashlib.sha256(presented.encode()).hexdigest()
        now = time.monotonic()
        cached = self._keys.get(digest)
        if cached is not None and cached[0] > now:
            found = cached[1]
        else:
            async with self._db.transaction(None, write=False) as conn:
                verified = await service.verify_key(conn, presented)
            found = (
                None
                if verified is None
                else Principal(kind=verified.kind, tenant_id=verified.tenant_id, key_id=str(verified.id))
            )
            if len(self._keys) > 10_000:
                self._keys.clear()
            self._keys[digest] = (now + self._ttl, found)
        if found is None:
            raise Unauthorized("unknown or revoked API key")
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
        now = time.monotonic()
        if self._tenants.get(tenant_id, 0.0) > now:
            return tenant_id
        async with self._db.transaction(None, write=False) as conn:
            exists = await service.tenant_exists(conn, tenant_id)
        if not exists:
            raise NotFound(f"tenant {tenant_id!r} not found")
        if len(self._tenants) > 10_000:
            self._tenants.clear()
        self._tenants[tenant_id] = now + self._ttl
        return tenant_id
