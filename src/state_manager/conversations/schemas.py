from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from state_manager.conversations.lifecycle import ConversationState
from state_manager.customers.schemas import IdentityIn
from state_manager.timefmt import EventTime

BUSINESS_NUMBER_ID = r"^[A-Za-z0-9._:-]{1,64}$"


class ConversationOpen(BaseModel):
    """Get or create the open conversation of a customer on a business number."""

    model_config = ConfigDict(extra="forbid")

    customer_id: uuid.UUID | None = None
    identity: IdentityIn | None = Field(
        default=None, description="Find the customer by identity instead of ID"
    )
    business_number_id: str = Field(pattern=BUSINESS_NUMBER_ID, description="WhatsApp phone_number_id")
    business_display_number: str | None = Field(default=None, max_length=64)
    channel: str = Field(default="whatsapp", pattern=r"^[a-z_]{1,32}$")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_customer_reference(self) -> ConversationOpen:
        if (self.customer_id is None) == (self.identity is None):
            raise ValueError("give exactly one of customer_id and identity")
        return self


class ConversationUpdate(BaseModel):
    """metadata is merged per key (RFC 7396); Genesys IDs can be set once."""

    model_config = ConfigDict(extra="forbid")

    metadata: dict[str, Any] | None = None
    business_display_number: str | None = Field(default=None, max_length=64)
    genesys_conversation_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._:-]{1,128}$")
    genesys_communication_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._:-]{1,128}$")


class TransitionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: ConversationState
    reason: str | None = Field(default=None, max_length=200)
    at: EventTime | None = Field(default=None, description="When it happened; default now")


class ConversationRead(BaseModel):
    id: uuid.UUID
    customer_id: uuid.UUID
    channel: str
    business_number_id: str
    business_display_number: str | None
    genesys_conversation_id: str | None
    genesys_communication_id: str | None
    state: ConversationState
    state_reason: str | None
    state_changed_at: dt.datetime
    started_at: dt.datetime
    last_activity_at: dt.datetime
    last_inbound_at: dt.datetime | None
    last_outbound_at: dt.datetime | None
    reply_window_ends_at: dt.datetime | None
    closed_at: dt.datetime | None
    close_reason: str | None
    metadata: dict[str, Any]
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime

    @computed_field  # type: ignore[prop-decorator]
    @property
    def reply_window_open(self) -> bool:
        """Whether free-form WhatsApp messages may be sent now (24 h since the last inbound message)."""
        return self.reply_window_ends_at is not None and self.reply_window_ends_at > dt.datetime.now(dt.UTC)


class ConversationOpened(BaseModel):
    created: bool
    conversation: ConversationRead


class ParticipantAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str = Field(pattern=r"^(customer|agent|bot|system)$")
    participant_ref: str = Field(
        min_length=1, max_length=128, description="Agent user ID, bot name, or the customer's ID"
    )
    display_name: str | None = Field(default=None, max_length=256)
    joined_at: EventTime | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class ParticipantLeave(BaseModel):
    model_config = ConfigDict(extra="forbid")

    left_at: EventTime | None = None


class ParticipantRead(BaseModel):
    id: uuid.UUID
    conversation_id: uuid.UUID
    role: str
    participant_ref: str
    display_name: str | None
    joined_at: dt.datetime
    left_at: dt.datetime | None
    metadata: dict[str, Any]


class StateChangeRead(BaseModel):
    from_state: ConversationState | None
    to_state: ConversationState
    reason: str | None
    changed_at: dt.datetime
