"""Writing events in the transaction of the change they announce.

`emit` only collects: the events of a transaction are inserted together, last, just before it commits.
Two transactions that change the same row are ordered by that row's lock, and an event written after
every lock is therefore written after the events of any transaction that held one of those locks first;
the relay numbers committed events in the order they were written, so the events about one conversation
(or message, or customer) are numbered in the order their changes committed.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.db.database import hooks_of
from state_manager.db.types import utcnow
from state_manager.events import repository
from state_manager.events.types import EventType

_PENDING = "state_manager_pending_events"


def emit(
    conn: AsyncConnection,
    tenant_id: str,
    type: EventType,
    payload: dict[str, Any],
    *,
    conversation_id: uuid.UUID | None = None,
    customer_id: uuid.UUID | None = None,
    message_id: uuid.UUID | None = None,
) -> None:
    """Announces a change made in this transaction; written with it, or not at all."""
    hooks = hooks_of(conn)
    pending: list[dict[str, Any]] | None = hooks.held.get(_PENDING)
    if pending is None:
        pending = hooks.held[_PENDING] = []
        hooks.before_commit.append(_write_pending)
    pending.append(
        {
            "tenant_id": tenant_id,
            "type": type.value,
            "conversation_id": conversation_id,
            "customer_id": customer_id,
            "message_id": message_id,
            "payload": payload,
            "occurred_at": utcnow(),
        }
    )


def withdraw(conn: AsyncConnection, *, conversation_id: uuid.UUID) -> None:
    """Forgets the events emitted about a conversation this transaction created and then undid."""
    pending: list[dict[str, Any]] | None = hooks_of(conn).held.get(_PENDING)
    if pending is not None:
        pending[:] = [event for event in pending if event["conversation_id"] != conversation_id]


async def _write_pending(conn: AsyncConnection) -> None:
    hooks = hooks_of(conn)
    rows = hooks.held.pop(_PENDING)
    if not rows:
        return
    await repository.insert(conn, rows)
    hooks.committed.update(row["tenant_id"] for row in rows)
