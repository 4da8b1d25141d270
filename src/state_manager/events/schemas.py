"""An event as consumers receive it (WebSocket, Redis, webhooks, `GET /v1/events`)."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel
from sqlalchemy import RowMapping

from state_manager.events.types import EventType


class EventRead(BaseModel):
    seq: int
    tenant_id: str
    type: EventType
    conversation_id: uuid.UUID | None
    customer_id: uuid.UUID | None
    message_id: uuid.UUID | None
    occurred_at: dt.datetime
    payload: dict[str, Any]


class EventPage(BaseModel):
    events: list[EventRead]
    head: int  # the tenant's last event number when the page was read
    next_after: int  # ask again with after=next_after


@dataclass(frozen=True, slots=True)
class Published:
    """A numbered event with its JSON made once, for every consumer that receives it."""

    tenant_id: str
    seq: int
    type: str
    conversation_id: str | None
    customer_id: str | None
    json: bytes
    text: str  # the same JSON as text, as a WebSocket frame carries it (events/live.py)

    @classmethod
    def from_row(cls, row: RowMapping) -> Published:
        conversation_id, customer_id, message_id = (
            None if value is None else str(value)  # asyncpg's UUID is not uuid.UUID to orjson
            for value in (row["conversation_id"], row["customer_id"], row["message_id"])
        )
        document = {
            "seq": row["seq"],
            "tenant_id": row["tenant_id"],
            "type": row["type"],
            "conversation_id": conversation_id,
            "customer_id": customer_id,
            "message_id": message_id,
            "occurred_at": row["occurred_at"],
            "payload": row["payload"],
        }
        json = orjson.dumps(document, option=orjson.OPT_UTC_Z)
        return cls(
            tenant_id=row["tenant_id"],
            seq=row["seq"],
            type=row["type"],
            conversation_id=conversation_id,
            customer_id=customer_id,
            json=json,
            text=json.decode(),
        )

    @classmethod
    def from_document(cls, json: bytes) -> Published:
        document = orjson.loads(json)
        return cls(
            tenant_id=document["tenant_id"],
            seq=document["seq"],
            type=document["type"],
            conversation_id=document["conversation_id"],
            customer_id=document["customer_id"],
            json=json,
            text=json.decode(),
        )
