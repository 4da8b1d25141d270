"""Events from Genesys Cloud, as the genesys-webhook-service forwards them."""

from __future__ import annotations

import enum
import uuid

from pydantic import BaseModel, ConfigDict, Field, model_validator

from state_manager.conversations.lifecycle import ConversationState
from state_manager.messages.schemas import EXTERNAL_ID
from state_manager.messages.status import DeliveryStatus
from state_manager.timefmt import EventTime

GENESYS_ID = r"^[A-Za-z0-9._:-]{1,128}$"


class GenesysEventType(enum.StrEnum):
    AGENT_CONNECTED = "agent_connected"
    AGENT_DISCONNECTED = "agent_disconnected"
    CUSTOMER_ENDED = "customer_ended"
    WRAPUP = "wrapup"
    CONVERSATION_DISCONNECTED = "conversation_disconnected"
    MESSAGE_RECEIPT = "message_receipt"


class GenesysReason(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str | None = Field(default=None, max_length=64)
    message: str | None = Field(default=None, max_length=4096)


class GenesysEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: GenesysEventType
    at: EventTime
    genesys_conversation_id: str | None = Field(default=None, pattern=GENESYS_ID)
    agent_id: str | None = Field(default=None, min_length=1, max_length=128)
    agent_name: str | None = Field(default=None, max_length=256)
    reason: str | None = Field(default=None, max_length=200)
    wrapup_code: str | None = Field(default=None, max_length=128)
    wrapup_notes: str | None = Field(default=None, max_length=4096)
    genesys_message_id: str | None = Field(default=None, pattern=EXTERNAL_ID)
    status: str | None = Field(
        default=None, max_length=32, description="Receipts: Sent, Delivered, Read, Failed (any case)"
    )
    reasons: list[GenesysReason] = Field(default_factory=list, max_length=20)

    @model_validator(mode="after")
    def _what_each_type_needs(self) -> GenesysEvent:
        if self.type is GenesysEventType.MESSAGE_RECEIPT:
            if self.genesys_message_id is None or self.status is None:
                raise ValueError("a message_receipt needs genesys_message_id and status")
            return self
        if self.genesys_conversation_id is None:
            raise ValueError(f"a {self.type} event needs genesys_conversation_id")
        agent_events = (GenesysEventType.AGENT_CONNECTED, GenesysEventType.AGENT_DISCONNECTED)
        if self.type in agent_events and self.agent_id is None:
            raise ValueError(f"a {self.type} event needs agent_id")
        return self


class GenesysEventOutcome(enum.StrEnum):
    APPLIED = "applied"  # the conversation or message changed
    UNCHANGED = "unchanged"  # already so (a repeat), or too late to matter (the conversation ended)
    HELD = "held"  # a receipt for a message not known yet; applied when it is
    IGNORED = "ignored"  # a receipt status this service does not track (Published, Removed, …)


class GenesysEventResult(BaseModel):
    outcome: GenesysEventOutcome
    conversation_id: uuid.UUID | None = None
    conversation_state: ConversationState | None = None
    message_id: uuid.UUID | None = None
    message_status: DeliveryStatus | None = None
