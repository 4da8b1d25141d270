"""Context per conversation and per customer; the customer's is kept across conversations."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.context import repository as repo
from state_manager.context.schemas import ContextPatch, ContextRead
from state_manager.conversations import service as conversations
from state_manager.customers import repository as customers_repo
from state_manager.db.types import utcnow
from state_manager.errors import NotFound


async def _require_owner(conn: AsyncConnection, tenant_id: str, scope: str, scope_id: uuid.UUID) -> None:
    if scope == "conversation":
        await conversations.require(conn, tenant_id, scope_id)
    elif await customers_repo.get(conn, tenant_id, scope_id) is None:
        raise NotFound(f"customer {scope_id} not found")


async def read(conn: AsyncConnection, tenant_id: str, scope: str, scope_id: uuid.UUID) -> ContextRead:
    await _require_owner(conn, tenant_id, scope, scope_id)
    live = [row for row in await repo.entries(conn, tenant_id, scope, scope_id) if not row["deleted"]]
    return ContextRead(
        values={row["key"]: row["value"] for row in live},
        updated_at={row["key"]: row["updated_at"] for row in live},
    )


async def patch(
    conn: AsyncConnection, tenant_id: str, scope: str, scope_id: uuid.UUID, data: ContextPatch
) -> ContextRead:
    await _require_owner(conn, tenant_id, scope, scope_id)
    await repo.upsert_latest(conn, tenant_id, scope, scope_id, data.values, data.at or utcnow())
    return await read(conn, tenant_id, scope, scope_id)
