"""SQL of the customer data rights (export, erasure) over the tables that hold a customer's data.
Every statement is scoped by tenant."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import ColumnElement, RowMapping, and_, bindparam, case, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.context.models import context_entries
from state_manager.conversations.models import conversations, participants
from state_manager.events.models import events
from state_manager.events.types import EventType
from state_manager.messages.models import messages, pending_receipts
from state_manager.queues.models import broker_outbox
from state_manager.subscriptions.models import webhook_deliveries
from state_manager.webhooks.models import webhook_events

ev = events.c
# Lists of IDs go to the database in chunks of this many bind parameters.
CHUNK = 1000


def chunks(values: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


async def person_ids(conn: AsyncConnection, tenant_id: str, customer_id: uuid.UUID) -> list[uuid.UUID]:
    """The customer and every customer merged into it, transitively: events written before a merge carry
    the merged customer's ID. Read from the tenant's customer.merged events (one pass over its events)."""
    query = select(ev.customer_id, ev.payload).where(
        ev.tenant_id == tenant_id, ev.type == EventType.CUSTOMER_MERGED.value
    )
    merged_into: dict[uuid.UUID, list[uuid.UUID]] = {}
    for kept, payload in await conn.execute(query):
        merged = payload.get("merged_customer_id") if isinstance(payload, dict) else None
        if kept is not None and isinstance(merged, str):
            merged_into.setdefault(uuid.UUID(str(kept)), []).append(uuid.UUID(merged))
    found = [customer_id]
    for person in found:  # grows while it is walked
        found += [merged for merged in merged_into.get(person, []) if merged not in found]
    return found


async def conversations_of(
    conn: AsyncConnection, tenant_id: str, customer_id: uuid.UUID
) -> Sequence[RowMapping]:
    c = conversations.c
    query = (
        select(conversations)
        .where(c.tenant_id == tenant_id, c.customer_id == customer_id)
        .order_by(c.started_at, c.id)
    )
    return (await conn.execute(query)).mappings().all()


async def events_about(
    conn: AsyncConnection,
    tenant_id: str,
    customer_ids: Sequence[uuid.UUID],
    *,
    after_id: int,
    limit: int,
    types: Sequence[str] = (),
) -> Sequence[RowMapping]:
    """Events about these customers (and so about their conversations and messages) in the order they
    were written, a page at a time. No index leads to them: the pages walk the tenant's events once."""
    query = select(events).where(
        ev.tenant_id == tenant_id, ev.customer_id.in_(customer_ids), ev.id > after_id
    )
    if types:
        query = query.where(ev.type.in_(types))
    return (await conn.execute(query.order_by(ev.id).limit(limit))).mappings().all()


async def set_event_payloads(
    conn: AsyncConnection, tenant_id: str, payloads: Sequence[tuple[int, dict[str, Any]]]
) -> None:
    if not payloads:
        return
    statement = (
        update(events)
        .where(ev.tenant_id == tenant_id, ev.id == bindparam("event_id"))
        .values(payload=bindparam("new_payload"))
    )
    await conn.execute(
        statement, [{"event_id": event_id, "new_payload": payload} for event_id, payload in payloads]
    )


async def events_by_seq(conn: AsyncConnection, tenant_id: str, seqs: Sequence[int]) -> dict[int, RowMapping]:
    query = select(events).where(ev.tenant_id == tenant_id, ev.seq.in_(seqs))
    return {row["seq"]: row for row in (await conn.execute(query)).mappings()}


async def delete_context(
    conn: AsyncConnection, tenant_id: str, scope: str, scope_ids: Sequence[uuid.UUID]
) -> int:
    """Every entry of these owners, tombstones included."""
    ce = context_entries.c
    deleted = 0
    for part in chunks(scope_ids):
        result = await conn.execute(
            delete(context_entries).where(ce.tenant_id == tenant_id, ce.scope == scope, ce.scope_id.in_(part))
        )
        deleted += result.rowcount
    return deleted


async def clear_customer_participants(
    conn: AsyncConnection, tenant_id: str, conversation_ids: Sequence[uuid.UUID]
) -> None:
    """The customer's own participant rows keep their role, reference and times, not name or metadata."""
    p = participants.c
    for part in chunks(conversation_ids):
        await conn.execute(
            update(participants)
            .where(p.tenant_id == tenant_id, p.conversation_id.in_(part), p.role == "customer")
            .values(display_name=None, metadata={})
        )


