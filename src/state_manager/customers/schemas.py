from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from state_manager.customers.identity import IdentityChannel

LANGUAGE_PATTERN = r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8}){0,3}$"
JsonObject = dict[str, Any]


class IdentityIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: IdentityChannel
    external_id: str = Field(min_length=1, max_length=256)


class IdentityRead(BaseModel):
    channel: IdentityChannel
    external_id: str
    created_at: dt.datetime


class CustomerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    display_name: str | None = Field(default=None, max_length=256)
    language: str | None = Field(default=None, pattern=LANGUAGE_PATTERN)
    preferences: JsonObject = Field(default_factory=dict)
    consent: JsonObject = Field(default_factory=dict)
    attributes: JsonObject = Field(default_factory=dict, description="Custom attributes")
    identities: list[IdentityIn] = Field(default_factory=list, max_length=20)


class CustomerUpdate(BaseModel):
    """Objects are merged per key (RFC 7396: a null value removes the key)."""

    model_config = ConfigDict(extra="forbid")

    display_name: str | None = Field(default=None, max_length=256)
    language: str | None = Field(default=None, pattern=LANGUAGE_PATTERN)
    preferences: JsonObject | None = None
    consent: JsonObject | None = None
    attributes: JsonObject | None = None


class CustomerMerge(BaseModel):
    """The customer to merge into this one. Its identities, conversations and context move over; profile
    fields this one lacks are taken from it (for objects, per key); then it is removed."""

    model_config = ConfigDict(extra="forbid")

    customer_id: uuid.UUID


class CustomerRead(BaseModel):
    id: uuid.UUID
    display_name: str | None
    language: str | None
    preferences: JsonObject
    consent: JsonObject
    attributes: JsonObject
    identities: list[IdentityRead]
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime
    erased_at: dt.datetime | None = Field(
        default=None, description="Set when the customer was erased: the profile is empty from then on"
    )


class ErasureRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(
        default=None,
        max_length=500,
        description="Why (e.g. the request's ticket); kept in the audit log as written: no personal data",
    )


class ErasureCounts(BaseModel):
    """What one erasure removed or cleared (none of it personal data)."""

    profile_fields_cleared: int  # of display_name, language, preferences, consent, attributes
    identities_deleted: int
    conversations: int  # the customer's, all kept (anonymous counts)
    conversations_closed: int  # open ones, closed with reason "customer erased"
    messages_redacted: int  # content cleared; the rows stay
    context_entries_deleted: int
    events_cleared: int  # events whose payload held personal data, cleared
    webhook_bodies_redacted: int  # raw WhatsApp webhooks that also held other customers' items
    webhook_bodies_deleted: int
    webhook_deliveries_cleared: int  # copies of cleared events in the webhook delivery log
    held_receipts_deleted: int
    queue_outputs_cleared: int  # published RabbitMQ output still kept for deduplication

    def removed_anything(self) -> bool:
        return any(count for name, count in self if name != "conversations")


class ErasureRead(BaseModel):
    customer: CustomerRead
    already_erased: bool = Field(description="true when an earlier erasure had erased the customer")
    counts: ErasureCounts | None = Field(
        description="what this call removed or cleared; null when it found nothing left to remove"
    )
