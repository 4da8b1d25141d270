"""SQL for webhook subscriptions, deliveries and attempts. Every statement is scoped by tenant."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import RowMapping, and_, delete, exists, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.subscriptions.models import webhook_attempts, webhook_deliveries, webhook_subscriptions
from state_manager.subscriptions.schemas import DeliveryStatus

s = webhook_subscriptions.c
d = webhook_deliveries.c
a = webhook_attempts.c

PENDING, DELIVERED, DEAD = (
    DeliveryStatus.PENDING.value,
    DeliveryStatus.DELIVERED.value,
    DeliveryStatus.DEAD.value,
)

# --- Subscriptions -----------------------------------------------------------------------------------


async def insert_subscription(conn: AsyncConnection, tenant_id: str, **values: Any) -> RowMapping:
    statement = (
        insert(webhook_subscriptions)
        .values(tenant_id=tenant_id, id=uuid.uuid4(), version=1, **values)
        .returning(webhook_subscriptions)
    )
    created: RowMapping = (await conn.execute(statement)).mappings().one()
    return created


async def get_subscription(
    conn: AsyncConnection, tenant_id: str, subscription_id: uuid.UUID
) -> RowMapping | None:
    query = select(webhook_subscriptions).where(s.tenant_id == tenant_id, s.id == subscription_id)
    found: RowMapping | None = (await conn.execute(query)).mappings().first()
    return found


async def list_subscriptions(
    conn: AsyncConnection, tenant_id: str, *, after: tuple[dt.datetime, uuid.UUID] | None, limit: int
) -> Sequence[RowMapping]:
    query = select(webhook_subscriptions).where(s.tenant_id == tenant_id)
    if after is not None:
        at, last_id = after
        query = query.where(or_(s.created_at > at, and_(s.created_at == at, s.id > last_id)))
    query = query.order_by(s.created_at, s.id).limit(limit)
    return (await conn.execute(query)).mappings().all()


async def update_subscription(
    conn: AsyncConnection,
    tenant_id: str,
    subscription_id: uuid.UUID,
    values: dict[str, Any],
    *,
    expected_version: int,
    at: dt.datetime,
) -> RowMapping | None:
    """Applies `values` and bumps the version; None when the row is missing or its version differs."""
    statement = (
        update(webhook_subscriptions)
        .where(s.tenant_id == tenant_id, s.id == subscription_id, s.version == expected_version)
        .values(**values, version=s.version + 1, updated_at=at)
        .returning(webhook_subscriptions)
    )
    found: RowMapping | None = (await conn.execute(statement)).mappings().first()
    return found


async def delete_subscription(conn: AsyncConnection, tenant_id: str, subscription_id: uuid.UUID) -> None:
    """Deletes it with its deliveries and their attempts (the foreign keys cascade)."""
    await conn.execute(delete(webhook_subscriptions).where(s.tenant_id == tenant_id, s.id == subscription_id))


async def active_subscriptions(conn: AsyncConnection, tenant_id: str) -> Sequence[RowMapping]:
    query = select(s.id, s.event_types).where(s.tenant_id == tenant_id, s.active.is_(True))
    return (await conn.execute(query)).mappings().all()


# --- Deliveries: enqueue, claim, outcome ------------------------------------------------------------


async def insert_deliveries(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    await conn.execute(insert(webhook_deliveries), rows)


_earlier = webhook_deliveries.alias("earlier")
# An earlier pending delivery of the same subscription and ordering key holds the line.
BLOCKED = exists().where(
    _earlier.c.tenant_id == d.tenant_id,
    _earlier.c.subscription_id == d.subscription_id,
    _earlier.c.ordering_key == d.ordering_key,
    _earlier.c.status == PENDING,
    _earlier.c.event_seq < d.event_seq,
)


async def claim(
    conn: AsyncConnection, tenant_id: str, *, now: dt.datetime, lease_until: dt.datetime, limit: int
) -> list[dict[str, Any]]:
    """Leases up to `limit` due deliveries of active subscriptions, each the first pending one of its
    (subscription, ordering key), counting the attempt about to be made.

    PostgreSQL: rows another claim holds are skipped (FOR UPDATE SKIP LOCKED), and the lease keeps them
    from every other claim once this transaction commits. SQLite: its single writer does the same.
    """
    query = (
        select(
            d.id,
            d.subscription_id,
            d.event_seq,
            d.event_type,
            d.body,
            d.attempts,
            d.round_attempts,
            s.url,
            s.secret,
        )
        .join_from(
            webhook_deliveries,
            webhook_subscriptions,
            and_(s.tenant_id == d.tenant_id, s.id == d.subscription_id),
        )
        .where(
            d.tenant_id == tenant_id,
            d.status == PENDING,
            d.next_attempt_at <= now,
            or_(d.locked_until.is_(None), d.locked_until < now),
            s.active.is_(True),
            ~BLOCKED,
        )
        .order_by(d.next_attempt_at, d.event_seq)
        .limit(limit)
        .with_for_update(of=webhook_deliveries, skip_locked=True)
    )
    rows = [dict(row) for row in (await conn.execute(query)).mappings()]
    if rows:
        await conn.execute(
            update(webhook_deliveries)
            .where(d.tenant_id == tenant_id, d.id.in_([row["id"] for row in rows]))
            .values(
                locked_until=lease_until,
                attempts=d.attempts + 1,
                round_attempts=d.round_attempts + 1,
                updated_at=now,
            )
        )
        for row in rows:
            row["attempts"] += 1
            row["round_attempts"] += 1
    return rows


async def next_retry_at(conn: AsyncConnection, tenant_id: str, now: dt.datetime) -> dt.datetime | None:
    """When the earliest pending delivery waiting out its backoff is due."""
    query = select(func.min(d.next_attempt_at)).where(
        d.tenant_id == tenant_id, d.status == PENDING, d.next_attempt_at > now
    )
    found: dt.datetime | None = (await conn.execute(query)).scalar_one_or_none()
    return found


async def has_pending(conn: AsyncConnection, tenant_id: str) -> bool:
    query = select(d.id).where(d.tenant_id == tenant_id, d.status == PENDING).limit(1)
    return (await conn.execute(query)).first() is not None


async def finish(
    conn: AsyncConnection,
    tenant_id: str,
    delivery_id: uuid.UUID,
    *,
    lease_until: dt.datetime,
    values: dict[str, Any],
) -> bool:
    """Records an attempt's outcome and ends the lease; False if the lease was lost (it expired and
    another process took the delivery) or the delivery is gone."""
    statement = (
        update(webhook_deliveries)
        .where(d.tenant_id == tenant_id, d.id == delivery_id, d.locked_until == lease_until)
        .values(**values, locked_until=None)
        .returning(d.id)
    )
    return (await conn.execute(statement)).first() is not None


async def delivery_exists(conn: AsyncConnection, tenant_id: str, delivery_id: uuid.UUID) -> bool:
    query = select(d.id).where(d.tenant_id == tenant_id, d.id == delivery_id)
    return (await conn.execute(query)).first() is not None


async def insert_attempt(conn: AsyncConnection, tenant_id: str, **values: Any) -> None:
    await conn.execute(insert(webhook_attempts).values(tenant_id=tenant_id, **values))


async def prune_delivered(conn: AsyncConnection, tenant_id: str, before: dt.datetime) -> None:
    await conn.execute(
        delete(webhook_deliveries).where(
            d.tenant_id == tenant_id, d.status == DELIVERED, d.delivered_at < before
        )
    )


# --- Deliveries: the API ---------------------------------------------------------------------------

_LISTED = [c for c in webhook_deliveries.c if c.name not in ("tenant_id", "body", "round_attempts")]


async def list_deliveries(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    status: str | None,
    subscription_id: uuid.UUID | None,
    before: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> Sequence[RowMapping]:
    """Newest first."""
    query = select(*_LISTED).where(d.tenant_id == tenant_id)
    if status is not None:
        query = query.where(d.status == status)
    if subscription_id is not None:
        query = query.where(d.subscription_id == subscription_id)
    if before is not None:
        at, last_id = before
        query = query.where(or_(d.created_at < at, and_(d.created_at == at, d.id < last_id)))
    query = query.order_by(d.created_at.desc(), d.id.desc()).limit(limit)
    return (await conn.execute(query)).mappings().all()


async def get_delivery(conn: AsyncConnection, tenant_id: str, delivery_id: uuid.UUID) -> RowMapping | None:
    query = select(webhook_deliveries).where(d.tenant_id == tenant_id, d.id == delivery_id)
    found: RowMapping | None = (await conn.execute(query)).mappings().first()
    return found


async def attempts_of(conn: AsyncConnection, tenant_id: str, delivery_id: uuid.UUID) -> Sequence[RowMapping]:
    query = (
        select(webhook_attempts)
        .where(a.tenant_id == tenant_id, a.delivery_id == delivery_id)
        .order_by(a.attempt)
    )
    return (await conn.execute(query)).mappings().all()


_AGAIN = {"status": PENDING, "round_attempts": 0, "locked_until": None}


async def retry_dead(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    now: dt.datetime,
    delivery_id: uuid.UUID | None = None,
    subscription_id: uuid.UUID | None = None,
) -> int:
    """Dead deliveries (one, or all of a subscription) pending again, due now; how many."""
    conditions = [d.tenant_id == tenant_id, d.status == DEAD]
    if delivery_id is not None:
        conditions.append(d.id == delivery_id)
    if subscription_id is not None:
        conditions.append(d.subscription_id == subscription_id)
    statement = (
        update(webhook_deliveries).where(*conditions).values(**_AGAIN, next_attempt_at=now, updated_at=now)
    )
    result = await conn.execute(statement.returning(d.id))
    return len(result.all())
