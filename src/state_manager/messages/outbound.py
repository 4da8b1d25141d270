"""An agent's message from Genesys, on its way to WhatsApp (the outbound-transformer's questions).

Genesys names the customer by the address we gave it (the WhatsApp ID, or the phone number in E.164), not
by a conversation: the message belongs to that customer's open conversation (the most recently active one
when the customer writes to several of the tenant's numbers). It is recorded by its Genesys message ID, so a
webhook Genesys retries is recorded once; the WhatsApp message ID that Meta returns is linked later
(`POST /v1/messages/{id}/link`), and receipts that arrived before that link are applied then.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.conversations import repository as conversations_repo
from state_manager.conversations import service as conversations
from state_manager.customers import service as customers
from state_manager.customers.identity import IdentityChannel, InvalidIdentity, normalize
from state_manager.errors import Conflict, Forbidden, ValidationFailed
from state_manager.messages import media_urls, service
from state_manager.messages.schemas import EXTERNAL_ID, Media, MessageRecord, MessageType, SenderType
from state_manager.messages.status import DeliveryStatus, Direction
from state_manager.timefmt import EventTime

_GENESYS_MEDIA = {"image": MessageType.IMAGE, "video": MessageType.VIDEO, "audio": MessageType.AUDIO}


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="allow")


class GenesysAddress(_Tolerant):
    id: str = Field(min_length=1, max_length=256)
    idType: str | None = Field(default=None, max_length=32)
    nickname: str | None = Field(default=None, max_length=256)


class GenesysChannel(_Tolerant):
    id: str | None = Field(default=None, max_length=128, description="The Open Messaging integration")
    to: GenesysAddress
    from_: GenesysAddress | None = Field(default=None, alias="from")
    time: EventTime | None = None
    messageId: str | None = Field(default=None, max_length=256)


class GenesysContent(_Tolerant):
    contentType: str | None = Field(default=None, max_length=64)
    attachment: dict[str, Any] | None = None


class GenesysOutboundMessage(_Tolerant):
    """Genesys Open Messaging's outbound webhook body (OpenNormalizedMessage) for an agent's message."""

    id: str = Field(pattern=EXTERNAL_ID, description="The Genesys message ID")
    channel: GenesysChannel
    type: Literal["Text", "Structured"] = "Text"
    text: str | None = Field(default=None, max_length=65536)
    content: list[GenesysContent] = Field(default_factory=list, max_length=20)
    direction: Literal["Outbound"] = "Outbound"


class QueuedMedia(_Tolerant):
    url: str = Field(max_length=2048)
    contentType: str | None = Field(default=None, max_length=128)
    filename: str | None = Field(default=None, max_length=512)


class QueuedPayload(_Tolerant):
    text: str | None = Field(default=None, max_length=65536)
    to_id: str = Field(min_length=1, max_length=256)
    to_id_type: str | None = Field(default=None, max_length=32)
    media: QueuedMedia | None = None


class QueuedOutboundMessage(_Tolerant):
    """The existing `outbound-genesys-messages` queue's message, as genesys-webhook-service sends it."""

    tenantId: str | None = Field(default=None, max_length=64)
    genesysId: str = Field(pattern=EXTERNAL_ID)
    type: Literal["message"] = "message"
    timestamp: EventTime | None = None
    payload: QueuedPayload


class OutboundRecorded(BaseModel):
    """What the outbound-transformer needs to send the message to WhatsApp."""

    message_id: uuid.UUID
    duplicate: bool
    status: DeliveryStatus
    conversation_id: uuid.UUID
    genesys_conversation_id: str | None
    customer_id: uuid.UUID
    wa_id: str
    business_number_id: str
    business_display_number: str | None
    reply_window_open: bool = Field(
        description="Free-form messages may be sent (24 h since the customer last wrote); else templates only"
    )


def _customer_channels(address: str) -> list[tuple[str, str]]:
    """The identities an address Genesys holds may be: a WhatsApp ID, or a phone number."""
    candidates = []
    digits = address.removeprefix("+")
    with contextlib.suppress(InvalidIdentity):
        candidates.append((IdentityChannel.WHATSAPP.value, normalize(IdentityChannel.WHATSAPP, digits)))
    with contextlib.suppress(InvalidIdentity):
        candidates.append((IdentityChannel.PHONE.value, normalize(IdentityChannel.PHONE, address)))
    if not candidates:
        raise ValidationFailed(f"{address!r} is neither a WhatsApp ID nor a phone number")
    return candidates


