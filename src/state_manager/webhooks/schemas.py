"""What the WhatsApp side sends: Meta's Cloud API webhook as it arrives, and the flattened message the
existing inbound queue carries. Unknown fields are kept, not refused: Meta adds fields without notice, and
a refused webhook is retried for seven days."""

from __future__ import annotations

import enum
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from state_manager.conversations.lifecycle import ConversationState
from state_manager.conversations.schemas import BUSINESS_NUMBER_ID
from state_manager.messages.schemas import EXTERNAL_ID
from state_manager.messages.status import DeliveryStatus
from state_manager.timefmt import EventTime

MAX_ITEMS = 1000  # Meta batches at most 1,000 updates in one POST


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="allow")


class WaProfile(_Tolerant):
    name: str | None = Field(default=None, max_length=256)


class WaContact(_Tolerant):
    wa_id: str = Field(min_length=1, max_length=32)
    profile: WaProfile | None = None


class WaMetadata(_Tolerant):
    phone_number_id: str = Field(pattern=BUSINESS_NUMBER_ID)
    display_phone_number: str | None = Field(default=None, max_length=64)


class WaMessage(_Tolerant):
    id: str = Field(pattern=EXTERNAL_ID)
    from_: str = Field(alias="from", min_length=1, max_length=32)
    timestamp: EventTime
    type: str = Field(default="unknown", max_length=32)


class WaError(_Tolerant):
    code: StrictInt | str | None = None  # never a boolean read as 0 (lax int mode)
    title: str | None = Field(default=None, max_length=512)
    message: str | None = Field(default=None, max_length=4096)
    error_data: dict[str, Any] | None = None


class WaStatus(_Tolerant):
    id: str = Field(pattern=EXTERNAL_ID)
    status: str = Field(max_length=32)
    timestamp: EventTime
    recipient_id: str | None = Field(default=None, max_length=64)
    errors: list[WaError] = Field(default_factory=list, max_length=20)


class WaValue(_Tolerant):
    messaging_product: str | None = None
    metadata: WaMetadata
    contacts: list[WaContact] = Field(default_factory=list, max_length=MAX_ITEMS)
    messages: list[WaMessage] = Field(default_factory=list, max_length=MAX_ITEMS)
    statuses: list[WaStatus] = Field(default_factory=list, max_length=MAX_ITEMS)


class WaChange(_Tolerant):
    field: str | None = None
    value: WaValue


class WaEntry(_Tolerant):
    id: str | None = Field(default=None, max_length=64)
    changes: list[WaChange] = Field(default_factory=list, max_length=MAX_ITEMS)


class WhatsAppWebhook(_Tolerant):
    """Meta's WhatsApp Cloud API webhook body, as POSTed to a webhook endpoint."""

    object: Literal["whatsapp_business_account"]
    entry: list[WaEntry] = Field(min_length=1, max_length=MAX_ITEMS)


class QueuedInboundMessage(_Tolerant):
    """The flattened message of the existing `inbound-whatsapp-messages` queue."""

    tenant_id: str | None = Field(default=None, alias="tenantId", max_length=64)
    wamid: str = Field(pattern=EXTERNAL_ID)
    wa_id: str = Field(min_length=1, max_length=32)
    contact_name: str | None = Field(default=None, max_length=256)
    timestamp: EventTime | None = None
    message_text: str | None = Field(default=None, max_length=65536)
    media_url: str | None = Field(default=None, max_length=2048)
    phone_number_id: str = Field(pattern=BUSINESS_NUMBER_ID)
    display_phone_number: str | None = Field(default=None, max_length=64)


class ItemKind(enum.StrEnum):
    MESSAGE = "message"
    STATUS = "status"


class ItemOutcome(enum.StrEnum):
    CREATED = "created"  # a new message recorded
    DUPLICATE = "duplicate"  # a message recorded before; nothing changed
    APPLIED = "applied"  # a status that changed its message
    UNCHANGED = "unchanged"  # a status already known
    HELD = "held"  # a status for a message not known yet; applied when it is
    IGNORED = "ignored"  # a status this service does not track (e.g. `deleted`)


class ItemResult(BaseModel):
    kind: ItemKind
    wamid: str
    outcome: ItemOutcome
    message_id: uuid.UUID | None = None
    status: str | None = Field(default=None, description="statuses: the status the item reported")
    message_status: DeliveryStatus | None = Field(default=None, description="statuses: the message's now")
    customer_id: uuid.UUID | None = None
    customer_created: bool | None = None
    conversation_id: uuid.UUID | None = None
    conversation_created: bool | None = None
    conversation_state: ConversationState | None = None
    genesys_conversation_id: str | None = None
    needs_genesys_conversation: bool | None = Field(
        default=None,
        description="messages: no Genesys conversation is linked yet, so the caller must create one",
    )


class WebhookAccepted(BaseModel):
    event_id: uuid.UUID = Field(description="The stored raw body, for `state-manager replay`")
    items: list[ItemResult]
