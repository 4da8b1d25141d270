"""What each consumed queue message does: the same domain services as the HTTP routes, with the output
written to the outbox in the same transaction.

A handler either commits everything (state and output) or nothing. It raises `Rejected` for a message that
can never succeed (it goes to the DLQ at once); any other exception is a passing failure, retried.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.conversations import service as conversations
from state_manager.conversations.lifecycle import ConversationState
from state_manager.db.types import utcnow
from state_manager.errors import Conflict, LockTimeout, NotFound, StateManagerError, Unavailable
from state_manager.messages import outbound
from state_manager.messages import repository as messages_repo
from state_manager.messages import service as messages
from state_manager.messages.inbound import InboundRecorder
from state_manager.messages.media_urls import InvalidMediaUrl
from state_manager.messages.outbound import QueuedOutboundMessage
from state_manager.messages.schemas import Correlation, ReceiptIn
from state_manager.messages.status import ReceiptStatus
from state_manager.queues import outbox
from state_manager.queues.schemas import (
    CorrelationEvent,
    DlqReason,
    GenesysStatusUpdate,
    WhatsAppStatusUpdate,
)
from state_manager.queues.topology import Consumed, Output
from state_manager.webhooks.schemas import QueuedInboundMessage, WaStatus
from state_manager.webhooks.service import queued_message, receipt_of

_TRACKED = {status.value for status in ReceiptStatus}
_Model = TypeVar("_Model", bound=BaseModel)


class Rejected(Exception):
    """A message that can never succeed: it goes to the DLQ with this reason, without retries."""

    def __init__(self, reason: DlqReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def classify(exc: BaseException) -> tuple[DlqReason, bool]:
    """The DLQ reason for a failure, and whether trying again may succeed."""
    if isinstance(exc, Rejected):
        return exc.reason, False
    if isinstance(exc, InvalidMediaUrl):
        return DlqReason.INVALID_MEDIA_URL, False
    if isinstance(exc, LockTimeout):
        return DlqReason.LOCK_TIMEOUT, True
    if isinstance(exc, Unavailable):
        return DlqReason.DATABASE_ERROR, True
    if isinstance(exc, NotFound):
        return DlqReason.MAPPING_NOT_FOUND, False
    if isinstance(exc, Conflict):
        state = exc.extra.get("state")
        if state == ConversationState.CLOSED.value:
            return DlqReason.MAPPING_STATUS_CLOSED, False
        if state == ConversationState.EXPIRED.value:
            return DlqReason.MAPPING_STATUS_EXPIRED, False
        return DlqReason.STATE_VIOLATION, False
    if isinstance(exc, StateManagerError) and 400 <= exc.status < 500:
        return DlqReason.INVALID_PAYLOAD, False
    return DlqReason.INTERNAL_ERROR, True


Transaction = Callable[[str], AbstractAsyncContextManager[AsyncConnection]]


@dataclass(frozen=True, slots=True)
class Work:
    """What handlers work with: a write transaction for a tenant, and the inbound recorder."""

    write: Transaction
    inbound: InboundRecorder


@dataclass(frozen=True, slots=True)
class Delivery:
    """One consumed message: its tenant, its parsed body and the hash of its bytes."""

    tenant_id: str
    document: dict[str, Any]
    digest: str


def digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _parse(model: type[_Model], document: dict[str, Any]) -> _Model:
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise Rejected(DlqReason.INVALID_PAYLOAD, _first_error(exc)) from exc


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


async def inbound(work: Work, delivery: Delivery) -> None:
    queued = _parse(QueuedInboundMessage, delivery.document)
    message = queued_message(queued)
    async with work.write(delivery.tenant_id) as conn:
        recorded = await work.inbound.record_in(conn, delivery.tenant_id, message)
        if recorded.duplicate:
            return  # announced when it was recorded (the outbox row of that first time)
        enriched = delivery.document | {
            "mapping_id": str(recorded.conversation_id),
            "conversation_id": recorded.genesys_conversation_id,
            "is_new_conversation": recorded.conversation_created,
        }
        await outbox.add(conn, delivery.tenant_id, Output.INBOUND_ENRICHED, enriched, input_key=queued.wamid)


async def status(work: Work, delivery: Delivery) -> None:
    update = _parse(WhatsAppStatusUpdate, delivery.document)
    try:
        as_webhook = WaStatus(
            id=update.wamid,
            status=update.status,
            timestamp=update.timestamp,
            recipient_id=update.recipientId,
            errors=update.errors,
        )
    except ValidationError as exc:
        raise Rejected(DlqReason.INVALID_PAYLOAD, _first_error(exc)) from exc
    receipt = receipt_of(as_webhook)
    if receipt is None:
        return  # a status this service does not track (e.g. `deleted`)
    async with work.write(delivery.tenant_id) as conn:
        await messages.apply_receipts(conn, delivery.tenant_id, [receipt])


async def outbound_message(work: Work, delivery: Delivery) -> None:
    body = _parse(QueuedOutboundMessage, delivery.document)
    async with work.write(delivery.tenant_id) as conn:
        try:
            recorded = await outbound.record_outbound(conn, delivery.tenant_id, body)
        except Conflict as exc:
            raise Rejected(DlqReason.MAPPING_NOT_FOUND, exc.detail) from exc
        if recorded.duplicate:
            return
        payload: dict[str, Any] = {}
        if body.payload.text is not None:
            payload["text"] = body.payload.text
        if body.payload.media is not None:
            media = body.payload.media
            payload["media"] = {"url": media.url, "mime_type": media.contentType} | (
                {"filename": media.filename} if media.filename else {}
            )
        processed = {
            "internalId": str(recorded.message_id),
            "tenantId": delivery.tenant_id,
            # The Genesys conversation, as every caller names it; ours until Genesys correlated it.
            "conversationId": recorded.genesys_conversation_id or str(recorded.conversation_id),
            "genesysId": body.genesysId,
            "waId": recorded.wa_id,
            "phoneNumberId": recorded.business_number_id,
            "timestamp": int((body.timestamp or utcnow()).timestamp()),
            "type": "message",
            "payload": payload,
        }
        await outbox.add(
            conn, delivery.tenant_id, Output.OUTBOUND_PROCESSED, processed, input_key=body.genesysId
        )


async def genesys_status(work: Work, delivery: Delivery) -> None:
    update = _parse(GenesysStatusUpdate, delivery.document)
    kind = update.status.lower()
    async with work.write(delivery.tenant_id) as conn:
        genesys_conversation_id = None
        if update.originalMessageId is not None:
            if kind in _TRACKED:
                receipt = ReceiptIn(
                    genesys_message_id=update.originalMessageId,
                    status=ReceiptStatus(kind),
                    at=update.timestamp,
                )
                await messages.apply_receipts(conn, delivery.tenant_id, [receipt])
            genesys_conversation_id = await _genesys_conversation_of(
                conn, delivery.tenant_id, update.originalMessageId
            )
        processed = delivery.document | {"conversation_id": genesys_conversation_id}
        await outbox.add(
            conn,
            delivery.tenant_id,
            Output.GENESYS_STATUS_PROCESSED,
            processed,
            input_key=delivery.digest,
        )


async def _genesys_conversation_of(
    conn: AsyncConnection, tenant_id: str, genesys_message_id: str
) -> str | None:
    message = await messages_repo.by_external_id(conn, tenant_id, "genesys", genesys_message_id)
    if message is None:
        return None
    conversation = await conversations.read(conn, tenant_id, message["conversation_id"])
    return conversation.genesys_conversation_id


async def correlation(work: Work, delivery: Delivery) -> None:
    event = _parse(CorrelationEvent, delivery.document)
    link = Correlation(
        whatsapp_message_id=event.whatsapp_message_id,
        genesys_conversation_id=event.conversation_id,
        genesys_communication_id=event.communication_id,
    )
    async with work.write(delivery.tenant_id) as conn:
        await messages.correlate(conn, delivery.tenant_id, link)


Handler = Callable[[Work, Delivery], Awaitable[None]]

HANDLERS: dict[Consumed, Handler] = {
    Consumed.INBOUND: inbound,
    Consumed.STATUS: status,
    Consumed.OUTBOUND: outbound_message,
    Consumed.GENESYS_STATUS: genesys_status,
    Consumed.CORRELATION: correlation,
}


def ordering_key(queue: Consumed, tenant_id: str, document: dict[str, Any]) -> str:
    """Messages with the same key are processed one after another, in the order they came.

    One customer's messages share a key (inbound by the sender, outbound by the recipient); a receipt or a
    correlation is keyed by the message it names.
    """
    match queue:
        case Consumed.INBOUND:
            who = document.get("wa_id")
        case Consumed.OUTBOUND:
            payload = document.get("payload")
            who = payload.get("to_id") if isinstance(payload, dict) else None
        case Consumed.STATUS:
            return f"message:{tenant_id}:{document.get('wamid')}"
        case Consumed.GENESYS_STATUS:
            return f"genesys:{tenant_id}:{document.get('originalMessageId') or document.get('genesysId')}"
        case Consumed.CORRELATION:
            return f"message:{tenant_id}:{document.get('whatsapp_message_id')}"
    return f"customer:{tenant_id}:{str(who).removeprefix('+')}"
