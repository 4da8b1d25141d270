"""Cursor pagination with a stable order: the cursor holds the sort key of the last item returned."""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from typing import Generic, TypeVar

import orjson
from pydantic import BaseModel

from state_manager.errors import BadRequest
from state_manager.timefmt import in_window

T = TypeVar("T")

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


def encode_cursor(at: dt.datetime, id: uuid.UUID) -> str:
    raw = orjson.dumps([at.isoformat(), str(id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, id = orjson.loads(raw)
        if not isinstance(at, str) or not isinstance(id, str):
            raise TypeError("a cursor holds two strings")
        return in_window(dt.datetime.fromisoformat(at)), uuid.UUID(id)
    except (ValueError, TypeError) as exc:
        raise BadRequest("the cursor is not one this service returned") from exc
