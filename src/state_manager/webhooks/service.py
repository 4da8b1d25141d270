"""Accepting a WhatsApp webhook: keep the raw body, record every message once, apply every status.

Each step is idempotent (a message is recorded once by its wamid; statuses merge as a lattice), so a webhook
Meta delivers twice, or one replayed from its stored body, changes nothing the second time. Messages are
recorded in the order they came, one after the other, so that one customer's messages keep their order.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.cache import LookupCache
from state_manager.customers import service as customers
from state_manager.customers.identity import IdentityChannel
from state_manager.customers.schemas import IdentityIn
from state_manager.db import Database
from state_manager.db.types import utcnow
from state_manager.errors import Forbidden, NotFound, ValidationFailed
from state_manager.messages import media_urls
from state_manager.messages import service as messages
from state_manager.messages.inbound import InboundRecorder
from state_manager.messages.schemas import (
    InboundMessage,
    Media,
    MessageType,
    ReceiptError,
    ReceiptIn,
)
from state_manager.messages.status import ReceiptStatus
from state_manager.strict_json import parse_body
from state_manager.webhooks.models import webhook_events
from state_manager.webhooks.schemas import (
    MAX_ITEMS,
    ItemKind,
    ItemOutcome,
    ItemResult,
    QueuedInboundMessage,
    WaMessage,
    WaStatus,
    WebhookAccepted,
    WhatsAppWebhook,
)

_MEDIA_TYPES = {"image", "audio", "video", "document", "sticker"}
_RECEIPT_STATUSES = {status.value for status in ReceiptStatus}
# Fields of a WhatsApp message that the message row holds itself; the rest is kept in its metadata.
_HELD_IN_COLUMNS = {"from", "id", "timestamp", "type", "text"}


@dataclass(frozen=True, slots=True)
class _Status:
    wamid: str
    status: str
    receipt: ReceiptIn | None  # None: a status this service does not track


def _message_text(message: WaMessage, extra: dict[str, Any]) -> str | None:
    kind = message.type
    part = extra.get(kind)
    if kind == "text" and isinstance(part, dict):
        return _text(part.get("body"))
    if kind == "button" and isinstance(part, dict):
        return _text(part.get("text"))
    if kind == "interactive" and isinstance(part, dict):
        for reply in ("button_reply", "list_reply", "nfm_reply"):
            chosen = part.get(reply)
            if isinstance(chosen, dict):
                return _text(chosen.get("title") or chosen.get("body"))
    if kind == "reaction" and isinstance(part, dict):
        return _text(part.get("emoji"))
    if kind == "location" and isinstance(part, dict):
        return _text(part.get("name") or part.get("address"))
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _media(message: WaMessage, extra: dict[str, Any]) -> Media | None:
    part = extra.get(message.type)
    if message.type not in _MEDIA_TYPES or not isinstance(part, dict):
        return None
    fields = {name: _text(part.get(name)) for name in ("url", "mime_type", "filename", "caption")}
    try:
        return Media(**fields)
    except ValidationError:
        # A field Meta sent in a shape we do not expect is left out (it stays in the metadata) rather
        # than refusing the whole webhook, which Meta would retry for seven days.
        kept = {}
        for name, value in fields.items():
            try:
                Media(**{name: value})
            except ValidationError:
                continue
            kept[name] = value
        return Media(**kept)


def _inbound_messages(webhook: WhatsAppWebhook) -> Iterator[tuple[int, InboundMessage]]:
    position = 0
    for entry in webhook.entry:
        for change in entry.changes:
            value = change.value
            names = {c.wa_id: c.profile.name if c.profile else None for c in value.contacts}
            for message in value.messages:
                extra = message.model_dump(by_alias=True, exclude_none=True)
                kept = {k: v for k, v in extra.items() if k not in _HELD_IN_COLUMNS}
                known = message.type in {t.value for t in MessageType}
                yield (
                    position,
                    InboundMessage(
                        wa_id=message.from_,
                        profile_name=names.get(message.from_),
                        business_number_id=value.metadata.phone_number_id,
                        business_display_number=value.metadata.display_phone_number,
                        wamid=message.id,
                        type=MessageType(message.type) if known else MessageType.UNKNOWN,
                        text=_message_text(message, extra),
                        media=_media(message, extra),
                        occurred_at=message.timestamp,
                        metadata={"whatsapp": kept} if kept else {},
                    ),
                )
                position += 1
            position += len(value.statuses)


def _statuses(webhook: WhatsAppWebhook) -> Iterator[tuple[int, _Status]]:
    position = 0
    for entry in webhook.entry:
        for change in entry.changes:
            position += len(change.value.messages)
            for status in change.value.statuses:
                yield position, _Status(status.id, status.status, receipt_of(status))
                position += 1


def receipt_of(status: WaStatus) -> ReceiptIn | None:
    if status.status not in _RECEIPT_STATUSES:
        return None
    error = None
    if status.status == ReceiptStatus.FAILED.value and status.errors:
        first = status.errors[0]
        details = (first.error_data or {}).get("details")
        details = details if isinstance(details, str) else first.message
        error = ReceiptError(
            code=None if first.code is None else str(first.code)[:64],
            title=first.title[:512] if first.title else None,
            details=details[:4096] if details else None,
        )
    return ReceiptIn(wamid=status.id, status=ReceiptStatus(status.status), at=status.timestamp, error=error)


def queued_message(queued: QueuedInboundMessage) -> InboundMessage:
    name = queued.contact_name
    return InboundMessage(
        wa_id=queued.wa_id,
        # The producer writes "Unknown" when WhatsApp gave no name: that is no name, not a name.
        profile_name=None if name in (None, "", "Unknown") else name,
        business_number_id=queued.phone_number_id,
        business_display_number=queued.display_phone_number,
        wamid=queued.wamid,
        type=MessageType.TEXT if queued.media_url is None else MessageType.UNKNOWN,
        text=queued.message_text,
        media=None if queued.media_url is None else Media(url=queued.media_url),
        occurred_at=queued.timestamp,
    )


@dataclass(frozen=True, slots=True)
class Plan:
    """A webhook's items, checked: processing it cannot fail on bad input half-way."""

    messages: list[tuple[int, InboundMessage]]
    statuses: list[tuple[int, _Status]]

    @property
    def items(self) -> int:
        return len(self.messages) + len(self.statuses)


