"""Administration: organizations, tenants and API keys (admin keys only), and the caller's own tenant."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, status

from state_manager.deps import AdminDep, ServicesDep, TenantDep
from state_manager.strict_json import StrictJsonRoute
from state_manager.tenants import service
from state_manager.tenants.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyRead,
    ApiKeyUpdate,
    OrganizationCreate,
    OrganizationRead,
    TenantCreate,
    TenantRead,
    TenantUpdate,
)

admin = APIRouter(prefix="/v1/admin", tags=["admin"], route_class=StrictJsonRoute)
own = APIRouter(prefix="/v1", tags=["tenant"], route_class=StrictJsonRoute)


@admin.post("/organizations", status_code=status.HTTP_201_CREATED)
async def create_organization(
    body: OrganizationCreate, _: AdminDep, services: ServicesDep
) -> OrganizationRead:
    async with services.db.transaction(None) as conn:
        return await service.create_organization(conn, body)


@admin.get("/organizations")
async def list_organizations(_: AdminDep, services: ServicesDep) -> list[OrganizationRead]:
    async with services.db.transaction(None, write=False) as conn:
        return await service.list_organizations(conn)


@admin.post("/tenants", status_code=status.HTTP_201_CREATED)
async def create_tenant(body: TenantCreate, _: AdminDep, services: ServicesDep) -> TenantRead:
    async with services.db.transaction(None) as conn:
        return await service.create_tenant(conn, body)


@admin.get("/tenants")
async def list_tenants(
    _: AdminDep, services: ServicesDep, organization_id: str | None = None
) -> list[TenantRead]:
    async with services.db.transaction(None, write=False) as conn:
        return await service.list_tenants(conn, organization_id)


@admin.get("/tenants/{tenant_id}")
async def get_tenant(tenant_id: str, _: AdminDep, services: ServicesDep) -> TenantRead:
    async with services.db.transaction(None, write=False) as conn:
        return await service.get_tenant(conn, tenant_id)


@admin.patch("/tenants/{tenant_id}")
async def update_tenant(tenant_id: str, body: TenantUpdate, _: AdminDep, services: ServicesDep) -> TenantRead:
    async with services.db.transaction(None) as conn:
        return await service.update_tenant(conn, tenant_id, body)


@admin.post("/keys", status_code=status.HTTP_201_CREATED)
async def create_key(body: ApiKeyCreate, _: AdminDep, services: ServicesDep) -> ApiKeyCreated:
    async with services.db.transaction(None) as conn:
        return await service.create_key(conn, body)


@admin.get("/keys")
async def list_keys(_: AdminDep, services: ServicesDep, tenant_id: str | None = None) -> list[ApiKeyRead]:
    async with services.db.transaction(None, write=False) as conn:
        return await service.list_keys(conn, tenant_id)


@admin.patch("/keys/{key_id}", summary="Change a key's rate limit")
async def update_key(key_id: uuid.UUID, body: ApiKeyUpdate, _: AdminDep, services: ServicesDep) -> ApiKeyRead:
    """Fields left out stay as they are; null puts the settings' default back; a rate of 0 is no limit.
    This instance applies it at once, others within API_KEY_CACHE_SECONDS."""
    async with services.db.transaction(None) as conn:
        updated = await service.update_key(conn, key_id, body)
    services.auth.forget()
    return updated


@admin.delete("/keys/{key_id}")
async def revoke_key(key_id: uuid.UUID, _: AdminDep, services: ServicesDep) -> ApiKeyRead:
    async with services.db.transaction(None) as conn:
        revoked = await service.revoke_key(conn, key_id)
    services.auth.forget()
    return revoked


@own.get("/tenant", summary="The tenant this request acts for")
async def current_tenant(scope: TenantDep, services: ServicesDep) -> TenantRead:
    async with services.db.transaction(None, write=False) as conn:
        return await service.get_tenant(conn, scope.tenant_id)
