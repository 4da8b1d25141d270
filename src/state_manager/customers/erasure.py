"""Erasing a customer (the right to be forgotten), in one transaction.

Gone: the profile's content, the identities (so the number no longer leads to the customer, and its next
message starts a new customer), message content and Meta's message IDs, context, conversation metadata,
the personal data in the payloads of events about the customer (and in the webhook delivery log's copies
of them), the raw WhatsApp webhooks that carried its identities, and published queue output that did.

Kept, for anonymous counts: the customer row (empty, `erased_at` set), its conversations (open ones are
closed, "customer erased", through the lifecycle) and their state history, its messages (direction, type,
times, statuses) and its events (type, IDs, times). docs/data-rights.md says why and what it costs.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from sqlalchemy import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.audit import service as audit
from state_manager.cache.invalidation import changed, conversations_tag, ended_tag, thread_tag
from state_manager.conversations import repository as conversations_repo
from state_manager.conversations import service as conversations
from state_manager.conversations.lifecycle import OPEN_STATES, ConversationState
from state_manager.conversations.schemas import TransitionRequest
from state_manager.customers import repository as repo
from state_manager.customers import rights_repository as rights_repo
from state_manager.customers import service as customers
from state_manager.customers.identity import IdentityChannel
from state_manager.customers.schemas import ErasureCounts, ErasureRead
from state_manager.db.types import utcnow
from state_manager.errors import NotFound
from state_manager.events.emit import emit
from state_manager.events.schemas import Published
from state_manager.events.types import EventType
from state_manager.messages import repository as messages_repo
from state_manager.messages.redaction import redact_messages

ERASED_REASON = "customer erased"
EMPTY_PROFILE: dict[str, Any] = {
    "display_name": None,
    "language": None,
    "preferences": {},
    "consent": {},
    "attributes": {},
}
ACTION = "customer.erased"
PAGE = 500
# Messages are redacted this many at a time (one statement each for the messages and their
# message.recorded events, found by index): well below both backends' bind-parameter limits.
REDACT_BATCH = 5000
# Raw webhooks are searched from this long before the customer's earliest trace (its creation, its
# identities, its conversations): a body is stored before it is processed, and one whose processing
# failed is kept while Meta retries it, which it does for up to seven days.
RAW_BODY_LEAD = dt.timedelta(days=7)
# Channels whose IDs appear in WhatsApp webhook bodies (and in the queue output made from them).
_WEBHOOK_CHANNELS = {IdentityChannel.WHATSAPP, IdentityChannel.WHATSAPP_BSUID, IdentityChannel.PHONE}
# Events whose payloads can hold personal data; `cleared_payload` says what each loses.
PERSONAL_EVENT_TYPES = (
    EventType.CUSTOMER_CREATED.value,
    EventType.CUSTOMER_UPDATED.value,
    EventType.CUSTOMER_IDENTITY_ADDED.value,
    EventType.MESSAGE_RECORDED.value,
    EventType.MESSAGE_LINKED.value,
    EventType.CONTEXT_CHANGED.value,
    EventType.CONVERSATION_UPDATED.value,
)


def cleared_payload(type: str, payload: dict[str, Any]) -> dict[str, Any] | None:
    """The payload without personal data, with the same keys (consumers keep their shape); None when it
    holds none."""
    cleared = dict(payload)
    match type:
        case EventType.CUSTOMER_CREATED:
            cleared["display_name"] = None
        case EventType.CUSTOMER_UPDATED if isinstance(payload.get("fields"), dict):
            cleared["fields"] = dict.fromkeys(payload["fields"])
        case EventType.CUSTOMER_IDENTITY_ADDED:
            cleared["external_id"] = None
        case EventType.MESSAGE_RECORDED:
            cleared["text"] = None
            cleared["wamid"] = None
        case EventType.MESSAGE_LINKED:
            cleared["wamid"] = None
        case EventType.CONTEXT_CHANGED if isinstance(payload.get("values"), dict):
            cleared["values"] = dict.fromkeys(payload["values"])
        case EventType.CONVERSATION_UPDATED if isinstance(payload.get("fields"), dict):
            if "metadata" in payload["fields"]:
                cleared["fields"] = {**payload["fields"], "metadata": {}}
    return None if cleared == payload else cleared


def webhook_needles(identities: Iterable[RowMapping]) -> list[str]:
    """The identities as they stand in a webhook's JSON: quoted, so that a number inside a longer one (or
    inside a timestamp) does not match."""
    values: set[str] = set()
    for identity in identities:
        if identity["channel"] in _WEBHOOK_CHANNELS:
            values.add(identity["external_id"])
            if identity["channel"] == IdentityChannel.PHONE:
                values.add(identity["external_id"].removeprefix("+"))  # a wa_id is the number's digits
    return sorted(f'"{value}"' for value in values)


def _holds(text: str, needles: Sequence[str]) -> bool:
    return any(needle in text for needle in needles)


def without_items_holding(body: str, needles: Sequence[str]) -> tuple[str, int] | None:
    """A Meta webhook body without its messages, statuses and contacts that hold one of the needles, and
    the number of messages and statuses left; None when none are left, when anything else in it still
    holds a needle, or when it is not a body this can take apart (a queue message): it is then deleted."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    entries = document.get("entry") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        return None
    items = 0
    for entry in entries:
        changes = entry.get("changes") if isinstance(entry, dict) else None
        for change in changes if isinstance(changes, list) else ():
            value = change.get("value") if isinstance(change, dict) else None
            if not isinstance(value, dict):
                continue
            for field in ("messages", "statuses", "contacts"):
                listed = value.get(field)
                if isinstance(listed, list):
                    value[field] = [
                        item for item in listed if not _holds(orjson.dumps(item).decode(), needles)
                    ]
                    if field != "contacts":
                        items += len(value[field])
    text = orjson.dumps(document).decode()
    if items == 0 or _holds(text, needles):
        return None
    return text, items


