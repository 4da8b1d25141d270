"""Conversations: race-safe get-or-create, lifecycle transitions, Genesys IDs, participants."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.cache import Loaded, LookupCache
from state_manager.cache.invalidation import conversations_tag, customer_tag
from state_manager.cache.lookups import CONVERSATION_BY_GENESYS_ID, OPEN_CONVERSATION
from state_manager.conversations import repository as repo
from state_manager.conversations.lifecycle import FINAL_STATES, TRANSITIONS, ConversationState, can_transition
from state_manager.conversations.schemas import (
    ConversationOpen,
    ConversationRead,
    ConversationUpdate,
    ParticipantAdd,
    ParticipantRead,
    StateChangeRead,
    TransitionRequest,
)
from state_manager.customers import repository as customers_repo
from state_manager.customers import service as customers
from state_manager.db import Database
from state_manager.db.types import utcnow
from state_manager.errors import Conflict, InvalidTransition, NotFound, PreconditionFailed, Unavailable
from state_manager.etag import etag
from state_manager.events.emit import emit
from state_manager.events.types import EventType
from state_manager.jsonpatch import merge_patch

GET_OR_CREATE_ATTEMPTS = 5


def to_read(row: RowMapping) -> ConversationRead:
    return ConversationRead.model_validate(dict(row))


async def require(
    conn: AsyncConnection, tenant_id: str, conversation_id: uuid.UUID, *, for_update: bool = False
) -> RowMapping:
    row = await repo.get(conn, tenant_id, conversation_id, for_update=for_update)
    if row is None:
        raise NotFound(f"conversation {conversation_id} not found")
    return row


async def get_or_create_open(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    customer_id: uuid.UUID,
    business_number_id: str,
    business_display_number: str | None,
    channel: str = "whatsapp",
    metadata: dict[str, Any] | None = None,
    at: dt.datetime | None = None,
    now: dt.datetime | None = None,
) -> tuple[RowMapping, bool]:
    """The open conversation for (customer, business number), created if there is none.

    The partial unique index decides races: INSERT … ON CONFLICT DO NOTHING either creates the row or
    finds that another writer did, and the loop reads the winner. No lock is taken.
    """
    now = now or utcnow()
    started = at or now
    for _ in range(GET_OR_CREATE_ATTEMPTS):
        existing = await repo.open_for(conn, tenant_id, customer_id, business_number_id)
        if existing is not None:
            return existing, False
        created = await repo.insert_open(
            conn,
            tenant_id,
            {
                "id": uuid.uuid4(),
                "customer_id": customer_id,
                "channel": channel,
                "business_number_id": business_number_id,
                "business_display_number": business_display_number,
                "state": ConversationState.PENDING.value,
                "state_reason": "created",
                "state_changed_at": now,
                "started_at": started,
                "last_activity_at": started,
                "metadata": metadata or {},
                "version": 1,
                "created_at": now,
                "updated_at": now,
            },
        )
        if created is not None:
            await repo.insert_state_change(
                conn, tenant_id, created["id"], None, ConversationState.PENDING.value, "created", now
            )
            emit(
                conn,
                tenant_id,
                EventType.CONVERSATION_CREATED,
                {"state": created["state"], "channel": channel, "business_number_id": business_number_id},
                conversation_id=created["id"],
                customer_id=customer_id,
            )
            return created, True
    # Only reachable if the open conversation is closed and reopened between every read and insert.
    raise Unavailable("the conversation kept changing while it was being opened; retry")


async def open_conversation(
    conn: AsyncConnection, tenant_id: str, data: ConversationOpen
) -> tuple[ConversationRead, bool]:
    if data.identity is not None:
        key = customers.normalized(data.identity, "identity.external_id")
        customer_id = await customers_repo.customer_id_by_identity(conn, tenant_id, *key)
        if customer_id is None:
            raise NotFound(f"no customer with identity {key[0]}:{key[1]}")
    else:
        assert data.customer_id is not None
        customer_id = data.customer_id
        customer = await customers_repo.get(conn, tenant_id, customer_id)
        if customer is None:
            raise NotFound(f"customer {customer_id} not found")
        customers.refuse_erased(customer)
    row, created = await get_or_create_open(
        conn,
        tenant_id,
        customer_id=customer_id,
        business_number_id=data.business_number_id,
        business_display_number=data.business_display_number,
        channel=data.channel,
        metadata=data.metadata,
    )
    return to_read(row), created


async def read(conn: AsyncConnection, tenant_id: str, conversation_id: uuid.UUID) -> ConversationRead:
    return to_read(await require(conn, tenant_id, conversation_id))


async def by_genesys_id(
    conn: AsyncConnection, tenant_id: str, genesys_conversation_id: str
) -> ConversationRead:
    row = await repo.by_genesys_id(conn, tenant_id, genesys_conversation_id)
    if row is None:
        raise NotFound(f"no conversation with Genesys ID {genesys_conversation_id}")
    return to_read(row)


async def open_by_identity(
    conn: AsyncConnection, tenant_id: str, channel: str, external_id: str, business_number_id: str | None
) -> ConversationRead:
    row = await repo.open_by_identity(conn, tenant_id, channel, external_id, business_number_id)
    if row is None:
        raise NotFound(f"no open conversation for {channel}:{external_id}")
    return to_read(row)


_CONVERSATION_JSON = TypeAdapter(ConversationRead)


def window_left(conversation: ConversationRead) -> float | None:
    """Seconds until `reply_window_open` turns false; None when it is false already."""
    if not conversation.reply_window_open:
        return None
    assert conversation.reply_window_ends_at is not None
    return (conversation.reply_window_ends_at - utcnow()).total_seconds()


def cacheable(conversation: ConversationRead) -> Loaded:
    """A conversation as a cache entry: never kept once closed or expired (such conversations leave the
    cache), nor past the end of the reply window it reports as open (`reply_window_open` is computed when
    the JSON is made)."""
    valid_for = 0.0 if conversation.state in FINAL_STATES else window_left(conversation)
    return Loaded(
        _CONVERSATION_JSON.dump_json(conversation),
        etag(conversation.version),
        (customer_tag(conversation.customer_id), conversations_tag(conversation.customer_id)),
        valid_for,
    )


async def open_by_identity_cached(
    db: Database,
    cache: LookupCache,
    tenant_id: str,
    channel: str,
    external_id: str,
    business_number_id: str | None,
) -> tuple[bytes, str]:
    """`open_by_identity` as JSON and its ETag, through the cache: the hottest read of all (each inbound
    and outbound message asks it)."""

    async def load() -> Loaded:
        async with db.transaction(tenant_id, write=False) as conn:
            found = await open_by_identity(conn, tenant_id, channel, external_id, business_number_id)
        return cacheable(found)

    # The free-form external ID goes last, so that the key is unambiguous whatever it holds.
    key = f"{business_number_id or '*'}:{channel}:{external_id}"
    return await cache.get(OPEN_CONVERSATION, tenant_id, key, load)


async def by_genesys_id_cached(
    db: Database, cache: LookupCache, tenant_id: str, genesys_conversation_id: str
) -> tuple[bytes, str]:
    async def load() -> Loaded:
        async with db.transaction(tenant_id, write=False) as conn:
            return cacheable(await by_genesys_id(conn, tenant_id, genesys_conversation_id))

    return await cache.get(CONVERSATION_BY_GENESYS_ID, tenant_id, genesys_conversation_id, load)


def _check_version(row: RowMapping, expected: int | None) -> None:
    if expected is not None and row["version"] != expected:
        raise PreconditionFailed(
            f"the conversation is at version {row['version']}, not {expected}",
            extra={"current_version": row["version"]},
        )


async def update(
    conn: AsyncConnection,
    tenant_id: str,
    conversation_id: uuid.UUID,
    data: ConversationUpdate,
    expected: int | None,
) -> ConversationRead:
    # Locked: a write that names no version must not fail because a message bumped it meanwhile.
    row = await require(conn, tenant_id, conversation_id, for_update=True)
    _check_version(row, expected)
    given = data.model_dump(exclude_unset=True)
    values: dict[str, Any] = {}
    if given.get("metadata") is not None:
        values["metadata"] = merge_patch(row["metadata"], given["metadata"])
    if "business_display_number" in given:
        values["business_display_number"] = given["business_display_number"]
    for field in ("genesys_conversation_id", "genesys_communication_id"):
        new = given.get(field)
        if new is None or new == row[field]:
            continue
        if row[field] is not None:
            raise Conflict(f"{field} is already set to {row[field]!r}; it cannot change")
        if await repo.find_by_genesys_field(conn, tenant_id, field, new) is not None:
            raise Conflict(f"another conversation already has {field} {new!r}")
        values[field] = new
    if not values:
        return to_read(row)
    updated = await repo.update_versioned(
        conn, tenant_id, conversation_id, values, expected_version=row["version"], at=utcnow()
    )
    if updated is None:
        raise PreconditionFailed("the conversation changed while it was being updated; read it again")
    ids = {"conversation_id": conversation_id, "customer_id": updated["customer_id"]}
    correlated: dict[str, Any] = {
        field: values.pop(field)
        for field in ("genesys_conversation_id", "genesys_communication_id")
        if field in values
    }
    if correlated:
        emit(conn, tenant_id, EventType.CONVERSATION_CORRELATED, correlated, **ids)
    if values:
        fields = {field: updated[field] for field in values}
        emit(
            conn,
            tenant_id,
            EventType.CONVERSATION_UPDATED,
            {"fields": fields, "version": updated["version"]},
            **ids,
        )
    return to_read(updated)


async def transition(
    conn: AsyncConnection,
    tenant_id: str,
    conversation_id: uuid.UUID,
    request: TransitionRequest,
    expected: int | None,
) -> ConversationRead:
    row = await require(conn, tenant_id, conversation_id, for_update=True)
    _check_version(row, expected)
    current = ConversationState(row["state"])
    target = request.state
    if not can_transition(current, target):
        raise InvalidTransition(
            f"a {current} conversation cannot become {target}",
            extra={
                "current_state": current.value,
                "allowed": sorted(s.value for s in TRANSITIONS[current]),
                "conversation": to_read(row).model_dump(mode="json"),
            },
        )
    if target == current:
        return to_read(row)
    now = utcnow()
    at = request.at or now
    values: dict[str, Any] = {"state": target.value, "state_reason": request.reason, "state_changed_at": at}
    left: Sequence[RowMapping] = ()
    if target in FINAL_STATES:
        values["closed_at"] = at
        values["close_reason"] = request.reason
        left = await repo.mark_left(conn, tenant_id, conversation_id, at)
    updated = await repo.update_versioned(
        conn, tenant_id, conversation_id, values, expected_version=row["version"], at=now
    )
    if updated is None:
        raise PreconditionFailed("the conversation changed while it was being updated; read it again")
    await repo.insert_state_change(
        conn, tenant_id, conversation_id, current.value, target.value, request.reason, at
    )
    for participant in left:
        _announce_participant(conn, tenant_id, EventType.PARTICIPANT_LEFT, participant, row)
    emit(
        conn,
        tenant_id,
        EventType.CONVERSATION_STATE_CHANGED,
        {"from": current.value, "to": target.value, "reason": request.reason, "version": updated["version"]},
        conversation_id=conversation_id,
        customer_id=row["customer_id"],
    )
    return to_read(updated)


def _announce_participant(
    conn: AsyncConnection, tenant_id: str, type: EventType, participant: RowMapping, conversation: RowMapping
) -> None:
    payload = {
        "participant_id": str(participant["id"]),
        "role": participant["role"],
        "participant_ref": participant["participant_ref"],
        "joined_at": participant["joined_at"].isoformat(),
        "left_at": None if participant["left_at"] is None else participant["left_at"].isoformat(),
    }
    emit(
        conn,
        tenant_id,
        type,
        payload,
        conversation_id=conversation["id"],
        customer_id=conversation["customer_id"],
    )


async def history(conn: AsyncConnection, tenant_id: str, conversation_id: uuid.UUID) -> list[StateChangeRead]:
    await require(conn, tenant_id, conversation_id)
    return [
        StateChangeRead.model_validate(dict(r))
        for r in await repo.state_history(conn, tenant_id, conversation_id)
    ]


async def list_page(conn: AsyncConnection, tenant_id: str, **filters: Any) -> list[ConversationRead]:
    return [to_read(row) for row in await repo.list_page(conn, tenant_id, **filters)]


async def participants(
    conn: AsyncConnection, tenant_id: str, conversation_id: uuid.UUID
) -> list[ParticipantRead]:
    await require(conn, tenant_id, conversation_id)
    rows = await repo.participants_of(conn, tenant_id, conversation_id)
    return [ParticipantRead.model_validate(dict(r)) for r in rows]


async def add_participant(
    conn: AsyncConnection, tenant_id: str, conversation_id: uuid.UUID, data: ParticipantAdd
) -> tuple[ParticipantRead, bool]:
    """Adds a participant; joining twice is harmless and returns the one already present."""
    row = await require(conn, tenant_id, conversation_id)
    if ConversationState(row["state"]) in FINAL_STATES:
        raise Conflict(
            f"the conversation is {row['state']}; no one can join it", extra={"current_state": row["state"]}
        )
    values = {
        "conversation_id": conversation_id,
        "role": data.role,
        "participant_ref": data.participant_ref,
        "display_name": data.display_name,
        "joined_at": data.joined_at or utcnow(),
        "metadata": data.metadata,
    }
    created = await repo.insert_participant(conn, tenant_id, values)
    if created is not None:
        _announce_participant(conn, tenant_id, EventType.PARTICIPANT_JOINED, created, row)
        return ParticipantRead.model_validate(dict(created)), True
    present = await repo.present_participant(
        conn, tenant_id, conversation_id, data.role, data.participant_ref
    )
    assert present is not None
    return ParticipantRead.model_validate(dict(present)), False


async def remove_participant(
    conn: AsyncConnection,
    tenant_id: str,
    conversation_id: uuid.UUID,
    participant_id: uuid.UUID,
    at: dt.datetime | None,
) -> ParticipantRead:
    """Marks a participant as left; leaving twice keeps the first leave time."""
    conversation = await require(conn, tenant_id, conversation_id)
    for left in await repo.mark_left(conn, tenant_id, conversation_id, at or utcnow(), participant_id):
        _announce_participant(conn, tenant_id, EventType.PARTICIPANT_LEFT, left, conversation)
    row = await repo.get_participant(conn, tenant_id, conversation_id, participant_id)
    if row is None:
        raise NotFound(f"participant {participant_id} not found")
    return ParticipantRead.model_validate(dict(row))
