"""Periods of a report: hours, days and weeks of a time zone's clock, as UTC instants."""

from __future__ import annotations

import datetime as dt
import enum
from zoneinfo import ZoneInfo

from state_manager.analytics.facts import BUCKET_MINUTES

BUCKET = dt.timedelta(minutes=BUCKET_MINUTES)


class Granularity(enum.StrEnum):
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"


def period_of(moment: dt.datetime, granularity: Granularity, tz: ZoneInfo) -> dt.datetime:
    """The start of the period holding `moment`, in `tz` (hours, days and weeks of that zone's clock;
    weeks start on Monday). In the hour a clock goes back, its two hours stay two periods."""
    local = moment.astimezone(tz)
    if granularity is Granularity.HOUR:
        return local.replace(minute=0, second=0, microsecond=0)
    day = local.date()
    if granularity is Granularity.WEEK:
        day -= dt.timedelta(days=day.weekday())
    return dt.datetime(day.year, day.month, day.day, tzinfo=tz)


def utc_period_of(moment: dt.datetime, granularity: Granularity, tz: ZoneInfo) -> dt.datetime:
    return period_of(moment, granularity, tz).astimezone(dt.UTC)


def periods(
    start: dt.datetime, end: dt.datetime, granularity: Granularity, tz: ZoneInfo
) -> list[dt.datetime]:
    """Every period [start, end) touches, as UTC instants, in order, empty ones included."""
    found: dict[dt.datetime, None] = {}
    moment = start
    while moment < end:
        found.setdefault(utc_period_of(moment, granularity, tz))
        moment += BUCKET
    return list(found)
