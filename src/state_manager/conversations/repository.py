"""SQL for conversations, participants and state changes. Every statement is scoped by tenant."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    RowMapping,
    and_,
    case,
    exists,
    func,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.cache.invalidation import changed, conversations_tag, ended_tag, thread_tag
from state_manager.conversations.lifecycle import FINAL_STATES, OPEN_STATES
from state_manager.conversations.models import OPEN_STATES_SQL, conversations, participants, state_changes
from state_manager.customers.models import customer_identities
from state_manager.db.database import dialect_insert

REPLY_WINDOW = dt.timedelta(hours=24)
# Literal values, not bind parameters: PostgreSQL uses the partial unique index (open states) only when it
# can prove the query's filter implies the index's, which a prepared statement's generic plan cannot do
# with parameters; without the index every lookup would scan the tenant's conversations.
OPEN_FILTER = conversations.c.state.in_([literal_column(f"'{state.value}'") for state in sorted(OPEN_STATES)])
c = conversations.c


def _later(column: Any, at: dt.datetime) -> ColumnElement[Any]:
    """The later of a column and a time, so that a late or repeated event never moves a clock back."""
    return case((or_(column.is_(None), column < at), at), else_=column)


def _changed(tenant_id: str, row: RowMapping) -> None:
    changed(tenant_id, conversations_tag(row["customer_id"]))
    if row["state"] in FINAL_STATES:
        changed(tenant_id, ended_tag(row["id"]))


async def get(
    conn: AsyncConnection, tenant_id: str, conversation_id: uuid.UUID, *, for_update: bool = False
) -> RowMapping | None:
    """The conversation; `for_update` locks it until the transaction ends (read-modify-write)."""
    query = select(conversations).where(c.tenant_id == tenant_id, c.id == conversation_id)
    if for_update:
        query = query.with_for_update()
    found: RowMapping | None = (await conn.execute(query)).mappings().first()
    return found


async def by_genesys_id(
    conn: AsyncConnection, tenant_id: str, genesys_conversation_id: str
) -> RowMapping | None:
    query = select(conversations).where(
        c.tenant_id == tenant_id, c.genesys_conversation_id == genesys_conversation_id
    )
    found: RowMapping | None = (await conn.execute(query)).mappings().first()
    return found


async def open_for(
    conn: AsyncConnection, tenant_id: str, customer_id: uuid.UUID, business_number_id: str
) -> RowMapping | None:
    query = select(conversations).where(
        c.tenant_id == tenant_id,
        c.customer_id == customer_id,
        c.business_number_id == business_number_id,
        OPEN_FILTER,
    )
    found: RowMapping | None = (await conn.execute(query)).mappings().first()
    return found


async def open_by_identity(
    conn: AsyncConnection, tenant_id: str, channel: str, external_id: str, business_number_id: str | None
) -> RowMapping | None:
    """The open conversation of the customer with this identity: on that number, or the latest active."""
    ci = customer_identities.c
    # A scalar subquery, not a join: the identity's primary key gives one customer, then the open-conversation
    # index gives its row. As a join, a tenant without statistics was planned as a scan of all its
    # conversations (2 ms instead of 0.1 ms with 1,000 of them).
    customer_id = (
        select(ci.customer_id)
        .where(ci.tenant_id == tenant_id, ci.channel == channel, ci.external_id == external_id)
        .scalar_subquery()
    )
    query = (
        select(conversations)
        .where(c.tenant_id == tenant_id, c.customer_id == customer_id, OPEN_FILTER)
        .order_by(c.last_activity_at.desc())
        .limit(1)
    )
    if business_number_id is not None:
        query = query.where(c.business_number_id == business_number_id)
    found: RowMapping | None = (await conn.execute(query)).mappings().first()
    return found


async def insert_open(conn: AsyncConnection, tenant_id: str, values: dict[str, Any]) -> RowMapping | None:
    """Inserts a new open conversation; None when one is already open for that customer and number."""
    statement = (
        dialect_insert(conn.dialect.name)(conversations)
        .values(tenant_id=tenant_id, **values)
        .on_conflict_do_nothing(
            index_elements=["tenant_id", "customer_id", "business_number_id"],
            index_where=text(OPEN_STATES_SQL),
        )
        .returning(conversations)
    )
    found: RowMapping | None = (await conn.execute(statement)).mappings().first()
    if found is not None:
        _changed(tenant_id, found)
    return found


async def delete(conn: AsyncConnection, tenant_id: str, conversation_id: uuid.UUID) -> None:
    """Only for a conversation this transaction created and must undo (its state changes go with it)."""
    await conn.execute(conversations.delete().where(c.tenant_id == tenant_id, c.id == conversation_id))


async def open_numbers_of_both(
    conn: AsyncConnection, tenant_id: str, first: uuid.UUID, second: uuid.UUID
) -> list[str]:
    """Business numbers on which both customers have an open conversation."""
    query = (
        select(c.business_number_id)
        .where(c.tenant_id == tenant_id, c.customer_id.in_([first, second]), OPEN_FILTER)
        .group_by(c.business_number_id)
        .having(func.count() > 1)
        .order_by(c.business_number_id)
    )
    return list((await conn.execute(query)).scalars())


async def move_to_customer(
    conn: AsyncConnection, tenant_id: str, source: uuid.UUID, target: uuid.UUID, at: dt.datetime
) -> None:
    """Every conversation of `source` now belongs to `target`."""
    changed(tenant_id, conversations_tag(source), conversations_tag(target))
    await conn.execute(
        update(conversations)
        .where(c.tenant_id == tenant_id, c.customer_id == source)
        .values(customer_id=target, version=c.version + 1, updated_at=at)
    )


async def customers_of(
    conn: AsyncConnection, tenant_id: str, conversation_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, uuid.UUID]:
    """The customer of each conversation."""
    if not conversation_ids:
        return {}
    query = select(c.id, c.customer_id).where(
        c.tenant_id == tenant_id, c.id.in_(sorted(set(conversation_ids)))
    )
    return {row.id: row.customer_id for row in await conn.execute(query)}


async def update_versioned(
    conn: AsyncConnection,
    tenant_id: str,
    conversation_id: uuid.UUID,
    values: dict[str, Any],
    *,
    expected_version: int,
    at: dt.datetime,
) -> RowMapping | None:
    statement = (
        update(conversations)
        .where(c.tenant_id == tenant_id, c.id == conversation_id, c.version == expected_version)
        .values(**values, version=c.version + 1, updated_at=at)
        .returning(conversations)
    )
    found: RowMapping | None = (await conn.execute(statement)).mappings().first()
    if found is not None:
        _changed(tenant_id, found)
    return found


async def record_activity(
    conn: AsyncConnection,
    tenant_id: str,
    conversation_id: uuid.UUID,
    *,
    inbound: bool,
    at: dt.datetime,
    now: dt.datetime,
) -> RowMapping:
    values: dict[str, Any] = {"last_activity_at": _later(c.last_activity_at, at)}
    if inbound:
        values["last_inbound_at"] = _later(c.last_inbound_at, at)
        values["reply_window_ends_at"] = _later(c.reply_window_ends_at, at + REPLY_WINDOW)
    else:
        values["last_outbound_at"] = _later(c.last_outbound_at, at)
    statement = (
        update(conversations)
        .where(c.tenant_id == tenant_id, c.id == conversation_id)
        .values(**values, version=c.version + 1, updated_at=now)
        .returning(conversations)
    )
    row: RowMapping = (await conn.execute(statement)).mappings().one()
    _changed(tenant_id, row)
    return row


async def insert_state_change(
    conn: AsyncConnection,
    tenant_id: str,
    conversation_id: uuid.UUID,
    from_state: str | None,
    to_state: str,
    reason: str | None,
    at: dt.datetime,
) -> None:
    await conn.execute(
        state_changes.insert().values(
            tenant_id=tenant_id,
            id=uuid.uuid4(),
            conversation_id=conversation_id,
            from_state=from_state,
            to_state=to_state,
            reason=reason,
            changed_at=at,
        )
    )


async def state_history(
    conn: AsyncConnection, tenant_id: str, conversation_id: uuid.UUID
) -> Sequence[RowMapping]:
    sc = state_changes.c
    query = (
        select(state_changes)
        .where(sc.tenant_id == tenant_id, sc.conversation_id == conversation_id)
        .order_by(sc.changed_at, sc.id)
    )
    return (await conn.execute(query)).mappings().all()


async def list_page(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    states: list[str] | None,
    customer_id: uuid.UUID | None,
    agent_id: str | None,
    business_number_id: str | None,
    started_after: dt.datetime | None,
    started_before: dt.datetime | None,
    before: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> Sequence[RowMapping]:
    """Newest first, by (started_at, id)."""
    query = select(conversations).where(c.tenant_id == tenant_id)
    if states:
        query = query.where(c.state.in_(states))
    if customer_id is not None:
        query = query.where(c.customer_id == customer_id)
    if business_number_id is not None:
        query = query.where(c.business_number_id == business_number_id)
    if started_after is not None:
        query = query.where(c.started_at >= started_after)
    if started_before is not None:
        query = query.where(c.started_at < started_before)
    if agent_id is not None:
        p = participants.c
        query = query.where(
            exists().where(
                p.tenant_id == c.tenant_id,
                p.conversation_id == c.id,
                p.role == "agent",
                p.participant_ref == agent_id,
            )
        )
    if before is not None:
        at, last_id = before
        query = query.where(or_(c.started_at < at, and_(c.started_at == at, c.id < last_id)))
    query = query.order_by(c.started_at.desc(), c.id.desc()).limit(limit)
    return (await conn.execute(query)).mappings().all()


# Participants

p = participants.c


async def participants_of(
    conn: AsyncConnection, tenant_id: str, conversation_id: uuid.UUID
) -> Sequence[RowMapping]:
    query = (
        select(participants)
        .where(p.tenant_id == tenant_id, p.conversation_id == conversation_id)
        .order_by(p.joined_at, p.id)
    )
    return (await conn.execute(query)).mappings().all()


async def insert_participant(
    conn: AsyncConnection, tenant_id: str, values: dict[str, Any]
) -> RowMapping | None:
    """None when the same participant is already present (joined and not left)."""
    statement = (
        dialect_insert(conn.dialect.name)(participants)
        .values(tenant_id=tenant_id, id=uuid.uuid4(), **values)
        .on_conflict_do_nothing(
            index_elements=["tenant_id", "conversation_id", "role", "participant_ref"],
            index_where=text("left_at IS NULL"),
        )
        .returning(participants)
    )
    found: RowMapping | None = (await conn.execute(statement)).mappings().first()
    if found is not None:
        changed(tenant_id, thread_tag(values["conversation_id"]))
    return found


async def present_participant(
    conn: AsyncConnection, tenant_id: str, conversation_id: uuid.UUID, role: str, ref: str
) -> RowMapping | None:
    query = select(participants).where(
        p.tenant_id == tenant_id,
        p.conversation_id == conversation_id,
        p.role == role,
        p.participant_ref == ref,
        p.left_at.is_(None),
    )
    found: RowMapping | None = (await conn.execute(query)).mappings().first()
    return found


async def get_participant(
    conn: AsyncConnection, tenant_id: str, conversation_id: uuid.UUID, participant_id: uuid.UUID
) -> RowMapping | None:
    query = select(participants).where(
        p.tenant_id == tenant_id, p.conversation_id == conversation_id, p.id == participant_id
    )
    found: RowMapping | None = (await conn.execute(query)).mappings().first()
    return found


async def mark_left(
    conn: AsyncConnection,
    tenant_id: str,
    conversation_id: uuid.UUID,
    at: dt.datetime,
    participant_id: uuid.UUID | None = None,
) -> Sequence[RowMapping]:
    """Sets left_at (never before joined_at) on one present participant, or on all of them; returns
    those it marked."""
    conditions = [p.tenant_id == tenant_id, p.conversation_id == conversation_id, p.left_at.is_(None)]
    if participant_id is not None:
        conditions.append(p.id == participant_id)
    changed(tenant_id, thread_tag(conversation_id))
    left = case((p.joined_at > at, p.joined_at), else_=at)
    statement = update(participants).where(*conditions).values(left_at=left).returning(participants)
    marked: Sequence[RowMapping] = (await conn.execute(statement)).mappings().all()
    return marked


async def find_by_genesys_field(
    conn: AsyncConnection, tenant_id: str, field: str, value: str
) -> RowMapping | None:
    column = c.genesys_conversation_id if field == "genesys_conversation_id" else c.genesys_communication_id
    query = select(conversations.c.id).where(c.tenant_id == tenant_id, column == value)
    found: RowMapping | None = (await conn.execute(query)).mappings().first()
    return found


async def recently_active_open(
    conn: AsyncConnection, tenant_id: str, since: dt.datetime, limit: int
) -> Sequence[RowMapping]:
    """The open conversations active since `since`, the latest first, with the customer's WhatsApp ID (as
    `wa_id`) where it has one: what the cache is warmed with."""
    i = customer_identities.c
    query = (
        select(
            c.id, c.customer_id, c.business_number_id, c.genesys_conversation_id, i.external_id.label("wa_id")
        )
        .outerjoin(
            customer_identities,
            and_(i.tenant_id == c.tenant_id, i.customer_id == c.customer_id, i.channel == "whatsapp"),
        )
        .where(c.tenant_id == tenant_id, OPEN_FILTER, c.last_activity_at >= since)
        .order_by(c.last_activity_at.desc())
        .limit(limit)
    )
    return (await conn.execute(query)).mappings().all()