async def erase(
    conn: AsyncConnection, tenant_id: str, customer_id: uuid.UUID, *, actor: str, reason: str | None
) -> ErasureRead:
    """Erases the customer in the caller's transaction (whose `publishing_changes` drops every cached
    lookup of it once it commits).

    Erasing an erased customer sweeps again and changes nothing when nothing is left, recording nothing
    either. Something can be left only if it came back: a backup from before the erasure, restored
    without replacing rows, brings back identities, context and raw webhooks that the first erasure
    removed (docs/data-rights.md); this sweep removes them, and is audited and announced like the first."""
    row = await repo.get(conn, tenant_id, customer_id, for_update=True)
    if row is None:
        raise NotFound(f"customer {customer_id} not found")
    already_erased = row["erased_at"] is not None
    now = utcnow()
    people = await rights_repo.person_ids(conn, tenant_id, customer_id)
    identities = await repo.identities_of(conn, tenant_id, customer_id)
    owned = await rights_repo.conversations_of(conn, tenant_id, customer_id)
    conversation_ids = [conversation["id"] for conversation in owned]
    changed(
        tenant_id,
        conversations_tag(customer_id),
        *(tag for id_ in conversation_ids for tag in (thread_tag(id_), ended_tag(id_))),
    )

    closed = 0
    for conversation in owned:
        if ConversationState(conversation["state"]) in OPEN_STATES:
            request = TransitionRequest(state=ConversationState.CLOSED, reason=ERASED_REASON)
            await conversations.transition(conn, tenant_id, conversation["id"], request, None)
            closed += 1
    await _clear_conversation_metadata(conn, tenant_id, conversation_ids, now)
    await rights_repo.clear_customer_participants(conn, tenant_id, conversation_ids)

    redacted, wamids = await _redact_messages(conn, tenant_id, conversation_ids, now)
    held_receipts = await rights_repo.delete_held_receipts(conn, tenant_id, wamids)
    await rights_repo.clear_message_identities(conn, tenant_id, conversation_ids)
    context_deleted = await rights_repo.delete_context(
        conn, tenant_id, "customer", [customer_id]
    ) + await rights_repo.delete_context(conn, tenant_id, "conversation", conversation_ids)

    needles = webhook_needles(identities)
    earliest = min(
        [row["created_at"]]
        + [identity["created_at"] for identity in identities]
        + [conversation["started_at"] for conversation in owned]
    )
    bodies_redacted, bodies_deleted = await _clear_webhook_bodies(
        conn, tenant_id, needles, since=earliest - RAW_BODY_LEAD
    )
    outputs = await rights_repo.clear_published_outputs(conn, tenant_id, needles) if needles else 0
    identities_deleted = await repo.delete_identities(conn, tenant_id, customer_id)
    # Again on an erased customer: only fields that came back (a name set by a message that raced the
    # first erasure), and `erased_at` stays the time of the first.
    profile_cleared = sum(1 for field, empty in EMPTY_PROFILE.items() if row[field] != empty)
    if not already_erased or profile_cleared:
        values = EMPTY_PROFILE if already_erased else {**EMPTY_PROFILE, "erased_at": now}
        await repo.update_versioned(conn, tenant_id, customer_id, values, expected_version=None, at=now)
    events_cleared = await _clear_events(conn, tenant_id, people)
    deliveries = await _clear_deliveries(conn, tenant_id, people, conversation_ids)

    counts = ErasureCounts(
        profile_fields_cleared=profile_cleared,
        identities_deleted=identities_deleted,
        conversations=len(owned),
        conversations_closed=closed,
        messages_redacted=redacted,
        context_entries_deleted=context_deleted,
        events_cleared=events_cleared,
        webhook_bodies_redacted=bodies_redacted,
        webhook_bodies_deleted=bodies_deleted,
        webhook_deliveries_cleared=deliveries,
        held_receipts_deleted=held_receipts,
        queue_outputs_cleared=outputs,
    )
    if already_erased and not counts.removed_anything():
        return ErasureRead(
            customer=await customers.read(conn, tenant_id, customer_id), already_erased=True, counts=None
        )
    audit_id = await audit.record(
        conn,
        tenant_id,
        actor=actor,
        action=ACTION,
        subject_type="customer",
        subject_id=str(customer_id),
        details={"reason": reason, "counts": counts.model_dump()},
    )
    emit(
        conn,
        tenant_id,
        EventType.CUSTOMER_ERASED,
        {"counts": counts.model_dump(), "audit_id": str(audit_id)},
        customer_id=customer_id,
    )
    return ErasureRead(
        customer=await customers.read(conn, tenant_id, customer_id),
        already_erased=already_erased,
        counts=counts,
    )