def plan(parsed: WhatsAppWebhook | QueuedInboundMessage) -> Plan:
    if not isinstance(parsed, QueuedInboundMessage):
        count = sum(len(c.value.messages) + len(c.value.statuses) for e in parsed.entry for c in e.changes)
        if count > MAX_ITEMS:
            raise ValidationFailed(
                f"a webhook carries at most {MAX_ITEMS} messages and statuses, not {count}"
            )
    try:
        if isinstance(parsed, QueuedInboundMessage):
            found = Plan([(0, queued_message(parsed))], [])
        else:
            found = Plan(list(_inbound_messages(parsed)), list(_statuses(parsed)))
        for position, message in found.messages:
            # Refused before anything is stored: a webhook is recorded whole or not at all.
            field = "media_url" if isinstance(parsed, QueuedInboundMessage) else f"items.{position}.media.url"
            media_urls.check_media(message.media, field)
            customers.normalized(
                IdentityIn(channel=IdentityChannel.WHATSAPP, external_id=message.wa_id),
                f"item {position}: from",
            )
    except ValidationError as exc:
        raise ValidationFailed(f"the webhook holds an item this service cannot record: {exc}") from exc
    return found


async def accept_whatsapp(
    db: Database,
    cache: LookupCache,
    inbound: InboundRecorder,
    tenant_id: str,
    raw: bytes,
    parsed: WhatsAppWebhook | QueuedInboundMessage,
) -> WebhookAccepted:
    if isinstance(parsed, QueuedInboundMessage) and parsed.tenant_id not in (None, tenant_id):
        raise Forbidden("the body's tenantId is not the tenant this request acts for")
    checked = plan(parsed)
    event_id = uuid.uuid4()
    async with db.transaction(tenant_id, write=True) as conn:
        await _store(conn, tenant_id, event_id, raw, checked.items)
    results = await process(db, cache, inbound, tenant_id, checked)
    return WebhookAccepted(event_id=event_id, items=results)


