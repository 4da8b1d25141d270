"""Organizations, tenants and API keys; the first-run bootstrap of the embedded default."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.errors import BadRequest, Conflict, NotFound
from state_manager.tenants import keys
from state_manager.tenants import repository as repo
from state_manager.tenants.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyRead,
    ApiKeyUpdate,
    KeyKind,
    OrganizationCreate,
    OrganizationRead,
    TenantCreate,
    TenantRead,
    TenantSettings,
    TenantUpdate,
)


async def create_organization(conn: AsyncConnection, data: OrganizationCreate) -> OrganizationRead:
    if await repo.get_organization(conn, data.id) is not None:
        raise Conflict(f"organization {data.id!r} already exists")
    return OrganizationRead.model_validate(
        dict(await repo.insert_organization(conn, id=data.id, name=data.name))
    )


async def list_organizations(conn: AsyncConnection) -> list[OrganizationRead]:
    return [OrganizationRead.model_validate(dict(row)) for row in await repo.list_organizations(conn)]


async def create_tenant(conn: AsyncConnection, data: TenantCreate) -> TenantRead:
    if await repo.get_organization(conn, data.organization_id) is None:
        raise NotFound(f"organization {data.organization_id!r} not found")
    if await repo.get_tenant(conn, data.id) is not None:
        raise Conflict(f"tenant {data.id!r} already exists")
    row = await repo.insert_tenant(
        conn,
        id=data.id,
        organization_id=data.organization_id,
        name=data.name,
        settings=data.settings.model_dump(mode="json"),
    )
    return TenantRead.model_validate(dict(row))


async def get_tenant(conn: AsyncConnection, tenant_id: str) -> TenantRead:
    row = await repo.get_tenant(conn, tenant_id)
    if row is None:
        raise NotFound(f"tenant {tenant_id!r} not found")
    return TenantRead.model_validate(dict(row))


async def tenant_exists(conn: AsyncConnection, tenant_id: str) -> bool:
    return await repo.get_tenant(conn, tenant_id) is not None


async def list_tenants(conn: AsyncConnection, organization_id: str | None = None) -> list[TenantRead]:
    return [TenantRead.model_validate(dict(row)) for row in await repo.list_tenants(conn, organization_id)]


async def update_tenant(conn: AsyncConnection, tenant_id: str, data: TenantUpdate) -> TenantRead:
    values: dict[str, Any] = {}
    if data.name is not None:
        values["name"] = data.name
    if data.settings is not None:
        values["settings"] = data.settings.model_dump(mode="json")
    row = (
        await repo.update_tenant(conn, tenant_id, values)
        if values
        else await repo.get_tenant(conn, tenant_id)
    )
    if row is None:
        raise NotFound(f"tenant {tenant_id!r} not found")
    return TenantRead.model_validate(dict(row))


async def create_key(conn: AsyncConnection, data: ApiKeyCreate) -> ApiKeyCreated:
    if data.kind is KeyKind.TENANT:
        if data.tenant_id is None:
            raise BadRequest("a tenant key needs tenant_id")
        if await repo.get_tenant(conn, data.tenant_id) is None:
            raise NotFound(f"tenant {data.tenant_id!r} not found")
    elif data.tenant_id is not None:
        raise BadRequest(f"a {data.kind} key is not bound to a tenant; leave tenant_id out")
    new = keys.generate()
    try:
        row = await repo.insert_key(
            conn,
            prefix=new.prefix,
            secret_hash=new.secret_hash,
            kind=data.kind.value,
            name=data.name,
            tenant_id=data.tenant_id,
            rate_limit_per_second=data.rate_limit_per_second,
            rate_limit_burst=data.rate_limit_burst,
        )
    except IntegrityError as exc:  # a prefix collision: 64 random bits, practically never
        raise Conflict("key prefix collision; try again") from exc
    return ApiKeyCreated.model_validate({**row, "key": new.plaintext})


async def list_keys(conn: AsyncConnection, tenant_id: str | None = None) -> list[ApiKeyRead]:
    return [ApiKeyRead.model_validate(dict(row)) for row in await repo.list_keys(conn, tenant_id)]


async def update_key(conn: AsyncConnection, key_id: uuid.UUID, data: ApiKeyUpdate) -> ApiKeyRead:
    """Changes what the body names of a key's rate limit (servers apply it within API_KEY_CACHE_SECONDS)."""
    values = data.model_dump(include=data.model_fields_set)
    row = (
        await repo.update_key_limit(conn, key_id, values)
        if values
        else (await repo.find_key_by_id(conn, key_id))
    )
    if row is None:
        raise NotFound(f"key {key_id} not found")
    return ApiKeyRead.model_validate(dict(row))


async def revoke_key(conn: AsyncConnection, key_id: uuid.UUID) -> ApiKeyRead:
    row = await repo.revoke_key(conn, key_id)
    if row is None:
        raise NotFound(f"key {key_id} not found")
    return ApiKeyRead.model_validate(dict(row))


@dataclass(frozen=True, slots=True)
class VerifiedKey:
    id: uuid.UUID
    kind: KeyKind
    tenant_id: str | None
    rate_limit_per_second: float | None = None
    rate_limit_burst: int | None = None


async def verify_key(conn: AsyncConnection, plaintext: str) -> VerifiedKey | None:
    parts = keys.split(plaintext)
    if parts is None:
        return None
    prefix, secret = parts
    row = await repo.find_key_by_prefix(conn, prefix)
    if row is None or row["revoked_at"] is not None or not keys.matches(secret, row["secret_hash"]):
        return None
    return VerifiedKey(
        id=row["id"],
        kind=KeyKind(row["kind"]),
        tenant_id=row["tenant_id"],
        rate_limit_per_second=row["rate_limit_per_second"],
        rate_limit_burst=row["rate_limit_burst"],
    )


@dataclass(frozen=True, slots=True)
class Bootstrap:
    tenant_id: str
    admin_key: str | None  # set only when this call created it


async def bootstrap_default_tenant(conn: AsyncConnection, tenant_id: str) -> Bootstrap:
    """On a database with no key at all: a default organization and tenant, and one admin key."""
    if await repo.get_tenant(conn, tenant_id) is None:
        if await repo.get_organization(conn, tenant_id) is None:
            await repo.insert_organization(conn, id=tenant_id, name="Default organization")
        await repo.insert_tenant(
            conn,
            id=tenant_id,
            organization_id=tenant_id,
            name="Default tenant",
            settings=TenantSettings().model_dump(mode="json"),
        )
    if await repo.list_keys(conn, None):
        return Bootstrap(tenant_id=tenant_id, admin_key=None)
    created = await create_key(conn, ApiKeyCreate(kind=KeyKind.ADMIN, name="first-run admin key"))
    return Bootstrap(tenant_id=tenant_id, admin_key=created.key)
