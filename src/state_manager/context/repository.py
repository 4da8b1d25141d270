"""SQL for context entries. Every statement is scoped by tenant."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import RowMapping, delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.cache.invalidation import changed, customer_tag, thread_tag
from state_manager.context.models import context_entries
from state_manager.conversations.models import conversations
from state_manager.customers.models import customers
from state_manager.db.database import dialect_insert

ce = context_entries.c


async def hold_owner(conn: AsyncConnection, tenant_id: str, scope: str, scope_id: uuid.UUID) -> None:
    """Locks the row the context belongs to, shared, until the transaction ends: context has no foreign
    key, so without it a write could land just after archival (which deletes the conversation) or an
    erasure (which empties the customer) had read the context, and be lost or outlive them. A conversation
    is held against deletion only (KEY SHARE: messages may update it meanwhile); a customer against any
    change (SHARE: erasure updates it). No-op on SQLite, whose writers are serialised already."""
    if scope == "conversation":
        owner = select(conversations.c.id).where(
            conversations.c.tenant_id == tenant_id, conversations.c.id == scope_id
        )
        await conn.execute(owner.with_for_update(read=True, key_share=True))
    else:
        owner = select(customers.c.id).where(customers.c.tenant_id == tenant_id, customers.c.id == scope_id)
        await conn.execute(owner.with_for_update(read=True))


async def entries(
    conn: AsyncConnection, tenant_id: str, scope: str, scope_id: uuid.UUID
) -> Sequence[RowMapping]:
    query = (
        select(context_entries)
        .where(ce.tenant_id == tenant_id, ce.scope == scope, ce.scope_id == scope_id)
        .order_by(ce.key)
    )
    return (await conn.execute(query)).mappings().all()


async def upsert_latest(
    conn: AsyncConnection,
    tenant_id: str,
    scope: str,
    scope_id: uuid.UUID,
    values: dict[str, Any],
    at: dt.datetime,
) -> dict[str, Any]:
    """Writes each key unless the stored value is newer (last writer by event time wins); returns the
    keys written, with their values (None: removed)."""
    changed(tenant_id, thread_tag(scope_id) if scope == "conversation" else customer_tag(scope_id))
    insert = dialect_insert(conn.dialect.name)(context_entries)
    statement = insert.on_conflict_do_update(
        index_elements=["tenant_id", "scope", "scope_id", "key"],
        set_={
            "value": insert.excluded.value,
            "deleted": insert.excluded.deleted,
            "updated_at": insert.excluded.updated_at,
        },
        where=ce.updated_at <= insert.excluded.updated_at,
    ).returning(ce.key)
    rows = [
        {
            "tenant_id": tenant_id,
            "scope": scope,
            "scope_id": scope_id,
            "key": key,
            "value": value,
            "deleted": value is None,
            "updated_at": at,
        }
        for key, value in values.items()
    ]
    written = set((await conn.execute(statement, rows)).scalars())
    return {key: value for key, value in values.items() if key in written}


async def move_customer_context(
    conn: AsyncConnection, tenant_id: str, source: uuid.UUID, target: uuid.UUID
) -> None:
    """The source customer's context entries join the target's, per key by the same rule as any write
    (the later one wins, tombstones included)."""
    moving = await entries(conn, tenant_id, "customer", source)
    changed(tenant_id, customer_tag(source), customer_tag(target))
    for row in moving:
        value = None if row["deleted"] else row["value"]
        await upsert_latest(conn, tenant_id, "customer", target, {row["key"]: value}, row["updated_at"])
    await conn.execute(
        delete(context_entries).where(
            ce.tenant_id == tenant_id, ce.scope == "customer", ce.scope_id == source
        )
    )
