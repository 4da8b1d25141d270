"""Context per conversation and per customer; the customer's is kept across conversations."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.context import repository as repo
from state_manager.context.schemas import ContextPatch, ContextRead
from state_manager.conversations import service as conversations
from state_manager.customers import repository as customers_repo
from state_manager.customers import service as customers
from state_manager.db.types import utcnow
from state_manager.errors import NotFound
from state_manager.events.emit import emit
from state_manager.events.types import EventType


async def _require_owner(
    conn: AsyncConnection, tenant_id: str, scope: str, scope_id: uuid.UUID, *, writing: bool = False
) -> dict[str, uuid.UUID]:
    """The IDs an event about this context carries; an erased customer's context takes no new values."""
    if writing:
        await repo.hold_owner(conn, tenant_id, scope, scope_id)
    if scope == "conversation":
        conversation = await conversations.require(conn, tenant_id, scope_id)
        return {"conversation_id": scope_id, "customer_id": conversation["customer_id"]}
    customer = await customers_repo.get(conn, tenant_id, scope_id)
    if customer is None:
        raise NotFound(f"customer {scope_id} not found")
    if writing:
        customers.refuse_erased(customer)
    return {"customer_id": scope_id}


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
    ids = await _require_owner(conn, tenant_id, scope, scope_id, writing=True)
    written = await repo.upsert_latest(conn, tenant_id, scope, scope_id, data.values, data.at or utcnow())
    if written:
        emit(conn, tenant_id, EventType.CONTEXT_CHANGED, {"scope": scope, "values": written}, **ids)
    return await read(conn, tenant_id, scope, scope_id)
