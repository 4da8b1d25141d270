"""Deliveries are written in the relay's numbering transaction (events/relay.py, `on_numbered`): one per
numbered event and active subscription that wants its type, with the event's JSON as it will be signed.
Written with the numbers or not at all, so each event reaches each subscription once."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.db.types import utcnow
from state_manager.events.schemas import Published
from state_manager.subscriptions import repository as repo

TENANT_KEY = "tenant"


def ordering_key(event: RowMapping) -> str:
    """Deliveries with one key go out one at a time, in event order: a conversation's, else a
    customer's, else the tenant's."""
    if event["conversation_id"] is not None:
        return f"conversation:{event['conversation_id']}"
    if event["customer_id"] is not None:
        return f"customer:{event['customer_id']}"
    return TENANT_KEY


async def enqueue(conn: AsyncConnection, tenant_id: str, events: Sequence[RowMapping]) -> int:
    """Writes the deliveries of freshly numbered events (in seq order); returns how many."""
    subscriptions = await repo.active_subscriptions(conn, tenant_id)
    if not subscriptions:
        return 0
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for event in events:
        body: str | None = None
        for subscription in subscriptions:
            wanted = subscription["event_types"]
            if wanted and event["type"] not in wanted:
                continue
            if body is None:
                body = Published.from_row(event).json.decode()
            rows.append(
                {
                    "tenant_id": tenant_id,
                    "id": uuid.uuid4(),
                    "subscription_id": subscription["id"],
                    "event_seq": event["seq"],
                    "event_type": event["type"],
                    "ordering_key": ordering_key(event),
                    "body": body,
                    "status": repo.PENDING,
                    "attempts": 0,
                    "round_attempts": 0,
                    "next_attempt_at": now,
                    "locked_until": None,
                    "last_status_code": None,
                    "last_error": None,
                    "created_at": now,
                    "updated_at": now,
                    "delivered_at": None,
                }
            )
    if rows:
        await repo.insert_deliveries(conn, rows)
    return len(rows)