async def clear_message_identities(
    conn: AsyncConnection, tenant_id: str, conversation_ids: Sequence[uuid.UUID]
) -> None:
    """What redaction keeps but erasure may not: Meta's message ID (a wamid spells the customer's number in
    base64) and the sender ID of the customer's own messages (their wa_id)."""
    m = messages.c
    sender: ColumnElement[Any] = case((m.sender_type == "customer", None), else_=m.sender_id)
    for part in chunks(conversation_ids):
        await conn.execute(
            update(messages)
            .where(m.tenant_id == tenant_id, m.conversation_id.in_(part))
            .values(wamid=None, sender_id=sender)
        )


async def delete_held_receipts(conn: AsyncConnection, tenant_id: str, wamids: Sequence[str]) -> int:
    """Receipts waiting for one of these messages: they name its wamid."""
    pr = pending_receipts.c
    deleted = 0
    for part in chunks(wamids):
        result = await conn.execute(
            delete(pending_receipts).where(
                pr.tenant_id == tenant_id, pr.id_kind == "wamid", pr.external_id.in_(part)
            )
        )
        deleted += result.rowcount
    return deleted


def _mentions(column: Any, needles: Sequence[str]) -> ColumnElement[bool]:
    """The text holds one of the needles (LIKE, both backends; % _ and \\ in them are escaped)."""
    escaped = [n.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") for n in needles]
    return or_(*[column.like(f"%{needle}%", escape="\\") for needle in escaped])


async def webhook_bodies_mentioning(
    conn: AsyncConnection,
    tenant_id: str,
    needles: Sequence[str],
    *,
    received_since: dt.datetime,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> Sequence[RowMapping]:
    """Raw webhook bodies received since then that hold one of the needles, oldest first, a page at a
    time: the (tenant, received_at) index bounds the scan; every body in that range is read."""
    w = webhook_events.c
    query = select(w.id, w.received_at, w.body).where(
        w.tenant_id == tenant_id, w.received_at >= received_since, _mentions(w.body, needles)
    )
    if after is not None:
        at, last_id = after
        query = query.where(or_(w.received_at > at, and_(w.received_at == at, w.id > last_id)))
    return (await conn.execute(query.order_by(w.received_at, w.id).limit(limit))).mappings().all()


async def replace_webhook_body(
    conn: AsyncConnection, tenant_id: str, event_id: uuid.UUID, body: str, items: int
) -> None:
    w = webhook_events.c
    await conn.execute(
        update(webhook_events)
        .where(w.tenant_id == tenant_id, w.id == event_id)
        .values(body=body, items=items)
    )


async def delete_webhook_body(conn: AsyncConnection, tenant_id: str, event_id: uuid.UUID) -> None:
    w = webhook_events.c
    await conn.execute(delete(webhook_events).where(w.tenant_id == tenant_id, w.id == event_id))


async def deliveries_of(
    conn: AsyncConnection, tenant_id: str, ordering_keys: Sequence[str]
) -> list[tuple[uuid.UUID, int, str]]:
    """(id, event seq, body) of the webhook deliveries of events about these customers and conversations
    (their ordering keys, subscriptions/enqueue.py); the log keeps delivered ones for days, dead ones
    until retried."""
    d = webhook_deliveries.c
    found: list[tuple[uuid.UUID, int, str]] = []
    for part in chunks(ordering_keys):
        query = select(d.id, d.event_seq, d.body).where(d.tenant_id == tenant_id, d.ordering_key.in_(part))
        found += [(row.id, row.event_seq, row.body) for row in await conn.execute(query)]
    return found


async def set_delivery_bodies(
    conn: AsyncConnection, tenant_id: str, bodies: Sequence[tuple[uuid.UUID, str]]
) -> None:
    if not bodies:
        return
    d = webhook_deliveries.c
    statement = (
        update(webhook_deliveries)
        .where(d.tenant_id == tenant_id, d.id == bindparam("delivery_id"))
        .values(body=bindparam("new_body"))
    )
    await conn.execute(statement, [{"delivery_id": id_, "new_body": body} for id_, body in bodies])


async def clear_published_outputs(conn: AsyncConnection, tenant_id: str, needles: Sequence[str]) -> int:
    """Published queue output that holds one of the needles loses its body; the row stays (its ID keeps a
    redelivered input from being published twice, queues/outbox.py). Output not yet published is left to
    go out: it was owed before the erasure. The outbox keeps a day of output: a small scan."""
    o = broker_outbox.c
    result = await conn.execute(
        update(broker_outbox)
        .where(o.tenant_id == tenant_id, o.published_at.is_not(None), _mentions(o.body, needles))
        .values(body="{}")
    )
    return result.rowcount
