"""SQL for customers and their identities. Every statement is scoped by tenant."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import RowMapping, and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.cache.invalidation import customer_changed
from state_manager.customers.models import customer_identities, customers
from state_manager.db.database import dialect_insert


async def insert_customer(
    conn: AsyncConnection, tenant_id: str, *, at: dt.datetime, **values: Any
) -> uuid.UUID:
    customer_id = uuid.uuid4()
    await conn.execute(
        customers.insert().values(
            tenant_id=tenant_id,
            id=customer_id,
            version=1,
            created_at=at,
            updated_at=at,
            **{"preferences": {}, "consent": {}, "attributes": {}, **values},
        )
    )
    return customer_id


async def insert_identity(
    conn: AsyncConnection,
    tenant_id: str,
    channel: str,
    external_id: str,
    customer_id: uuid.UUID,
    at: dt.datetime,
) -> bool:
    """True when added; False when the identity already exists (for this or another customer)."""
    statement = (
        dialect_insert(conn.dialect.name)(customer_identities)
        .values(
            tenant_id=tenant_id,
            channel=channel,
            external_id=external_id,
            customer_id=customer_id,
            created_at=at,
        )
        .on_conflict_do_nothing()
        .returning(customer_identities.c.customer_id)
    )
    added = (await conn.execute(statement)).first() is not None
    if added:
        customer_changed(tenant_id, customer_id)
    return added


async def customer_id_by_identity(
    conn: AsyncConnection, tenant_id: str, channel: str, external_id: str
) -> uuid.UUID | None:
    query = select(customer_identities.c.customer_id).where(
        customer_identities.c.tenant_id == tenant_id,
        customer_identities.c.channel == channel,
        customer_identities.c.external_id == external_id,
    )
    return (await conn.execute(query)).scalar_one_or_none()


async def get(
    conn: AsyncConnection, tenant_id: str, customer_id: uuid.UUID, *, for_update: bool = False
) -> RowMapping | None:
    query = select(customers).where(customers.c.tenant_id == tenant_id, customers.c.id == customer_id)
    if for_update:
        query = query.with_for_update()
    found: RowMapping | None = (await conn.execute(query)).mappings().first()
    return found


async def move_identities(
    conn: AsyncConnection, tenant_id: str, source: uuid.UUID, target: uuid.UUID
) -> None:
    customer_changed(tenant_id, source)
    customer_changed(tenant_id, target)
    await conn.execute(
        update(customer_identities)
        .where(customer_identities.c.tenant_id == tenant_id, customer_identities.c.customer_id == source)
        .values(customer_id=target)
    )


async def delete_identities(conn: AsyncConnection, tenant_id: str, customer_id: uuid.UUID) -> int:
    """Every identity of the customer: none of its IDs leads to it any more."""
    customer_changed(tenant_id, customer_id)
    result = await conn.execute(
        customer_identities.delete().where(
            customer_identities.c.tenant_id == tenant_id, customer_identities.c.customer_id == customer_id
        )
    )
    return result.rowcount


async def identities_of(
    conn: AsyncConnection, tenant_id: str, customer_id: uuid.UUID
) -> Sequence[RowMapping]:
    query = (
        select(customer_identities)
        .where(customer_identities.c.tenant_id == tenant_id, customer_identities.c.customer_id == customer_id)
        .order_by(customer_identities.c.created_at, customer_identities.c.channel)
    )
    return (await conn.execute(query)).mappings().all()


async def update_versioned(
    conn: AsyncConnection,
    tenant_id: str,
    customer_id: uuid.UUID,
    values: dict[str, Any],
    *,
    expected_version: int | None,
    at: dt.datetime,
) -> RowMapping | None:
    """Applies `values` and bumps the version; None when the row is missing or its version differs."""
    conditions = [customers.c.tenant_id == tenant_id, customers.c.id == customer_id]
    if expected_version is not None:
        conditions.append(customers.c.version == expected_version)
    statement = (
        update(customers)
        .where(*conditions)
        .values(**values, version=customers.c.version + 1, updated_at=at)
        .returning(customers)
    )
    found: RowMapping | None = (await conn.execute(statement)).mappings().first()
    if found is not None:
        customer_changed(tenant_id, customer_id)
    return found


async def list_page(
    conn: AsyncConnection, tenant_id: str, *, after: tuple[dt.datetime, uuid.UUID] | None, limit: int
) -> Sequence[RowMapping]:
    query = select(customers).where(customers.c.tenant_id == tenant_id)
    if after is not None:
        at, last_id = after
        query = query.where(
            or_(customers.c.created_at > at, and_(customers.c.created_at == at, customers.c.id > last_id))
        )
    query = query.order_by(customers.c.created_at, customers.c.id).limit(limit)
    return (await conn.execute(query)).mappings().all()


async def delete_customer(conn: AsyncConnection, tenant_id: str, customer_id: uuid.UUID) -> None:
    customer_changed(tenant_id, customer_id)
    await conn.execute(
        customers.delete().where(customers.c.tenant_id == tenant_id, customers.c.id == customer_id)
    )


async def set_display_name_if_changed(
    conn: AsyncConnection, tenant_id: str, customer_id: uuid.UUID, name: str, at: dt.datetime
) -> int | None:
    """The customer's new version, or None if the name was already `name`."""
    version: int | None = (
        await conn.execute(
            update(customers)
            .where(
                customers.c.tenant_id == tenant_id,
                customers.c.id == customer_id,
                # An inbound message that found the customer just before its erasure committed.
                customers.c.erased_at.is_(None),
                or_(customers.c.display_name.is_(None), customers.c.display_name != name),
            )
            .values(display_name=name, version=customers.c.version + 1, updated_at=at)
            .returning(customers.c.version)
        )
    ).scalar_one_or_none()
    if version is not None:
        customer_changed(tenant_id, customer_id)
    return version
