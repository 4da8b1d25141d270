"""SQL for messages and held receipts. Every statement is scoped by tenant."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import RowMapping, and_, bindparam, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.cache.invalidation import changed, message_tag, thread_tag
from state_manager.conversations.models import conversations
from state_manager.conversations.repository import OPEN_FILTER
from state_manager.customers.models import customer_identities, customers
from state_manager.db.database import dialect_insert
from state_manager.messages.models import messages, pending_receipts

m = messages.c
pr = pending_receipts.c

# What the receipt merge needs to read and may write.
RECEIPT_COLUMNS = (
    m.id,
    m.conversation_id,
    m.direction,
    m.wamid,
    m.genesys_message_id,
    m.sent_at,
    m.delivered_at,
    m.read_at,
    m.failed_at,
    m.failure_code,
    m.failure_title,
    m.failure_details,
)
TIME_FIELDS = (
    "sent_at",
    "delivered_at",
    "read_at",
    "failed_at",
    "failure_code",
    "failure_title",
    "failure_details",
)


def _id_column(kind: str) -> Any:
    return m.wamid if kind == "wamid" else m.genesys_message_id


async def insert(conn: AsyncConnection, tenant_id: str, values: dict[str, Any]) -> RowMapping | None:
    """None when a message with the same wamid or Genesys ID exists already."""
    statement = (
        dialect_insert(conn.dialect.name)(messages)
        .values(tenant_id=tenant_id, **values)
        .on_conflict_do_nothing()
        .returning(messages)
    )
    found: RowMapping | None = (await conn.execute(statement)).mappings().first()
    if found is not None:
        changed(tenant_id, thread_tag(found["conversation_id"]))
    return found


async def get(conn: AsyncConnection, tenant_id: str, message_id: uuid.UUID) -> RowMapping | None:
    query = select(messages).where(m.tenant_id == tenant_id, m.id == message_id)
    found: RowMapping | None = (await conn.execute(query)).mappings().first()
    return found


async def by_external_id(
    conn: AsyncConnection, tenant_id: str, kind: str, external_id: str
) -> RowMapping | None:
    query = select(messages).where(m.tenant_id == tenant_id, _id_column(kind) == external_id)
    found: RowMapping | None = (await conn.execute(query)).mappings().first()
    return found


async def by_external_id_with_state(
    conn: AsyncConnection, tenant_id: str, kind: str, external_id: str
) -> RowMapping | None:
    """The message and, as `conversation_state`, the state of its conversation."""
    query = (
        select(messages, conversations.c.state.label("conversation_state"))
        .join(
            conversations,
            and_(conversations.c.tenant_id == m.tenant_id, conversations.c.id == m.conversation_id),
        )
        .where(m.tenant_id == tenant_id, _id_column(kind) == external_id)
    )
    found: RowMapping | None = (await conn.execute(query)).mappings().first()
    return found


async def existing_for(
    conn: AsyncConnection, tenant_id: str, wamid: str | None, genesys_message_id: str | None
) -> RowMapping | None:
    ids = []
    if wamid is not None:
        ids.append(m.wamid == wamid)
    if genesys_message_id is not None:
        ids.append(m.genesys_message_id == genesys_message_id)
    query = select(messages).where(m.tenant_id == tenant_id, or_(*ids)).limit(1)
    found: RowMapping | None = (await conn.execute(query)).mappings().first()
    return found


async def list_page(
    conn: AsyncConnection,
    tenant_id: str,
    conversation_id: uuid.UUID,
    *,
    after: tuple[dt.datetime, uuid.UUID] | None,
    newest_first: bool,
    limit: int,
) -> Sequence[RowMapping]:
    query = select(messages).where(m.tenant_id == tenant_id, m.conversation_id == conversation_id)
    if after is not None:
        at, last_id = after
        if newest_first:
            query = query.where(or_(m.occurred_at < at, and_(m.occurred_at == at, m.id < last_id)))
        else:
            query = query.where(or_(m.occurred_at > at, and_(m.occurred_at == at, m.id > last_id)))
    order = (m.occurred_at.desc(), m.id.desc()) if newest_first else (m.occurred_at, m.id)
    return (await conn.execute(query.order_by(*order).limit(limit))).mappings().all()


async def lock_for_receipts(
    conn: AsyncConnection, tenant_id: str, wamids: Sequence[str], genesys_ids: Sequence[str]
) -> Sequence[RowMapping]:
    """The messages named by receipts (by either ID), locked in one statement in ID order, so that
    concurrent batches cannot deadlock, whichever IDs they name the messages by."""
    named = []
    if wamids:
        named.append(m.wamid.in_(wamids))
    if genesys_ids:
        named.append(m.genesys_message_id.in_(genesys_ids))
    if not named:
        return []
    query = (
        select(*RECEIPT_COLUMNS).where(m.tenant_id == tenant_id, or_(*named)).order_by(m.id).with_for_update()
    )
    return (await conn.execute(query)).mappings().all()


async def write_times(
    conn: AsyncConnection, tenant_id: str, changes: Sequence[dict[str, Any]], at: dt.datetime
) -> None:
    """Writes merged receipt times, one row per change (sent as one batch); each change names its
    message's `id` and `conversation_id`."""
    if not changes:
        return
    for change in changes:
        changed(tenant_id, message_tag(change["id"]), thread_tag(change["conversation_id"]))
    statement = (
        update(messages)
        .where(m.tenant_id == bindparam("b_tenant_id"), m.id == bindparam("b_id"))
        .values({name: bindparam(f"b_{name}") for name in TIME_FIELDS} | {"updated_at": at})
    )
    params = [
        {"b_tenant_id": tenant_id, "b_id": change["id"], **{f"b_{n}": change[n] for n in TIME_FIELDS}}
        for change in changes
    ]
    await conn.execute(statement, params)


