"""Customers: profiles, identities, and the race-safe find-or-create used by inbound messages."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.cache import Loaded, LookupCache
from state_manager.cache.invalidation import customer_tag
from state_manager.cache.lookups import CUSTOMER_BY_IDENTITY
from state_manager.context import repository as context_repo
from state_manager.conversations import repository as conversations_repo
from state_manager.customers import repository as repo
from state_manager.customers.identity import IdentityChannel, InvalidIdentity, normalize, phone_from_wa_id
from state_manager.customers.schemas import (
    CustomerCreate,
    CustomerMerge,
    CustomerRead,
    CustomerUpdate,
    IdentityIn,
)
from state_manager.db import Database
from state_manager.db.types import utcnow
from state_manager.errors import BadRequest, Conflict, Erased, NotFound, PreconditionFailed, ValidationFailed
from state_manager.etag import etag
from state_manager.events.emit import emit
from state_manager.events.types import EventType
from state_manager.jsonpatch import merge_patch


def normalized(identity: IdentityIn, field: str = "identities") -> tuple[str, str]:
    try:
        return identity.channel.value, normalize(identity.channel, identity.external_id)
    except InvalidIdentity as exc:
        raise ValidationFailed(
            str(exc), errors=[{"field": field, "message": str(exc), "type": "invalid_identity"}]
        ) from exc


def refuse_erased(row: RowMapping) -> None:
    """An erased customer takes no new data: its profile stays empty (customers/erasure.py)."""
    if row["erased_at"] is not None:
        raise Erased(
            f"customer {row['id']} was erased",
            extra={"customer_id": str(row["id"]), "erased_at": row["erased_at"].isoformat()},
        )


async def read(conn: AsyncConnection, tenant_id: str, customer_id: uuid.UUID) -> CustomerRead:
    row = await repo.get(conn, tenant_id, customer_id)
    if row is None:
        raise NotFound(f"customer {customer_id} not found")
    identities = await repo.identities_of(conn, tenant_id, customer_id)
    return CustomerRead.model_validate({**row, "identities": [dict(i) for i in identities]})


async def create(conn: AsyncConnection, tenant_id: str, data: CustomerCreate) -> CustomerRead:
    now = utcnow()
    keys = [normalized(identity, f"identities.{i}") for i, identity in enumerate(data.identities)]
    customer_id = await repo.insert_customer(
        conn,
        tenant_id,
        at=now,
        display_name=data.display_name,
        language=data.language,
        preferences=data.preferences,
        consent=data.consent,
        attributes=data.attributes,
    )
    for channel, external_id in dict.fromkeys(keys):
        if not await repo.insert_identity(conn, tenant_id, channel, external_id, customer_id, now):
            owner = await repo.customer_id_by_identity(conn, tenant_id, channel, external_id)
            raise Conflict(
                f"identity {channel}:{external_id} already belongs to another customer",
                extra={"customer_id": str(owner)},
            )
    emit(
        conn,
        tenant_id,
        EventType.CUSTOMER_CREATED,
        {"display_name": data.display_name},
        customer_id=customer_id,
    )
    return await read(conn, tenant_id, customer_id)


async def by_identity(
    conn: AsyncConnection, tenant_id: str, channel: IdentityChannel, external_id: str
) -> CustomerRead:
    key = normalized(IdentityIn(channel=channel, external_id=external_id), "external_id")
    customer_id = await repo.customer_id_by_identity(conn, tenant_id, *key)
    if customer_id is None:
        raise NotFound(f"no customer with identity {key[0]}:{key[1]}")
    return await read(conn, tenant_id, customer_id)


_CUSTOMER_JSON = TypeAdapter(CustomerRead)


async def by_identity_cached(
    db: Database, cache: LookupCache, tenant_id: str, channel: IdentityChannel, external_id: str
) -> tuple[bytes, str]:
    """`by_identity` as JSON and its ETag, through the cache."""
    key = normalized(IdentityIn(channel=channel, external_id=external_id), "external_id")

    async def load() -> Loaded:
        async with db.transaction(tenant_id, write=False) as conn:
            found = await by_identity(conn, tenant_id, channel, external_id)
        return Loaded(_CUSTOMER_JSON.dump_json(found), etag(found.version), (customer_tag(found.id),))

    return await cache.get(CUSTOMER_BY_IDENTITY, tenant_id, f"{key[0]}:{key[1]}", load)


async def update(
    conn: AsyncConnection, tenant_id: str, customer_id: uuid.UUID, data: CustomerUpdate, expected: int | None
) -> CustomerRead:
    current = await repo.get(conn, tenant_id, customer_id)
    if current is None:
        raise NotFound(f"customer {customer_id} not found")
    refuse_erased(current)
    if expected is not None and current["version"] != expected:
        raise PreconditionFailed(
            f"the customer is at version {current['version']}, not {expected}",
            extra={"current_version": current["version"]},
        )
    given = data.model_dump(exclude_unset=True)
    values: dict[str, Any] = {}
    for field in ("display_name", "language"):
        if field in given:
            values[field] = given[field]
    for field in ("preferences", "consent", "attributes"):
        if given.get(field) is not None:
            values[field] = merge_patch(current[field], given[field])
    row = await repo.update_versioned(
        conn, tenant_id, customer_id, values, expected_version=current["version"], at=utcnow()
    )
    if row is None:  # changed between our read and our write
        raise PreconditionFailed("the customer changed while it was being updated; read it again")
    if values:
        fields = {field: row[field] for field in values}
        emit(
            conn,
            tenant_id,
            EventType.CUSTOMER_UPDATED,
            {"fields": fields, "version": row["version"]},
            customer_id=customer_id,
        )
    return await read(conn, tenant_id, customer_id)


async def merge(
    conn: AsyncConnection, tenant_id: str, customer_id: uuid.UUID, data: CustomerMerge, expected: int | None
) -> CustomerRead:
    """Merges `data.customer_id` into `customer_id` (CustomerMerge says what moves)."""
    source_id = data.customer_id
    if source_id == customer_id:
        raise BadRequest("a customer cannot be merged into itself")
    # Both rows locked, in ID order: two merges of the same pair cannot deadlock.
    rows = {
        found_id: await repo.get(conn, tenant_id, found_id, for_update=True)
        for found_id in sorted((customer_id, source_id))
    }
    target, source = rows[customer_id], rows[source_id]
    for found_id, row in rows.items():
        if row is None:
            raise NotFound(f"customer {found_id} not found")
    for row in rows.values():
        assert row is not None
        refuse_erased(row)
    assert target is not None
    assert source is not None
    if expected is not None and target["version"] != expected:
        raise PreconditionFailed(
            f"the customer is at version {target['version']}, not {expected}",
            extra={"current_version": target["version"]},
        )
    clashing = await conversations_repo.open_numbers_of_both(conn, tenant_id, customer_id, source_id)
    if clashing:
        raise Conflict(
            "both customers have an open conversation on the same business number; close one first",
            extra={"business_number_ids": clashing},
        )
    now = utcnow()
    await repo.move_identities(conn, tenant_id, source_id, customer_id)
    await conversations_repo.move_to_customer(conn, tenant_id, source_id, customer_id, now)
    await context_repo.move_customer_context(conn, tenant_id, source_id, customer_id)
    values: dict[str, Any] = {
        field: source[field] for field in ("display_name", "language") if target[field] is None
    }
    for field in ("preferences", "consent", "attributes"):
        if source[field]:
            values[field] = {**source[field], **target[field]}
    row = await repo.update_versioned(conn, tenant_id, customer_id, values, expected_version=None, at=now)
    assert row is not None  # locked above
    await repo.delete_customer(conn, tenant_id, source_id)
    emit(
        conn,
        tenant_id,
        EventType.CUSTOMER_MERGED,
        {"merged_customer_id": str(source_id), "version": row["version"]},
        customer_id=customer_id,
    )
    return await read(conn, tenant_id, customer_id)


async def add_identity(
    conn: AsyncConnection, tenant_id: str, customer_id: uuid.UUID, identity: IdentityIn
) -> CustomerRead:
    row = await repo.get(conn, tenant_id, customer_id)
    if row is None:
        raise NotFound(f"customer {customer_id} not found")
    refuse_erased(row)
    channel, external_id = normalized(identity, "external_id")
    if await repo.insert_identity(conn, tenant_id, channel, external_id, customer_id, utcnow()):
        emit(
            conn,
            tenant_id,
            EventType.CUSTOMER_IDENTITY_ADDED,
            {"channel": channel, "external_id": external_id},
            customer_id=customer_id,
        )
    else:
        owner = await repo.customer_id_by_identity(conn, tenant_id, channel, external_id)
        if owner != customer_id:
            raise Conflict(
                f"identity {channel}:{external_id} already belongs to another customer",
                extra={"customer_id": str(owner)},
            )
    return await read(conn, tenant_id, customer_id)


async def list_page(
    conn: AsyncConnection, tenant_id: str, *, after: tuple[dt.datetime, uuid.UUID] | None, limit: int
) -> list[CustomerRead]:
    rows = await repo.list_page(conn, tenant_id, after=after, limit=limit)
    return [await read(conn, tenant_id, row["id"]) for row in rows]


async def find_or_create_by_whatsapp(
    conn: AsyncConnection, tenant_id: str, wa_id: str, profile_name: str | None, at: dt.datetime
) -> tuple[uuid.UUID, bool]:
    """The customer with this wa_id, created if new (with its phone identity when the wa_id spells one).

    Race-safe without a lock: the identity's primary key decides. A loser of the race removes the
    customer row it inserted (still private to its transaction) and uses the winner's.
    """
    existing = await repo.customer_id_by_identity(conn, tenant_id, IdentityChannel.WHATSAPP.value, wa_id)
    if existing is not None:
        return existing, False
    customer_id = await repo.insert_customer(conn, tenant_id, at=at, display_name=profile_name)
    if not await repo.insert_identity(
        conn, tenant_id, IdentityChannel.WHATSAPP.value, wa_id, customer_id, at
    ):
        await repo.delete_customer(conn, tenant_id, customer_id)
        winner = await repo.customer_id_by_identity(conn, tenant_id, IdentityChannel.WHATSAPP.value, wa_id)
        assert winner is not None
        return winner, False
    phone = phone_from_wa_id(wa_id)
    if phone is not None:
        await repo.insert_identity(conn, tenant_id, IdentityChannel.PHONE.value, phone, customer_id, at)
    emit(conn, tenant_id, EventType.CUSTOMER_CREATED, {"display_name": profile_name}, customer_id=customer_id)
    return customer_id, True


async def refresh_profile_name(
    conn: AsyncConnection, tenant_id: str, customer_id: uuid.UUID, profile_name: str
) -> None:
    version = await repo.set_display_name_if_changed(conn, tenant_id, customer_id, profile_name, utcnow())
    if version is not None:
        emit(
            conn,
            tenant_id,
            EventType.CUSTOMER_UPDATED,
            {"fields": {"display_name": profile_name}, "version": version},
            customer_id=customer_id,
        )
