"""Event times as callers send them: ISO-8601 with a zone, or epoch seconds (WhatsApp sends a string)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import BeforeValidator

_EARLIEST = 946684800  # 2000-01-01: anything earlier is a unit mistake, not a message time
_LATEST = 4102444800  # 2100-01-01


def parse_event_time(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, bool):
        raise ValueError("a time is ISO-8601 with a zone, or epoch seconds")
    elif isinstance(value, int | float) or (isinstance(value, str) and value.strip().isdigit()):
        seconds = float(value)
        if not _EARLIEST <= seconds < _LATEST:
            raise ValueError("epoch seconds out of range (2000-01-01 to 2100-01-01)")
        parsed = dt.datetime.fromtimestamp(seconds, dt.UTC)
    elif isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError("a time is ISO-8601 with a zone, or epoch seconds") from exc
    else:
        raise ValueError("a time is ISO-8601 with a zone, or epoch seconds")
    if parsed.tzinfo is None:
        raise ValueError("the time needs a zone (e.g. 2026-01-01T10:00:00Z)")
    return parsed.astimezone(dt.UTC)


EventTime = Annotated[dt.datetime, BeforeValidator(parse_event_time)]
