"""Messages: record once, link the other side's ID later, and merge receipts in any order."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
from pydantic import TypeAdapter
from sqlalchemy import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.cache import Loaded, LookupCache
from state_manager.cache.invalidation import ended_tag, message_tag
from state_manager.cache.lookups import MESSAGE_BY_GENESYS_ID, MESSAGE_BY_WAMID
from state_manager.conversations import repository as conversations_repo
from state_manager.conversations import service as conversations
from state_manager.conversations.lifecycle import FINAL_STATES, ConversationState
from state_manager.conversations.schemas import ConversationRead, ConversationUpdate
from state_manager.customers import service as customers
from state_manager.customers.identity import IdentityChannel
from state_manager.customers.schemas import IdentityIn
from state_manager.db import Database
from state_manager.db.locks import lock_names
from state_manager.db.types import utcnow
from state_manager.errors import Conflict, NotFound
from state_manager.events.emit import emit, withdraw
from state_manager.events.types import EventType
from state_manager.messages import media_urls
from state_manager.messages import repository as repo
from state_manager.messages.schemas import (
    Correlation,
    InboundMessage,
    InboundRecorded,
    LinkIds,
    MessageBody,
    MessageRead,
    MessageRecord,
    ReceiptIn,
    ReceiptOutcome,
    ReceiptResult,
    SenderType,
)
from state_manager.messages.status import (
    DeliveryStatus,
    Direction,
    Failure,
    Receipt,
    ReceiptStatus,
    StatusTimes,
    derive,
    merge,
)

ID_KINDS = ("wamid", "genesys")
_ID_FIELDS = (("wamid", "wamid"), ("genesys", "genesys_message_id"))  # (kind, column)


def new_message_id() -> uuid.UUID:
    return uuid.uuid4()


def to_read(row: RowMapping) -> MessageRead:
    media = None
    if any(row[f"media_{f}"] is not None for f in ("url", "mime_type", "filename", "caption")):
        media = {f: row[f"media_{f}"] for f in ("url", "mime_type", "filename", "caption")}
    failure = None
    if row["failed_at"] is not None:
        failure = {
            "code": row["failure_code"],
            "title": row["failure_title"],
            "details": row["failure_details"],
        }
    return MessageRead.model_validate({**row, "media": media, "failure": failure})


def _times(row: RowMapping) -> StatusTimes:
    failure = None
    if row["failed_at"] is not None:
        failure = Failure(row["failure_code"], row["failure_title"], row["failure_details"])
    return StatusTimes(
        sent_at=row["sent_at"],
        delivered_at=row["delivered_at"],
        read_at=row["read_at"],
        failed_at=row["failed_at"],
        failure=failure,
    )


def _time_values(times: StatusTimes) -> dict[str, Any]:
    failure = times.failure or Failure()
    return {
        "sent_at": times.sent_at,
        "delivered_at": times.delivered_at,
        "read_at": times.read_at,
        "failed_at": times.failed_at,
        "failure_code": failure.code if times.failed_at else None,
        "failure_title": failure.title if times.failed_at else None,
        "failure_details": failure.details if times.failed_at else None,
    }


def _message_values(
    body: MessageBody, *, conversation_id: uuid.UUID, direction: Direction, now: dt.datetime
) -> dict[str, Any]:
    media = body.media
    return {
        "id": new_message_id(),
        "conversation_id": conversation_id,
        "direction": direction.value,
        "type": body.type.value,
        "text": body.text,
        "media_url": media.url if media else None,
        "media_mime_type": media.mime_type if media else None,
        "media_filename": media.filename if media else None,
        "media_caption": media.caption if media else None,
        "occurred_at": body.occurred_at or now,
        "created_at": now,
        "updated_at": now,
        "queued_at": now if direction is Direction.OUTBOUND else None,
        "metadata": body.metadata,
    }


async def _insert_once(
    conn: AsyncConnection, tenant_id: str, values: dict[str, Any], *, customer_id: uuid.UUID, now: dt.datetime
) -> tuple[RowMapping, bool]:
    """Inserts the message unless one with the same wamid or Genesys ID exists; a repeat changes nothing."""
    created = await repo.insert(conn, tenant_id, values)
    if created is None:
        existing = await repo.existing_for(
            conn, tenant_id, values.get("wamid"), values.get("genesys_message_id")
        )
        assert existing is not None
        return existing, False
    await conversations_repo.record_activity(
        conn,
        tenant_id,
        values["conversation_id"],
        inbound=values["direction"] == Direction.INBOUND.value,
        at=values["occurred_at"],
        now=now,
    )
    emit(
        conn,
        tenant_id,
        EventType.MESSAGE_RECORDED,
        {field: created[field] for field in _RECORDED_FIELDS},
        conversation_id=created["conversation_id"],
        customer_id=customer_id,
        message_id=created["id"],
    )
    return created, True


# The payload of message.recorded; sm_record_inbound (migration 0006) writes the same fields.
_RECORDED_FIELDS = ("direction", "type", "wamid", "genesys_message_id", "text", "sender_type")


def _emit_status_change(
    conn: AsyncConnection,
    tenant_id: str,
    row: RowMapping,
    customer_id: uuid.UUID | None,
    before: StatusTimes,
    after: StatusTimes,
) -> None:
    direction = Direction(row["direction"])
    was, now_is = derive(before, direction), derive(after, direction)
    if was == now_is:
        return
    failure = after.failure if now_is is DeliveryStatus.FAILED else None
    emit(
        conn,
        tenant_id,
        EventType.MESSAGE_STATUS_CHANGED,
        {
            "from": was.value,
            "to": now_is.value,
            "failure": None if failure is None else {"code": failure.code, "title": failure.title},
        },
        conversation_id=row["conversation_id"],
        customer_id=customer_id,
        message_id=row["id"],
    )


async def _apply_held(
    conn: AsyncConnection, tenant_id: str, row: RowMapping, customer_id: uuid.UUID
) -> RowMapping:
    """Applies receipts that arrived before the message (or before the ID they name was linked)."""
    await _lock_external_ids(
        conn, tenant_id, [(kind, row[field]) for kind, field in _ID_FIELDS if row[field] is not None]
    )
    held: list[RowMapping] = []
    if row["wamid"] is not None:
        held += await repo.take_held(conn, tenant_id, "wamid", row["wamid"])
    if row["genesys_message_id"] is not None:
        held += await repo.take_held(conn, tenant_id, "genesys", row["genesys_message_id"])
    if not held:
        return row
    before = times = _times(row)
    for receipt in held:
        failure = Failure(receipt["failure_code"], receipt["failure_title"], receipt["failure_details"])
        status = ReceiptStatus(receipt["status"])
        times = merge(
            times,
            Receipt(status, receipt["occurred_at"], failure if status is ReceiptStatus.FAILED else None),
        )
    await repo.write_times(
        conn,
        tenant_id,
        [{"id": row["id"], "conversation_id": row["conversation_id"], **_time_values(times)}],
        utcnow(),
    )
    _emit_status_change(conn, tenant_id, row, customer_id, before, times)
    refreshed = await repo.get(conn, tenant_id, row["id"])
    assert refreshed is not None
    return refreshed


async def record(
    conn: AsyncConnection, tenant_id: str, conversation_id: uuid.UUID, data: MessageRecord
) -> tuple[MessageRead, bool]:
    media_urls.check_media(data.media)
    conversation = await conversations.require(conn, tenant_id, conversation_id)
    now = utcnow()
    values = _message_values(data, conversation_id=conversation["id"], direction=data.direction, now=now)
    default_sender = SenderType.CUSTOMER if data.direction is Direction.INBOUND else SenderType.AGENT
    values |= {
        "wamid": data.wamid,
        "genesys_message_id": data.genesys_message_id,
        "sender_type": (data.sender_type or default_sender).value,
        "sender_id": data.sender_id,
    }
    customer_id = conversation["customer_id"]
    row, created = await _insert_once(conn, tenant_id, values, customer_id=customer_id, now=now)
    if created:
        row = await _apply_held(conn, tenant_id, row, customer_id)
    return to_read(row), created


async def record_inbound(conn: AsyncConnection, tenant_id: str, data: InboundMessage) -> InboundRecorded:
    """Customer, open conversation and message in one transaction (the caller's)."""
    media_urls.check_media(data.media)
    wa_id = customers.normalized(
        IdentityIn(channel=IdentityChannel.WHATSAPP, external_id=data.wa_id), "wa_id"
    )[1]
    # A repeat of a message already recorded changes nothing, even if its conversation has ended since:
    # it must not open a new one.
    existing = await repo.existing_for(conn, tenant_id, data.wamid, None)
    if existing is not None:
        return await _repeat(conn, tenant_id, existing)
    now = utcnow()
    at = data.occurred_at or now
    found = await repo.inbound_context(conn, tenant_id, wa_id, data.business_number_id)
    customer_created = conversation_created = False
    if found is None:
        customer_id, customer_created = await customers.find_or_create_by_whatsapp(
            conn, tenant_id, wa_id, data.profile_name or None, at
        )
    else:
        customer_id = found["customer_id"]
        if data.profile_name and data.profile_name != found["display_name"]:
            await customers.refresh_profile_name(conn, tenant_id, customer_id, data.profile_name)
    if found is not None and found["conversation_id"] is not None:
        conversation_id = found["conversation_id"]
        state, genesys_id = found["state"], found["genesys_conversation_id"]
    else:
        conversation, conversation_created = await conversations.get_or_create_open(
            conn,
            tenant_id,
            customer_id=customer_id,
            business_number_id=data.business_number_id,
            business_display_number=data.business_display_number,
            at=at,
            now=now,
        )
        conversation_id = conversation["id"]
        state, genesys_id = conversation["state"], conversation["genesys_conversation_id"]
    values = _message_values(data, conversation_id=conversation_id, direction=Direction.INBOUND, now=now)
    values |= {"wamid": data.wamid, "genesys_message_id": None, "sender_type": "customer", "sender_id": wa_id}
    row, created = await _insert_once(conn, tenant_id, values, customer_id=customer_id, now=now)
    if not created:
        # Recorded meanwhile by a concurrent call: undo the conversation this one opened (still private).
        if conversation_created:
            await conversations_repo.delete(conn, tenant_id, conversation_id)
            withdraw(conn, conversation_id=conversation_id)
        return await _repeat(conn, tenant_id, row)
    return InboundRecorded(
        customer_id=customer_id,
        customer_created=customer_created,
        conversation_id=row["conversation_id"],
        conversation_created=conversation_created,
        conversation_state=ConversationState(state),
        genesys_conversation_id=genesys_id,
        message_id=row["id"],
        duplicate=not created,
    )


async def _repeat(conn: AsyncConnection, tenant_id: str, message: RowMapping) -> InboundRecorded:
    """The answer to a message recorded before: its own conversation as it is now."""
    conversation = await conversations.require(conn, tenant_id, message["conversation_id"])
    return InboundRecorded(
        customer_id=conversation["customer_id"],
        customer_created=False,
        conversation_id=conversation["id"],
        conversation_created=False,
        conversation_state=ConversationState(conversation["state"]),
        genesys_conversation_id=conversation["genesys_conversation_id"],
        message_id=message["id"],
        duplicate=True,
    )


async def read(conn: AsyncConnection, tenant_id: str, message_id: uuid.UUID) -> MessageRead:
    row = await repo.get(conn, tenant_id, message_id)
    if row is None:
        raise NotFound(f"message {message_id} not found")
    return to_read(row)


async def by_external_id(conn: AsyncConnection, tenant_id: str, kind: str, external_id: str) -> MessageRead:
    row = await repo.by_external_id(conn, tenant_id, kind, external_id)
    if row is None:
        raise NotFound(f"no message with {'wamid' if kind == 'wamid' else 'Genesys ID'} {external_id}")
    return to_read(row)


_MESSAGE_JSON = TypeAdapter(MessageRead)


async def by_external_id_cached(
    db: Database, cache: LookupCache, tenant_id: str, kind: str, external_id: str
) -> bytes:
    """`by_external_id` as JSON, through the cache; kept only while its conversation is open."""

    async def load() -> Loaded:
        async with db.transaction(tenant_id, write=False) as conn:
            row = await repo.by_external_id_with_state(conn, tenant_id, kind, external_id)
        if row is None:
            raise NotFound(f"no message with {'wamid' if kind == 'wamid' else 'Genesys ID'} {external_id}")
        message = to_read(row)
        return Loaded(
            _MESSAGE_JSON.dump_json(message),
            "",
            (message_tag(message.id), ended_tag(message.conversation_id)),
            0.0 if row["conversation_state"] in FINAL_STATES else None,
        )

    name = MESSAGE_BY_WAMID if kind == "wamid" else MESSAGE_BY_GENESYS_ID
    body, _ = await cache.get(name, tenant_id, external_id, load)
    return body


async def list_page(
    conn: AsyncConnection,
    tenant_id: str,
    conversation_id: uuid.UUID,
    *,
    after: tuple[dt.datetime, uuid.UUID] | None,
    newest_first: bool,
    limit: int,
) -> list[MessageRead]:
    await conversations.require(conn, tenant_id, conversation_id)
    rows = await repo.list_page(
        conn, tenant_id, conversation_id, after=after, newest_first=newest_first, limit=limit
    )
    return [to_read(row) for row in rows]


async def link_ids(conn: AsyncConnection, tenant_id: str, message_id: uuid.UUID, ids: LinkIds) -> MessageRead:
    """Sets the wamid or Genesys ID learnt after the message was recorded; each can be set once."""
    found = await repo.get(conn, tenant_id, message_id)
    if found is None:
        raise NotFound(f"message {message_id} not found")
    row = found
    values: dict[str, str] = {}
    for field, kind, new in (
        ("wamid", "wamid", ids.wamid),
        ("genesys_message_id", "genesys", ids.genesys_message_id),
    ):
        if new is None or new == row[field]:
            continue
        if row[field] is not None:
            raise Conflict(f"{field} is already {row[field]!r}; it cannot change")
        other = await repo.by_external_id(conn, tenant_id, kind, new)
        if other is not None:
            raise Conflict(
                f"another message already has {field} {new!r}", extra={"message_id": str(other["id"])}
            )
        values[field] = new
    if values:
        # Every ID the message will have, in one sorted call before its row is locked: `_apply_held` asks
        # for the same locks, and a receipt naming the old ID takes them before the row (no deadlock).
        every_id = [(kind, values.get(field) or row[field]) for kind, field in _ID_FIELDS]
        await _lock_external_ids(conn, tenant_id, [(kind, value) for kind, value in every_id if value])
        row = await repo.set_external_ids(conn, tenant_id, message_id, values, utcnow())
        customer_id = (await conversations_repo.customers_of(conn, tenant_id, [row["conversation_id"]]))[
            row["conversation_id"]
        ]
        emit(
            conn,
            tenant_id,
            EventType.MESSAGE_LINKED,
            {"wamid": row["wamid"], "genesys_message_id": row["genesys_message_id"]},
            conversation_id=row["conversation_id"],
            customer_id=customer_id,
            message_id=message_id,
        )
        row = await _apply_held(conn, tenant_id, row, customer_id)
    return to_read(row)


async def _lock_external_ids(conn: AsyncConnection, tenant_id: str, ids: Sequence[tuple[str, str]]) -> None:
    """Serialises receipts for a message with the message's arrival (or the linking of the ID they name).

    Without it, on PostgreSQL a receipt batch that runs while the message's insert is uncommitted
    finds no message and holds the receipt, while the insert, not yet seeing the held receipt, finds
    nothing to apply: the receipt would stay held forever. Taken before any message row is locked.
    """
    await lock_names(conn, (f"message-id:{tenant_id}:{kind}:{external_id}" for kind, external_id in ids))


_HELD_RECEIPTS = uuid.UUID("5f0c3c2e-6a43-4d8e-9a55-0b8a3e4f7c21")


def held_receipt_id(kind: str, external_id: str, receipt: Receipt) -> uuid.UUID:
    """The same receipt always gets the same ID, so holding it twice keeps one row."""
    failure = receipt.failure
    content: list[str | None] = [kind, external_id, receipt.status.value, receipt.at.isoformat()]
    if failure is not None:
        content += [failure.code, failure.title, failure.details]
    return uuid.uuid5(_HELD_RECEIPTS, orjson.dumps(content).decode())


def _receipt(item: ReceiptIn) -> Receipt:
    failure = None
    if item.status is ReceiptStatus.FAILED:
        error = item.error
        failure = Failure(error.code, error.title, error.details) if error else Failure()
    return Receipt(item.status, item.at, failure)


async def apply_receipts(
    conn: AsyncConnection, tenant_id: str, items: Sequence[ReceiptIn]
) -> list[ReceiptResult]:
    """Merges a batch of receipts; unknown messages' receipts are held until the message appears.

    The named messages are locked first (in ID order), so concurrent batches serialise per message and
    the merge, which is order-independent, sees every receipt exactly once.
    """
    keyed = [("wamid", item.wamid) if item.wamid else ("genesys", item.genesys_message_id) for item in items]
    await _lock_external_ids(
        conn, tenant_id, [(kind, external_id) for kind, external_id in keyed if external_id]
    )
    by_key: dict[tuple[str, str], RowMapping] = {}
    wanted = {kind: sorted({value for k, value in keyed if k == kind and value}) for kind in ID_KINDS}
    for locked in await repo.lock_for_receipts(conn, tenant_id, wanted["wamid"], wanted["genesys"]):
        for kind, field in _ID_FIELDS:
            if locked[field] is not None:
                by_key[(kind, locked[field])] = locked
    times: dict[uuid.UUID, StatusTimes] = {}
    rows: dict[uuid.UUID, RowMapping] = {}
    results: list[ReceiptResult] = []
    held: list[dict[str, Any]] = []
    now = utcnow()
    for item, (kind, external_id) in zip(items, keyed, strict=True):
        assert external_id is not None
        receipt = _receipt(item)
        row = by_key.get((kind, external_id))
        if row is None:
            failure = receipt.failure or Failure()
            held.append(
                {
                    "id": held_receipt_id(kind, external_id, receipt),
                    "id_kind": kind,
                    "external_id": external_id,
                    "status": item.status.value,
                    "occurred_at": item.at,
                    "failure_code": failure.code,
                    "failure_title": failure.title,
                    "failure_details": failure.details,
                    "received_at": now,
                }
            )
            results.append(ReceiptResult(outcome=ReceiptOutcome.HELD))
            continue
        message_id = row["id"]
        rows[message_id] = row
        before = times.get(message_id) or _times(row)
        after = merge(before, receipt)
        times[message_id] = after
        results.append(
            ReceiptResult(
                outcome=ReceiptOutcome.APPLIED if after != before else ReceiptOutcome.UNCHANGED,
                message_id=message_id,
                status=derive(after, Direction(row["direction"])),
            )
        )
    changes = [
        {"id": message_id, "conversation_id": rows[message_id]["conversation_id"], **_time_values(after)}
        for message_id, after in times.items()
        if after != _times(rows[message_id])
    ]
    await repo.write_times(conn, tenant_id, changes, now)
    await repo.hold_receipts(conn, tenant_id, held)
    if changes:
        customer_of = await conversations_repo.customers_of(
            conn, tenant_id, [change["conversation_id"] for change in changes]
        )
        for change in changes:
            row = rows[change["id"]]
            _emit_status_change(
                conn, tenant_id, row, customer_of.get(row["conversation_id"]), _times(row), times[row["id"]]
            )
    # Every result for a message reports the status after the whole batch.
    final = {
        message_id: derive(t, Direction(rows[message_id]["direction"])) for message_id, t in times.items()
    }
    return [
        r if r.message_id is None else r.model_copy(update={"status": final[r.message_id]}) for r in results
    ]


async def correlate(conn: AsyncConnection, tenant_id: str, data: Correlation) -> ConversationRead:
    """Links the Genesys conversation (and communication) to the conversation of a WhatsApp message.

    Any message of the conversation will do, not only its latest: the Genesys side answers late, and by
    then the customer may have written again. A closed or expired conversation is not linked: its
    successor is the one Genesys should hear about. Linking what is already linked changes nothing.
    """
    message = await repo.by_external_id(conn, tenant_id, "wamid", data.whatsapp_message_id)
    if message is None:
        raise NotFound(f"no message with wamid {data.whatsapp_message_id}")
    conversation = await conversations.require(conn, tenant_id, message["conversation_id"])
    if ConversationState(conversation["state"]) in FINAL_STATES:
        raise Conflict(
            f"the message's conversation is {conversation['state']}; it cannot be linked any more",
            extra={"conversation_id": str(conversation["id"]), "state": conversation["state"]},
        )
    update = ConversationUpdate(
        genesys_conversation_id=data.genesys_conversation_id,
        genesys_communication_id=data.genesys_communication_id,
    )
    return await conversations.update(conn, tenant_id, conversation["id"], update, None)