def as_record(body: GenesysOutboundMessage | QueuedOutboundMessage) -> tuple[str, MessageRecord]:
    """The customer's address and the message to record."""
    if isinstance(body, QueuedOutboundMessage):
        media = body.payload.media
        kind = MessageType.TEXT
        if media is not None:
            kind = _GENESYS_MEDIA.get((media.contentType or "").split("/")[0].lower(), MessageType.DOCUMENT)
        return body.payload.to_id, MessageRecord(
            direction=Direction.OUTBOUND,
            genesys_message_id=body.genesysId,
            type=kind,
            text=body.payload.text,
            media=None
            if media is None
            else Media(url=media.url, mime_type=media.contentType, filename=media.filename),
            occurred_at=body.timestamp,
            sender_type=SenderType.AGENT,
        )
    attachment = next((c.attachment for c in body.content if c.attachment), None)
    found: Media | None = None
    kind = MessageType.TEXT
    if attachment is not None:
        url = attachment.get("url")
        media_type = str(attachment.get("mediaType", "")).lower()
        kind = _GENESYS_MEDIA.get(media_type, MessageType.DOCUMENT)
        found = Media(
            url=url if isinstance(url, str) else None,
            mime_type=attachment.get("mime") if isinstance(attachment.get("mime"), str) else None,
            filename=attachment.get("filename") if isinstance(attachment.get("filename"), str) else None,
        )
    integration = {"integration_id": body.channel.id} if body.channel.id else {}
    sender = (
        {"from": body.channel.from_.nickname} if body.channel.from_ and body.channel.from_.nickname else {}
    )
    return body.channel.to.id, MessageRecord(
        direction=Direction.OUTBOUND,
        genesys_message_id=body.id,
        type=kind,
        text=body.text,
        media=found,
        occurred_at=body.channel.time,
        sender_type=SenderType.AGENT,
        metadata={"genesys": integration | sender} if integration or sender else {},
    )


async def record_outbound(
    conn: AsyncConnection, tenant_id: str, body: GenesysOutboundMessage | QueuedOutboundMessage
) -> OutboundRecorded:
    if isinstance(body, QueuedOutboundMessage) and body.tenantId not in (None, tenant_id):
        raise Forbidden("the body's tenantId is not the tenant this request acts for")
    try:
        address, record = as_record(body)
    except ValidationError as exc:
        raise ValidationFailed(f"the message cannot be recorded: {exc}") from exc
    media_urls.check_media(record.media)  # before the customer is looked for: refused whoever it is for
    row = None
    for channel, external_id in _customer_channels(address):
        row = await conversations_repo.open_by_identity(conn, tenant_id, channel, external_id, None)
        if row is not None:
            break
    if row is None:
        raise Conflict(
            f"no open conversation with {address}: the customer has not written, or the conversation ended",
            extra={"to": address},
        )
    conversation = conversations.to_read(row)
    message, created = await service.record(conn, tenant_id, conversation.id, record)
    if message.conversation_id != conversation.id:
        conversation = await conversations.read(conn, tenant_id, message.conversation_id)
    customer_wa_id = await _wa_id_of(conn, tenant_id, conversation.customer_id)
    return OutboundRecorded(
        message_id=message.id,
        duplicate=not created,
        status=message.status,
        conversation_id=conversation.id,
        genesys_conversation_id=conversation.genesys_conversation_id,
        customer_id=conversation.customer_id,
        wa_id=customer_wa_id,
        business_number_id=conversation.business_number_id,
        business_display_number=conversation.business_display_number,
        reply_window_open=conversation.reply_window_open,
    )


async def _wa_id_of(conn: AsyncConnection, tenant_id: str, customer_id: uuid.UUID) -> str:
    customer = await customers.read(conn, tenant_id, customer_id)
    for identity in customer.identities:
        if identity.channel == IdentityChannel.WHATSAPP.value:
            return identity.external_id
    raise Conflict("the customer has no WhatsApp ID to send to", extra={"customer_id": str(customer_id)})
