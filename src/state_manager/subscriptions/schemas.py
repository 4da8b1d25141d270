"""Webhook subscriptions and deliveries as the API reads and writes them."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from state_manager.events.types import EventType
from state_manager.subscriptions.urls import MAX_URL_LENGTH, check_url

ReceiverUrl = Annotated[str, Field(max_length=MAX_URL_LENGTH + 64), AfterValidator(check_url)]
# Printable ASCII without spaces: it goes into an HMAC as UTF-8, and into shell variables of receivers.
Secret = Annotated[str, Field(min_length=16, max_length=256, pattern=r"^[\x21-\x7e]+$")]


def _unique(types: list[EventType]) -> list[EventType]:
    return list(dict.fromkeys(types))


EventTypes = Annotated[list[EventType], Field(max_length=len(EventType)), AfterValidator(_unique)]


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


class SubscriptionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: ReceiverUrl
    event_types: EventTypes = Field(default_factory=list, description="Event types to deliver; empty = all")
    description: str | None = Field(default=None, max_length=500)
    active: bool = True
    secret: Secret | None = Field(default=None, description="The signing secret; generated when absent")


class SubscriptionUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: ReceiverUrl | None = None
    event_types: EventTypes | None = None
    description: str | None = Field(default=None, max_length=500)
    active: bool | None = None


class SecretRotation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    secret: Secret | None = Field(default=None, description="The new secret; generated when absent")


class SubscriptionRead(BaseModel):
    id: uuid.UUID
    url: str
    event_types: list[EventType]
    description: str | None
    active: bool
    secret_hint: str
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime


class SubscriptionWithSecret(SubscriptionRead):
    """Only the answers of creation and rotation carry the secret."""

    secret: str


class DeliveryRead(BaseModel):
    id: uuid.UUID
    subscription_id: uuid.UUID
    event_seq: int
    event_type: str
    ordering_key: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: dt.datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    delivered_at: dt.datetime | None


class AttemptRead(BaseModel):
    attempt: int
    attempted_at: dt.datetime
    duration_ms: int
    status_code: int | None
    error: str | None
    response_excerpt: str | None


class DeliveryDetail(DeliveryRead):
    event: dict[str, Any]  # the body sent, parsed
    attempt_log: list[AttemptRead]


class DeliveryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: DeliveryStatus | None = None
    subscription_id: uuid.UUID | None = None
    cursor: str | None = Field(default=None, max_length=200)
    limit: int = Field(default=50, ge=1, le=500)


class DeadRetry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subscription_id: uuid.UUID


class RetriedCount(BaseModel):
    retried: int
