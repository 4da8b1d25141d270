"""Times as callers send them: ISO-8601 with a zone, or epoch seconds (WhatsApp sends a string).

Every time a caller gives is held to one window, 2000-01-01 to 2100-01-01 UTC. Earlier or later values
are unit or typing mistakes, and letting them in would do harm: a context value stamped with year 9999
would win every later write, and a year-1 time east of UTC cannot even be converted to UTC.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import BeforeValidator

EARLIEST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
_WINDOW = "between 2000-01-01 and 2100-01-01"
_FORMAT = "a time is ISO-8601 with a zone, or epoch seconds"


def parse_event_time(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, bool):
        raise ValueError(_FORMAT)
    elif isinstance(value, int | float) or (isinstance(value, str) and value.strip().isdigit()):
        seconds = float(value)
        if not EARLIEST.timestamp() <= seconds < LATEST.timestamp():
            raise ValueError(f"epoch seconds out of range ({_WINDOW})")
        return dt.datetime.fromtimestamp(seconds, dt.UTC)
    elif isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(_FORMAT) from exc
    else:
        raise ValueError(_FORMAT)
    return in_window(parsed)


def in_window(moment: dt.datetime) -> dt.datetime:
    """`moment` in UTC, or ValueError if it has no zone or lies outside the window."""
    if moment.tzinfo is None:
        raise ValueError("the time needs a zone (e.g. 2026-01-01T10:00:00Z)")
    try:
        utc = moment.astimezone(dt.UTC)
    except OverflowError as exc:  # year 1 east of UTC, year 9999 west of it
        raise ValueError(f"the time must lie {_WINDOW}") from exc
    if not EARLIEST <= utc < LATEST:
        raise ValueError(f"the time must lie {_WINDOW}")
    return utc


def parse_filter_time(value: Any) -> dt.datetime:
    """A bound for a list filter: any zoned time, clamped to the window (nothing is stored outside it)."""
    if isinstance(value, str) and not value.strip().isdigit():
        try:
            moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(_FORMAT) from exc
        if moment.tzinfo is None:
            raise ValueError("the time needs a zone (e.g. 2026-01-01T00:00:00Z)")
        if moment.year <= 1:
            return EARLIEST
        if moment.year >= 9999:
            return LATEST
        return min(max(moment.astimezone(dt.UTC), EARLIEST), LATEST)
    return parse_event_time(value)


EventTime = Annotated[dt.datetime, BeforeValidator(parse_event_time)]
FilterTime = Annotated[dt.datetime, BeforeValidator(parse_filter_time)]