async def process(
    db: Database,
    cache: LookupCache,
    inbound: InboundRecorder,
    tenant_id: str,
    checked: Plan,
) -> list[ItemResult]:
    """Records the messages, then applies the statuses (a status naming a message of the same webhook
    then finds it); the results come back in the webhook's own order."""
    statuses = checked.statuses
    results: dict[int, ItemResult] = {}
    for position, message in checked.messages:
        recorded = await inbound.record(tenant_id, message)
        results[position] = ItemResult(
            kind=ItemKind.MESSAGE,
            wamid=message.wamid,
            outcome=ItemOutcome.DUPLICATE if recorded.duplicate else ItemOutcome.CREATED,
            message_id=recorded.message_id,
            customer_id=recorded.customer_id,
            customer_created=recorded.customer_created,
            conversation_id=recorded.conversation_id,
            conversation_created=recorded.conversation_created,
            conversation_state=recorded.conversation_state,
            genesys_conversation_id=recorded.genesys_conversation_id,
            needs_genesys_conversation=recorded.genesys_conversation_id is None,
        )
    tracked = [(position, status) for position, status in statuses if status.receipt is not None]
    for position, status in statuses:
        if status.receipt is None:
            results[position] = ItemResult(
                kind=ItemKind.STATUS, wamid=status.wamid, status=status.status, outcome=ItemOutcome.IGNORED
            )
    if tracked:
        receipts = [status.receipt for _, status in tracked if status.receipt is not None]
        async with cache.publishing_changes(), db.transaction(tenant_id, write=True) as conn:
            applied = await messages.apply_receipts(conn, tenant_id, receipts)
        for (position, status), outcome in zip(tracked, applied, strict=True):
            results[position] = ItemResult(
                kind=ItemKind.STATUS,
                wamid=status.wamid,
                status=status.status,
                outcome=ItemOutcome(outcome.outcome.value),
                message_id=outcome.message_id,
                message_status=outcome.status,
            )
    return [results[position] for position in sorted(results)]


async def _store(conn: AsyncConnection, tenant_id: str, event_id: uuid.UUID, raw: bytes, items: int) -> None:
    await conn.execute(
        insert(webhook_events).values(
            tenant_id=tenant_id,
            id=event_id,
            source="whatsapp",
            received_at=utcnow(),
            items=items,
            body=raw.decode(),
        )
    )


_WEBHOOK = TypeAdapter(WhatsAppWebhook | QueuedInboundMessage)


@dataclass(frozen=True, slots=True)
class Replayed:
    event_id: uuid.UUID
    received_at: dt.datetime
    outcomes: dict[str, int]


async def replay(
    db: Database,
    cache: LookupCache,
    inbound: InboundRecorder,
    tenant_id: str,
    *,
    event_ids: Sequence[uuid.UUID] = (),
    since: dt.datetime | None = None,
) -> list[Replayed]:
    """Processes stored webhooks again, oldest first. Only what was missed changes: messages are recorded
    once, and statuses merge."""
    e = webhook_events.c
    query = select(e.id, e.received_at, e.body).where(e.tenant_id == tenant_id)
    if event_ids:
        query = query.where(e.id.in_(event_ids))
    if since is not None:
        query = query.where(e.received_at >= since)
    async with db.transaction(tenant_id, write=False) as conn:
        rows = (await conn.execute(query.order_by(e.received_at, e.id))).all()
    missing = set(event_ids) - {row.id for row in rows}
    if missing:
        raise NotFound(
            f"no stored webhook {', '.join(sorted(str(m) for m in missing))} for tenant {tenant_id}"
        )
    replayed = []
    for row in rows:
        parsed = _WEBHOOK.validate_python(parse_body(str(row.body).encode()))
        results = await process(db, cache, inbound, tenant_id, plan(parsed))
        replayed.append(Replayed(row.id, row.received_at, dict(Counter(r.outcome.value for r in results))))
    return replayed