async def set_external_ids(
    conn: AsyncConnection, tenant_id: str, message_id: uuid.UUID, values: dict[str, str], at: dt.datetime
) -> RowMapping:
    statement = (
        update(messages)
        .where(m.tenant_id == tenant_id, m.id == message_id)
        .values(**values, updated_at=at)
        .returning(messages)
    )
    row: RowMapping = (await conn.execute(statement)).mappings().one()
    changed(tenant_id, message_tag(message_id), thread_tag(row["conversation_id"]))
    return row


async def hold_receipts(conn: AsyncConnection, tenant_id: str, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    statement = dialect_insert(conn.dialect.name)(pending_receipts).on_conflict_do_nothing()
    await conn.execute(statement, [{"tenant_id": tenant_id, **row} for row in rows])


async def take_held(
    conn: AsyncConnection, tenant_id: str, kind: str, external_id: str
) -> Sequence[RowMapping]:
    statement = (
        delete(pending_receipts)
        .where(pr.tenant_id == tenant_id, pr.id_kind == kind, pr.external_id == external_id)
        .returning(pending_receipts)
    )
    return (await conn.execute(statement)).mappings().all()


async def inbound_context(
    conn: AsyncConnection, tenant_id: str, wa_id: str, business_number_id: str
) -> RowMapping | None:
    """For an inbound WhatsApp message, in one query: the customer with this wa_id and its open
    conversation on the business number (conversation columns are null when there is none)."""
    ci, cu, cv = customer_identities.c, customers.c, conversations.c
    # The identity as a scalar subquery, so that both lookups are index probes whatever the statistics
    # (as a three-way join, a tenant without statistics was planned as scans of all its customers).
    customer_id = (
        select(ci.customer_id)
        .where(ci.tenant_id == tenant_id, ci.channel == "whatsapp", ci.external_id == wa_id)
        .scalar_subquery()
    )
    query = (
        select(
            cu.id.label("customer_id"),
            cu.display_name,
            cv.id.label("conversation_id"),
            cv.state,
            cv.genesys_conversation_id,
        )
        .select_from(customers)
        .outerjoin(
            conversations,
            and_(
                cv.tenant_id == cu.tenant_id,
                cv.customer_id == cu.id,
                cv.business_number_id == business_number_id,
                OPEN_FILTER,
            ),
        )
        .where(cu.tenant_id == tenant_id, cu.id == customer_id)
    )
    found: RowMapping | None = (await conn.execute(query)).mappings().first()
    return found
