"""SQL for organizations, tenants and API keys."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import RowMapping, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.db.types import utcnow
from state_manager.tenants.models import api_keys, organizations, tenants


async def insert_organization(conn: AsyncConnection, *, id: str, name: str) -> RowMapping:
    statement = organizations.insert().values(id=id, name=name, created_at=utcnow()).returning(organizations)
    row: RowMapping = (await conn.execute(statement)).mappings().one()
    return row


async def list_organizations(conn: AsyncConnection) -> Sequence[RowMapping]:
    return (await conn.execute(select(organizations).order_by(organizations.c.id))).mappings().all()


async def get_organization(conn: AsyncConnection, id: str) -> RowMapping | None:
    query = select(organizations).where(organizations.c.id == id)
    found: RowMapping | None = (await conn.execute(query)).mappings().first()
    return found


async def insert_tenant(
    conn: AsyncConnection, *, id: str, organization_id: str, name: str, settings: dict[str, Any]
) -> RowMapping:
    now = utcnow()
    statement = (
        tenants.insert()
        .values(
            id=id,
            organization_id=organization_id,
            name=name,
            settings=settings,
            created_at=now,
            updated_at=now,
        )
        .returning(tenants)
    )
    row: RowMapping = (await conn.execute(statement)).mappings().one()
    return row


async def get_tenant(conn: AsyncConnection, id: str) -> RowMapping | None:
    found: RowMapping | None = (
        (await conn.execute(select(tenants).where(tenants.c.id == id))).mappings().first()
    )
    return found


async def list_tenants(conn: AsyncConnection, organization_id: str | None) -> Sequence[RowMapping]:
    query = select(tenants).order_by(tenants.c.id)
    if organization_id is not None:
        query = query.where(tenants.c.organization_id == organization_id)
    return (await conn.execute(query)).mappings().all()


async def update_tenant(conn: AsyncConnection, id: str, values: dict[str, Any]) -> RowMapping | None:
    statement = (
        update(tenants).where(tenants.c.id == id).values(**values, updated_at=utcnow()).returning(tenants)
    )
    found: RowMapping | None = (await conn.execute(statement)).mappings().first()
    return found


async def insert_key(
    conn: AsyncConnection,
    *,
    prefix: str,
    secret_hash: str,
    kind: str,
    name: str,
    tenant_id: str | None,
    rate_limit_per_second: float | None = None,
    rate_limit_burst: int | None = None,
) -> RowMapping:
    statement = (
        api_keys.insert()
        .values(
            id=uuid.uuid4(),
            prefix=prefix,
            secret_hash=secret_hash,
            kind=kind,
            name=name,
            tenant_id=tenant_id,
            created_at=utcnow(),
            rate_limit_per_second=rate_limit_per_second,
            rate_limit_burst=rate_limit_burst,
        )
        .returning(api_keys)
    )
    row: RowMapping = (await conn.execute(statement)).mappings().one()
    return row


async def find_key_by_prefix(conn: AsyncConnection, prefix: str) -> RowMapping | None:
    found: RowMapping | None = (
        (await conn.execute(select(api_keys).where(api_keys.c.prefix == prefix))).mappings().first()
    )
    return found


async def find_key_by_id(conn: AsyncConnection, key_id: uuid.UUID) -> RowMapping | None:
    found: RowMapping | None = (
        (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).mappings().first()
    )
    return found


async def list_keys(conn: AsyncConnection, tenant_id: str | None) -> Sequence[RowMapping]:
    query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
    if tenant_id is not None:
        query = query.where(api_keys.c.tenant_id == tenant_id)
    return (await conn.execute(query)).mappings().all()


async def update_key_limit(
    conn: AsyncConnection, key_id: uuid.UUID, values: dict[str, Any]
) -> RowMapping | None:
    """Sets the rate limit columns named in `values`; None when there is no such key."""
    statement = update(api_keys).where(api_keys.c.id == key_id).values(**values).returning(api_keys)
    row: RowMapping | None = (await conn.execute(statement)).mappings().first()
    return row


async def revoke_key(conn: AsyncConnection, key_id: uuid.UUID) -> RowMapping | None:
    statement = (
        update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .returning(api_keys)
    )
    row: RowMapping | None = (await conn.execute(statement)).mappings().first()
    if row is None:
        found: RowMapping | None = (
            (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).mappings().first()
        )
        return found
    return row
