"""Reading the audit log. Every statement is scoped by tenant."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

from sqlalchemy import RowMapping, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.audit.models import audit_log

a = audit_log.c


async def list_page(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    subject_type: str | None = None,
    subject_id: str | None = None,
    action: str | None = None,
    actor: str | None = None,
    after: dt.datetime | None = None,
    before: tuple[dt.datetime, uuid.UUID] | None = None,
    limit: int,
) -> Sequence[RowMapping]:
    """Newest first, by (occurred_at, id); `after` keeps entries later than that time, `before` is the
    cursor (the sort key of the last entry of the previous page)."""
    query = select(audit_log).where(a.tenant_id == tenant_id)
    if subject_type is not None:
        query = query.where(a.subject_type == subject_type)
    if subject_id is not None:
        query = query.where(a.subject_id == subject_id)
    if action is not None:
        query = query.where(a.action == action)
    if actor is not None:
        query = query.where(a.actor == actor)
    if after is not None:
        query = query.where(a.occurred_at > after)
    if before is not None:
        at, last_id = before
        query = query.where(or_(a.occurred_at < at, and_(a.occurred_at == at, a.id < last_id)))
    query = query.order_by(a.occurred_at.desc(), a.id.desc()).limit(limit)
    return (await conn.execute(query)).mappings().all()


async def oldest_first_about(
    conn: AsyncConnection,
    tenant_id: str,
    subject_type: str,
    subject_id: str,
    *,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> Sequence[RowMapping]:
    """Entries about one subject, oldest first, a page at a time (for exports)."""
    query = select(audit_log).where(
        a.tenant_id == tenant_id, a.subject_type == subject_type, a.subject_id == subject_id
    )
    if after is not None:
        at, last_id = after
        query = query.where(or_(a.occurred_at > at, and_(a.occurred_at == at, a.id > last_id)))
    query = query.order_by(a.occurred_at, a.id).limit(limit)
    return (await conn.execute(query)).mappings().all()
