"""Removing a message's content while keeping the message: shared by retention (content older than the
tenant allows) and erasure (a customer's right to be forgotten).

What stays is what anonymous counts need: direction, type, times, statuses, failure codes, IDs.
The text also travels in the payload of `message.recorded` events, so it leaves them too.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, literal_column, update
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.cache.invalidation import changed, message_tag, thread_tag
from state_manager.events.models import events
from state_manager.events.types import EventType
from state_manager.messages.models import messages

# Everything a customer or an agent wrote or sent; failure codes and titles come from Meta, not people.
CONTENT_CLEARED: dict[str, Any] = {
    "text": None,
    "media_url": None,
    "media_filename": None,
    "media_caption": None,
    "failure_details": None,
    "metadata": {},
}


# The key stays, as null: consumers of the event keep the payload's shape.
_PAYLOAD_TEXT_CLEARED: dict[str, ColumnElement[Any]] = {
    "postgresql": literal_column("jsonb_set(payload, '{text}', 'null'::jsonb)"),
    "sqlite": literal_column("json_set(payload, '$.text', json('null'))"),
}


async def redact_messages(
    conn: AsyncConnection, tenant_id: str, message_ids: Sequence[uuid.UUID], *, at: dt.datetime
) -> int:
    """Clears the content of these messages (those not cleared before) and the text of their
    `message.recorded` events; returns how many messages it cleared. Run it inside
    `LookupCache.publishing_changes` so that cached copies of the content go too."""
    if not message_ids:
        return 0
    cleared = (
        await conn.execute(
            update(messages)
            .where(
                messages.c.tenant_id == tenant_id,
                messages.c.id.in_(message_ids),
                messages.c.redacted_at.is_(None),
            )
            .values(**CONTENT_CLEARED, redacted_at=at, updated_at=at)
            .returning(messages.c.id, messages.c.conversation_id)
        )
    ).all()
    for message_id, conversation_id in cleared:  # cached lookups may hold the content
        changed(tenant_id, message_tag(message_id), thread_tag(conversation_id))
    await conn.execute(
        update(events)
        .where(
            events.c.tenant_id == tenant_id,
            events.c.message_id.in_(message_ids),
            # A literal, not a parameter: PostgreSQL uses the partial index only when it can prove the
            # filter implies the index's, which a prepared statement's generic plan cannot.
            events.c.type == literal_column(f"'{EventType.MESSAGE_RECORDED.value}'"),
        )
        .values(payload=_PAYLOAD_TEXT_CLEARED[conn.dialect.name])
    )
    return len(cleared)
