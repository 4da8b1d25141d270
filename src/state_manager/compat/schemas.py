"""Shapes of the old Node.js state-manager's HTTP API, as its callers send and read them.

Field names are the old ones (camelCase or snake_case, route by route), not this service's. In the old
vocabulary a "mapping" is one of our conversations: `internalId`/`mapping_id` is its UUID, while
`conversationId`/`conversation_id` is the Genesys conversation ID.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from state_manager.messages.schemas import EXTERNAL_ID
from state_manager.messages.status import Direction
from state_manager.timefmt import EventTime

GENESYS_ID = r"^[A-Za-z0-9._:-]{1,128}$"


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


AnyCaseDirection = Annotated[Direction, BeforeValidator(_lower)]


class _Lenient(BaseModel):
    """Old callers send fields this layer does not use (and `tenantId`); they are ignored, not refused."""

    model_config = ConfigDict(extra="ignore")


# Requests


class MessageTrack(_Lenient):
    """`POST /state/message`."""

    wamid: str = Field(pattern=EXTERNAL_ID)
    mappingId: uuid.UUID
    genesysMessageId: str | None = Field(default=None, pattern=EXTERNAL_ID)
    direction: AnyCaseDirection = Direction.INBOUND
    status: str | None = Field(default=None, max_length=32)
    mediaUrl: str | None = Field(default=None, max_length=2048)
    text: str | None = Field(default=None, max_length=65536)
    timestamp: EventTime | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class StatusUpdate(_Lenient):
    """`PATCH /state/message/:wamid/status`."""

    status: str = Field(min_length=1, max_length=32)
    genesysMessageId: str | None = Field(default=None, pattern=EXTERNAL_ID)
    timestamp: EventTime | None = None


class CorrelateRequest(_Lenient):
    """`POST /state/correlate` and `/state/correlation`."""

    conversation_id: str = Field(pattern=GENESYS_ID)
    communication_id: str = Field(pattern=GENESYS_ID)
    whatsapp_message_id: str = Field(pattern=EXTERNAL_ID)


class ConversationStatusUpdate(_Lenient):
    """`PATCH /state/conversation/:conversationId`."""

    status: str = Field(min_length=1, max_length=16)
    reason: str | None = Field(default=None, max_length=200)
    timestamp: EventTime | None = None


# Responses


class MappingRow(BaseModel):
    """`GET /state/mapping/:waId`: the old `conversation_mappings` row, always with every column."""

    id: uuid.UUID
    wa_id: str | None
    conversation_id: str | None = Field(description="The Genesys conversation ID")
    communication_id: str | None
    last_message_id: str | None
    contact_name: str | None
    phone_number_id: str
    display_phone_number: str | None
    status: str = Field(description="active, closed or expired")
    last_activity_at: dt.datetime
    created_at: dt.datetime
    updated_at: dt.datetime
    metadata: dict[str, Any]
    tenant_id: str


class FormattedMapping(BaseModel):
    """The old `formatMapping`, plus `tenantId`."""

    waId: str | None
    conversationId: str | None = Field(description="The Genesys conversation ID")
    contactName: str | None
    phoneNumberId: str
    displayPhoneNumber: str | None
    communicationId: str | None
    status: str = Field(description="active, closed or expired")
    lastActivityAt: dt.datetime
    isNew: bool = Field(description="No Genesys conversation is linked yet")
    internalId: uuid.UUID = Field(description="This service's conversation ID")
    tenantId: str


class ConversationStatusChanged(FormattedMapping):
    success: bool = True
    updated: bool


class MessageItem(BaseModel):
    id: uuid.UUID
    wamid: str | None
    genesysMessageId: str | None
    mappingId: uuid.UUID
    direction: str = Field(description="INBOUND or OUTBOUND")
    status: str
    mediaUrl: str | None
    text: str
    timestamp: dt.datetime = Field(description="When the message was sent")
    deliveredAt: dt.datetime | None
    created_at: dt.datetime = Field(description="When this service recorded it")


class MessagePage(BaseModel):
    messages: list[MessageItem] = Field(description="Newest first")
    total: int = Field(description="Every message of the conversation, not only this page's")
    limit: int
    offset: int


class MessageTracked(BaseModel):
    success: bool = True
    duplicate: bool
    id: uuid.UUID


class StatusUpdated(BaseModel):
    success: bool = True
    wamid: str
    previousStatus: str
    status: str


class Stats(BaseModel):
    totalMappings: int
    totalMessages: int
    activeConversations: int
    activeConversationsRaw: str
    waitingConversations: int
    totalMessagesToday: int
    avgResponseTime: float = Field(description="today's average first response time, seconds (0: none)")
    timestamp: dt.datetime
    tenantId: str
