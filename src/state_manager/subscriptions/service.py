"""Webhook subscriptions and the delivery log: the rules behind `/v1/webhooks/…`."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import orjson
from sqlalchemy import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.db.types import utcnow
from state_manager.errors import Conflict, NotFound, PreconditionFailed, ValidationFailed
from state_manager.subscriptions import repository as repo
from state_manager.subscriptions.schemas import (
    AttemptRead,
    DeliveryDetail,
    DeliveryRead,
    DeliveryStatus,
    SubscriptionCreate,
    SubscriptionRead,
    SubscriptionUpdate,
    SubscriptionWithSecret,
)
from state_manager.subscriptions.signing import new_secret, secret_hint
from state_manager.subscriptions.urls import names_private_host


def _read(row: RowMapping) -> SubscriptionRead:
    return SubscriptionRead.model_validate({**row, "secret_hint": secret_hint(row["secret"])})


def _with_secret(row: RowMapping) -> SubscriptionWithSecret:
    return SubscriptionWithSecret.model_validate({**row, "secret_hint": secret_hint(row["secret"])})


def _allowed(url: str, *, refuse_private: bool) -> None:
    if refuse_private and names_private_host(url):
        message = "the URL names a private, loopback or reserved address, which this server refuses"
        raise ValidationFailed(
            message, errors=[{"field": "url", "message": message, "type": "private_address"}]
        )


async def _current(conn: AsyncConnection, tenant_id: str, subscription_id: uuid.UUID) -> RowMapping:
    row = await repo.get_subscription(conn, tenant_id, subscription_id)
    if row is None:
        raise NotFound(f"webhook subscription {subscription_id} not found")
    return row


def _check_version(row: RowMapping, expected: int | None) -> None:
    if expected is not None and row["version"] != expected:
        raise PreconditionFailed(
            f"the subscription is at version {row['version']}, not {expected}",
            extra={"current_version": row["version"]},
        )


async def create(
    conn: AsyncConnection, tenant_id: str, data: SubscriptionCreate, *, refuse_private: bool
) -> SubscriptionWithSecret:
    _allowed(data.url, refuse_private=refuse_private)
    now = utcnow()
    row = await repo.insert_subscription(
        conn,
        tenant_id,
        url=data.url,
        event_types=[t.value for t in data.event_types],
        secret=data.secret or new_secret(),
        active=data.active,
        description=data.description,
        created_at=now,
        updated_at=now,
    )
    return _with_secret(row)


async def read(conn: AsyncConnection, tenant_id: str, subscription_id: uuid.UUID) -> SubscriptionRead:
    return _read(await _current(conn, tenant_id, subscription_id))


async def list_page(
    conn: AsyncConnection, tenant_id: str, *, after: tuple[dt.datetime, uuid.UUID] | None, limit: int
) -> list[SubscriptionRead]:
    return [_read(row) for row in await repo.list_subscriptions(conn, tenant_id, after=after, limit=limit)]


async def update(
    conn: AsyncConnection,
    tenant_id: str,
    subscription_id: uuid.UUID,
    data: SubscriptionUpdate,
    expected: int | None,
    *,
    refuse_private: bool,
) -> SubscriptionRead:
    current = await _current(conn, tenant_id, subscription_id)
    _check_version(current, expected)
    given = data.model_dump(exclude_unset=True)
    values: dict[str, Any] = {}
    for field in ("url", "active"):
        if given.get(field) is not None:
            values[field] = given[field]
    if "url" in values:
        _allowed(values["url"], refuse_private=refuse_private)
    if given.get("event_types") is not None:
        values["event_types"] = [t.value for t in data.event_types or []]
    if "description" in given:
        values["description"] = given["description"]
    row = await _versioned(conn, tenant_id, subscription_id, values, current["version"])
    return _read(row)


async def rotate_secret(
    conn: AsyncConnection,
    tenant_id: str,
    subscription_id: uuid.UUID,
    secret: str | None,
    expected: int | None,
) -> SubscriptionWithSecret:
    """A new secret, used from the next attempt on (deliveries already sent stay signed with the old)."""
    current = await _current(conn, tenant_id, subscription_id)
    _check_version(current, expected)
    row = await _versioned(
        conn, tenant_id, subscription_id, {"secret": secret or new_secret()}, current["version"]
    )
    return _with_secret(row)


async def _versioned(
    conn: AsyncConnection, tenant_id: str, subscription_id: uuid.UUID, values: dict[str, Any], version: int
) -> RowMapping:
    row = await repo.update_subscription(
        conn, tenant_id, subscription_id, values, expected_version=version, at=utcnow()
    )
    if row is None:  # changed between our read and our write
        raise PreconditionFailed("the subscription changed while it was being updated; read it again")
    return row


async def delete(
    conn: AsyncConnection, tenant_id: str, subscription_id: uuid.UUID, expected: int | None
) -> None:
    """Deletes the subscription with its delivery log; nothing more is sent to it."""
    _check_version(await _current(conn, tenant_id, subscription_id), expected)
    await repo.delete_subscription(conn, tenant_id, subscription_id)


# --- Deliveries ------------------------------------------------------------------------------------


async def list_deliveries(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    status: DeliveryStatus | None,
    subscription_id: uuid.UUID | None,
    before: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[DeliveryRead]:
    rows = await repo.list_deliveries(
        conn,
        tenant_id,
        status=None if status is None else status.value,
        subscription_id=subscription_id,
        before=before,
        limit=limit,
    )
    return [DeliveryRead.model_validate(dict(row)) for row in rows]


async def read_delivery(conn: AsyncConnection, tenant_id: str, delivery_id: uuid.UUID) -> DeliveryDetail:
    row = await repo.get_delivery(conn, tenant_id, delivery_id)
    if row is None:
        raise NotFound(f"webhook delivery {delivery_id} not found")
    attempts = await repo.attempts_of(conn, tenant_id, delivery_id)
    return DeliveryDetail.model_validate(
        {
            **row,
            "event": orjson.loads(row["body"]),
            "attempt_log": [AttemptRead.model_validate(dict(attempt)) for attempt in attempts],
        }
    )


async def retry(conn: AsyncConnection, tenant_id: str, delivery_id: uuid.UUID) -> DeliveryDetail:
    """A dead delivery pending again, due now, with a fresh round of attempts; 409 unless dead."""
    if not await repo.retry_dead(conn, tenant_id, now=utcnow(), delivery_id=delivery_id):
        current = await read_delivery(conn, tenant_id, delivery_id)  # 404 when missing
        raise Conflict(
            f"only a dead delivery can be retried; this one is {current.status.value}",
            extra={"delivery_status": current.status.value},
        )
    return await read_delivery(conn, tenant_id, delivery_id)


async def retry_dead(conn: AsyncConnection, tenant_id: str, subscription_id: uuid.UUID) -> int:
    """Every dead delivery of the subscription pending again; how many."""
    await _current(conn, tenant_id, subscription_id)
    return await repo.retry_dead(conn, tenant_id, now=utcnow(), subscription_id=subscription_id)
