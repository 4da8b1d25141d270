"""The queue messages as their real producers send them (existing-service-contract.md, 2.2), and what this
service publishes. Unknown fields are kept: the published messages spread their input, as today."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from state_manager.messages.schemas import EXTERNAL_ID
from state_manager.timefmt import EventTime

_GENESYS_ID = r"^[A-Za-z0-9._:-]{1,128}$"


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="allow")


class WhatsAppStatusUpdate(_Tolerant):
    """`whatsapp-status-updates`, from whatsapp-webhook-service."""

    tenantId: str | None = Field(default=None, max_length=64)
    wamid: str = Field(pattern=EXTERNAL_ID)
    recipientId: str | None = Field(default=None, max_length=64)
    status: str = Field(min_length=1, max_length=32)
    timestamp: EventTime
    errors: list[dict[str, Any]] = Field(default_factory=list, max_length=20)


class GenesysStatusUpdate(_Tolerant):
    """`genesys-status-updates`, from genesys-webhook-service: a receipt (or typing, disconnect) for an
    agent's message."""

    tenantId: str | None = Field(default=None, max_length=64)
    genesysId: str | None = Field(default=None, pattern=EXTERNAL_ID)
    originalMessageId: str | None = Field(default=None, pattern=EXTERNAL_ID)
    status: str = Field(min_length=1, max_length=64)
    timestamp: EventTime


class CorrelationEvent(_Tolerant):
    """`correlation-events`, from genesys-api-service once Genesys accepted an inbound message."""

    tenantId: str | None = Field(default=None, max_length=64)
    conversation_id: str = Field(pattern=_GENESYS_ID)
    communication_id: str | None = Field(default=None, pattern=_GENESYS_ID)
    whatsapp_message_id: str = Field(pattern=EXTERNAL_ID)
    status: str | None = Field(default=None, max_length=32)
    timestamp: EventTime | None = None


class DlqReason(enum.StrEnum):
    """The existing reasons, and `internal_error` for a failure that is none of them."""

    LOCK_TIMEOUT = "lock_timeout"
    MAPPING_NOT_FOUND = "mapping_not_found"
    INVALID_PAYLOAD = "invalid_payload"
    STATE_VIOLATION = "state_violation"
    MAPPING_STATUS_EXPIRED = "mapping_status_expired"
    MAPPING_STATUS_CLOSED = "mapping_status_closed"
    DATABASE_ERROR = "database_error"
    INVALID_MEDIA_URL = "invalid_media_url"
    INTERNAL_ERROR = "internal_error"


def dlq_envelope(
    original: Any, reason: DlqReason, error_message: str, retry_count: int, queue: str
) -> dict[str, Any]:
    """The existing envelope, plus the queue the message came from (nothing reads the DLQ today, so an
    added field breaks no one, and whoever will needs it to send the message back)."""
    return {
        "original_payload": original,
        "reason": reason.value,
        "error_message": error_message,
        "retry_count": retry_count,
        "timestamp": dt.datetime.now(dt.UTC).isoformat(),
        "queue": queue,
    }