async def _clear_conversation_metadata(
    conn: AsyncConnection, tenant_id: str, conversation_ids: Sequence[uuid.UUID], now: dt.datetime
) -> None:
    """Metadata is free-form (wrap-up notes, whatever callers put there): emptied, announced as usual."""
    for conversation_id in conversation_ids:
        row = await conversations.require(conn, tenant_id, conversation_id, for_update=True)
        if not row["metadata"]:
            continue
        updated = await conversations_repo.update_versioned(
            conn, tenant_id, conversation_id, {"metadata": {}}, expected_version=row["version"], at=now
        )
        assert updated is not None  # locked above
        emit(
            conn,
            tenant_id,
            EventType.CONVERSATION_UPDATED,
            {"fields": {"metadata": {}}, "version": updated["version"]},
            conversation_id=conversation_id,
            customer_id=updated["customer_id"],
        )


async def _redact_messages(
    conn: AsyncConnection, tenant_id: str, conversation_ids: Sequence[uuid.UUID], now: dt.datetime
) -> tuple[int, list[str]]:
    """Clears the content of every message of these conversations, a page at a time; returns how many it
    cleared and the messages' wamids."""
    redacted = 0
    wamids: list[str] = []
    for conversation_id in conversation_ids:
        after: tuple[dt.datetime, uuid.UUID] | None = None
        while True:
            page = await messages_repo.list_page(
                conn, tenant_id, conversation_id, after=after, newest_first=False, limit=REDACT_BATCH
            )
            wamids += [message["wamid"] for message in page if message["wamid"] is not None]
            redacted += await redact_messages(conn, tenant_id, [message["id"] for message in page], at=now)
            if len(page) < REDACT_BATCH:
                break
            after = (page[-1]["occurred_at"], page[-1]["id"])
    return redacted, wamids


async def _clear_webhook_bodies(
    conn: AsyncConnection, tenant_id: str, needles: Sequence[str], *, since: dt.datetime
) -> tuple[int, int]:
    """Raw webhooks that carry one of the needles: rewritten without the customer's items when they hold
    other customers' too, deleted otherwise. Returns (rewritten, deleted)."""
    rewritten = deleted = 0
    after: tuple[dt.datetime, uuid.UUID] | None = None
    while needles:
        page = await rights_repo.webhook_bodies_mentioning(
            conn, tenant_id, needles, received_since=since, after=after, limit=PAGE
        )
        for body in page:
            kept = without_items_holding(body["body"], needles)
            if kept is None:
                await rights_repo.delete_webhook_body(conn, tenant_id, body["id"])
                deleted += 1
            else:
                await rights_repo.replace_webhook_body(conn, tenant_id, body["id"], *kept)
                rewritten += 1
        if len(page) < PAGE:
            break
        after = (page[-1]["received_at"], page[-1]["id"])
    return rewritten, deleted


async def _clear_events(conn: AsyncConnection, tenant_id: str, people: Sequence[uuid.UUID]) -> int:
    cleared = 0
    after_id = 0
    while True:
        page = await rights_repo.events_about(
            conn, tenant_id, people, after_id=after_id, limit=PAGE, types=PERSONAL_EVENT_TYPES
        )
        payloads = [
            (event["id"], new)
            for event in page
            if (new := cleared_payload(event["type"], event["payload"])) is not None
        ]
        await rights_repo.set_event_payloads(conn, tenant_id, payloads)
        cleared += len(payloads)
        if len(page) < PAGE:
            return cleared
        after_id = page[-1]["id"]


async def _clear_deliveries(
    conn: AsyncConnection, tenant_id: str, people: Sequence[uuid.UUID], conversation_ids: Sequence[uuid.UUID]
) -> int:
    """Deliveries hold the event as sent: made again from the cleared event."""
    keys = [f"customer:{id_}" for id_ in people] + [f"conversation:{id_}" for id_ in conversation_ids]
    deliveries = await rights_repo.deliveries_of(conn, tenant_id, keys)
    bodies: list[tuple[uuid.UUID, str]] = []
    for part in rights_repo.chunks(deliveries):
        events = await rights_repo.events_by_seq(conn, tenant_id, sorted({seq for _, seq, _ in part}))
        for delivery_id, seq, body in part:
            event = events.get(seq)
            new = None if event is None else Published.from_row(event).json.decode()
            if new is not None and new != body:
                bodies.append((delivery_id, new))
    await rights_repo.set_delivery_bodies(conn, tenant_id, bodies)
    return len(bodies)
