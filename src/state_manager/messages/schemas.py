from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from state_manager.conversations.lifecycle import ConversationState
from state_manager.conversations.schemas import BUSINESS_NUMBER_ID
from state_manager.messages.status import DeliveryStatus, Direction, ReceiptStatus
from state_manager.timefmt import EventTime

EXTERNAL_ID = r"^[A-Za-z0-9._:=+/-]{1,256}$"


class MessageType(enum.StrEnum):
    TEXT = "text"
    IMAGE = "image"
    AUDIO = "audio"
    VIDEO = "video"
    DOCUMENT = "document"
    STICKER = "sticker"
    LOCATION = "location"
    CONTACTS = "contacts"
    INTERACTIVE = "interactive"
    BUTTON = "button"
    REACTION = "reaction"
    TEMPLATE = "template"
    SYSTEM = "system"
    UNKNOWN = "unknown"


class SenderType(enum.StrEnum):
    CUSTOMER = "customer"
    AGENT = "agent"
    BOT = "bot"
    SYSTEM = "system"


class Media(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, max_length=2048)
    mime_type: str | None = Field(default=None, max_length=128, pattern=r"^[\w.+-]+/[\w.+-]+(;.*)?$")
    filename: str | None = Field(default=None, max_length=512)
    caption: str | None = Field(default=None, max_length=4096)


class MessageBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: MessageType = MessageType.TEXT
    text: str | None = Field(default=None, max_length=65536)
    media: Media | None = None
    occurred_at: EventTime | None = Field(default=None, description="ISO-8601 or epoch seconds; default now")
    metadata: dict[str, Any] = Field(default_factory=dict)


class MessageRecord(MessageBody):
    """A message of a known conversation. At least one of its IDs is needed: it is how repeats are found."""

    direction: Direction
    wamid: str | None = Field(default=None, pattern=EXTERNAL_ID)
    genesys_message_id: str | None = Field(default=None, pattern=EXTERNAL_ID)
    sender_type: SenderType | None = Field(
        default=None, description="Default: customer for inbound, agent for outbound"
    )
    sender_id: str | None = Field(default=None, max_length=128)

    @model_validator(mode="after")
    def _needs_an_id(self) -> MessageRecord:
        if self.wamid is None and self.genesys_message_id is None:
            raise ValueError("give wamid or genesys_message_id (or both)")
        return self


class InboundMessage(MessageBody):
    """A customer's WhatsApp message: customer, open conversation and message recorded in one transaction."""

    wa_id: str = Field(min_length=1, max_length=32)
    profile_name: str | None = Field(default=None, max_length=256)
    business_number_id: str = Field(pattern=BUSINESS_NUMBER_ID)
    business_display_number: str | None = Field(default=None, max_length=64)
    wamid: str = Field(pattern=EXTERNAL_ID)


class InboundRecorded(BaseModel):
    customer_id: uuid.UUID
    customer_created: bool
    conversation_id: uuid.UUID
    conversation_created: bool
    conversation_state: ConversationState
    genesys_conversation_id: str | None
    message_id: uuid.UUID
    duplicate: bool


class FailureRead(BaseModel):
    code: str | None
    title: str | None
    details: str | None


class MessageRead(BaseModel):
    id: uuid.UUID
    conversation_id: uuid.UUID
    direction: Direction
    wamid: str | None
    genesys_message_id: str | None
    type: MessageType
    text: str | None
    media: Media | None
    sender_type: SenderType
    sender_id: str | None
    occurred_at: dt.datetime
    status: DeliveryStatus
    sent_at: dt.datetime | None
    delivered_at: dt.datetime | None
    read_at: dt.datetime | None
    failed_at: dt.datetime | None
    failure: FailureRead | None
    metadata: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime
    redacted_at: dt.datetime | None = Field(
        default=None, description="When retention or an erasure removed the content (text, media, metadata)"
    )


class ReceiptError(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str | None = Field(default=None, max_length=64)
    title: str | None = Field(default=None, max_length=512)
    details: str | None = Field(default=None, max_length=4096)


class ReceiptIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    wamid: str | None = Field(default=None, pattern=EXTERNAL_ID)
    genesys_message_id: str | None = Field(default=None, pattern=EXTERNAL_ID)
    status: ReceiptStatus
    at: EventTime
    error: ReceiptError | None = None

    @model_validator(mode="after")
    def _one_id(self) -> ReceiptIn:
        if (self.wamid is None) == (self.genesys_message_id is None):
            raise ValueError("give exactly one of wamid and genesys_message_id")
        if self.error is not None and self.status is not ReceiptStatus.FAILED:
            raise ValueError("only a failed receipt carries an error")
        return self


class ReceiptBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    receipts: list[ReceiptIn] = Field(min_length=1, max_length=1000)


class ReceiptOutcome(enum.StrEnum):
    APPLIED = "applied"  # the message's times changed
    UNCHANGED = "unchanged"  # already known: a repeat, or later than a time already kept
    HELD = "held"  # the message is not known yet; applied when it is recorded or linked


class ReceiptResult(BaseModel):
    outcome: ReceiptOutcome
    message_id: uuid.UUID | None = None
    status: DeliveryStatus | None = None


class ReceiptResults(BaseModel):
    results: list[ReceiptResult]


class LinkIds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    wamid: str | None = Field(default=None, pattern=EXTERNAL_ID)
    genesys_message_id: str | None = Field(default=None, pattern=EXTERNAL_ID)

    @model_validator(mode="after")
    def _some_id(self) -> LinkIds:
        if self.wamid is None and self.genesys_message_id is None:
            raise ValueError("give wamid or genesys_message_id")
        return self


class Correlation(BaseModel):
    """What the Genesys side learnt when it accepted an inbound message: its conversation's IDs."""

    model_config = ConfigDict(extra="forbid")

    whatsapp_message_id: str = Field(pattern=EXTERNAL_ID, description="The wamid of any inbound message")
    genesys_conversation_id: str = Field(pattern=r"^[A-Za-z0-9._:-]{1,128}$")
    genesys_communication_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._:-]{1,128}$")
