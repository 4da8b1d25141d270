"""SQL for events. Every statement is scoped by tenant."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import RowMapping, bindparam, func, select, text
from sqlalchemy import insert as sql_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.db.database import dialect_insert
from state_manager.db.identity import numbered
from state_manager.db.types import utcnow
from state_manager.events.models import event_relay, events

ev = events.c
er = event_relay.c

_INSERT = sql_insert(events)

# Numbers the oldest unnumbered events in one statement (PostgreSQL, and SQLite since 3.33).
_NUMBER = text(
    """
    UPDATE events SET seq = numbered.seq
      FROM (SELECT id, :base + row_number() OVER (ORDER BY id) AS seq
              FROM events
             WHERE tenant_id = :tenant_id AND seq IS NULL
             ORDER BY id
             LIMIT :limit) AS numbered
     WHERE events.tenant_id = :tenant_id AND events.id = numbered.id
    RETURNING events.tenant_id, events.id, events.seq, events.type, events.conversation_id,
              events.customer_id, events.message_id, events.payload, events.occurred_at
    """
).columns(*events.c)


async def insert(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    await conn.execute(_INSERT, await numbered(conn, ev.id, rows))


async def last_numbered(conn: AsyncConnection, tenant_id: str) -> int:
    """The last number the relay gave to an event of the tenant (0 if none)."""
    found = (await conn.execute(select(er.last_seq).where(er.tenant_id == tenant_id))).scalar_one_or_none()
    return 0 if found is None else int(found)


async def number_pending(conn: AsyncConnection, tenant_id: str, limit: int) -> list[RowMapping]:
    """Numbers up to `limit` unnumbered events after the tenant's last number, in the order they were
    written, and records the new last number; returns them in order. The caller holds the relay's lease."""
    base = await last_numbered(conn, tenant_id)
    result = await conn.execute(_NUMBER, {"tenant_id": tenant_id, "base": base, "limit": limit})
    numbered = sorted(result.mappings().all(), key=lambda row: row["seq"])
    if numbered:
        await save_last_numbered(conn, tenant_id, numbered[-1]["seq"])
    return numbered


async def save_last_numbered(conn: AsyncConnection, tenant_id: str, last_seq: int) -> None:
    statement = dialect_insert(conn.dialect.name)(event_relay)
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=["tenant_id"],
            set_={"last_seq": statement.excluded.last_seq, "updated_at": statement.excluded.updated_at},
        ),
        {"tenant_id": tenant_id, "last_seq": last_seq, "updated_at": utcnow()},
    )


async def has_unnumbered(conn: AsyncConnection, tenant_id: str) -> bool:
    query = select(ev.id).where(ev.tenant_id == tenant_id, ev.seq.is_(None)).limit(1)
    return (await conn.execute(query)).first() is not None


async def trimmed_through(conn: AsyncConnection, tenant_id: str) -> int:
    """The last number retention removed (0 if none): events up to it are gone."""
    query = select(er.trimmed_through).where(er.tenant_id == tenant_id)
    return int((await conn.execute(query)).scalar_one_or_none() or 0)


async def head(conn: AsyncConnection, tenant_id: str) -> int:
    """The tenant's last numbered event (0 if none). Retention may have removed every event: the head is
    then where it trimmed to, not 0, or feeds would wait for numbers that never come again."""
    trimmed = select(er.trimmed_through).where(er.tenant_id == tenant_id).scalar_subquery()
    query = select(func.coalesce(func.max(ev.seq), 0), trimmed).where(ev.tenant_id == tenant_id)
    numbered, trimmed_through = (await conn.execute(query)).one()
    return max(int(numbered), int(trimmed_through or 0))


async def after(
    conn: AsyncConnection,
    tenant_id: str,
    after_seq: int,
    limit: int,
    *,
    until: int | None = None,
    types: Sequence[str] = (),
    conversation_id: uuid.UUID | None = None,
    customer_id: uuid.UUID | None = None,
) -> list[RowMapping]:
    """Numbered events after `after_seq` (up to `until`), oldest first, filtered."""
    query = select(events).where(ev.tenant_id == tenant_id, ev.seq > after_seq)
    if until is not None:
        query = query.where(ev.seq <= until)
    if types:
        query = query.where(ev.type.in_(bindparam("types", list(types), expanding=True)))
    if conversation_id is not None:
        query = query.where(ev.conversation_id == conversation_id)
    if customer_id is not None:
        query = query.where(ev.customer_id == customer_id)
    return list((await conn.execute(query.order_by(ev.seq).limit(limit))).mappings().all())
