"""A report request from start to answer: the window and zone it covers, its tenants caught up, the
report built, the envelope around it; and CSV."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select

from state_manager.analytics import projector, service
from state_manager.analytics.facts import bucket_of
from state_manager.analytics.periods import BUCKET, Granularity, utc_period_of
from state_manager.analytics.repository import AGENT_PREFIX, Window
from state_manager.analytics.service import ReportRequest
from state_manager.db import Database
from state_manager.db.types import utcnow
from state_manager.errors import BadRequest, NotFound
from state_manager.events.relay import EventRelay
from state_manager.tenants.models import organizations, tenants

# Batches of projection work a report may do for each of its tenants before answering with what is
# there (the background projector does the rest; `freshness` says how far behind the answer is).
CATCH_UP_STEPS = 20
RELAY_NUDGES = 5
DEFAULT_PERIODS = {Granularity.HOUR: 24, Granularity.DAY: 7, Granularity.WEEK: 4}
LONGEST = {
    Granularity.HOUR: dt.timedelta(days=31),
    Granularity.DAY: dt.timedelta(days=366),
    Granularity.WEEK: dt.timedelta(days=731),
}


@dataclass(frozen=True, slots=True)
class Scope:
    tenant_ids: Sequence[str]
    tenant_id: str | None = None
    organization_id: str | None = None


@dataclass(frozen=True, slots=True)
class Params:
    start: str | None
    end: str | None
    granularity: Granularity
    tz: str | None
    agent: str | None
    business_number: str | None


async def organization_scope(db: Database, organization_id: str) -> Scope:
    async with db.transaction(None, write=False) as conn:
        known = (
            await conn.execute(select(organizations.c.id).where(organizations.c.id == organization_id))
        ).first()
        if known is None:
            raise NotFound(f"organization {organization_id!r} not found")
        found = (
            await conn.execute(
                select(tenants.c.id)
                .where(tenants.c.organization_id == organization_id)
                .order_by(tenants.c.id)
            )
        ).scalars()
        return Scope(tenant_ids=tuple(found), organization_id=organization_id)


async def _zone(db: Database, scope: Scope, requested: str | None) -> ZoneInfo:
    name = requested
    if name is None and scope.tenant_id is not None:
        async with db.transaction(None, write=False) as conn:
            settings = (
                await conn.execute(select(tenants.c.settings).where(tenants.c.id == scope.tenant_id))
            ).scalar_one_or_none()
        name = (settings or {}).get("timezone")
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise BadRequest(f"unknown time zone {name!r}: use an IANA name such as Europe/Madrid") from exc


def _moment(value: str, tz: ZoneInfo, name: str) -> dt.datetime:
    text = value.strip()
    try:
        if len(text) == 10:  # a date: its midnight in the report's zone
            day = dt.date.fromisoformat(text)
            moment = dt.datetime(day.year, day.month, day.day, tzinfo=tz)
        else:
            moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequest(f"`{name}` is an ISO-8601 time with a zone, or a date (YYYY-MM-DD)") from exc
    if moment.tzinfo is None:
        raise BadRequest(f"`{name}` needs a zone (e.g. 2026-12-01T00:00:00Z), or give a date")
    if not dt.datetime(2000, 1, 1, tzinfo=dt.UTC) <= moment < dt.datetime(2100, 1, 1, tzinfo=dt.UTC):
        raise BadRequest(f"`{name}` must lie between 2000-01-01 and 2100-01-01")
    return moment.astimezone(dt.UTC)


def _ceil(moment: dt.datetime) -> dt.datetime:
    floored = bucket_of(moment)
    return floored if floored == moment else floored + BUCKET


def window_of(
    params: Params, tz: ZoneInfo, now: dt.datetime, periods: int | None = None
) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) in UTC on bucket edges. By default the last few periods, the current one included."""
    end = _ceil(_moment(params.end, tz, "to") if params.end else now)
    if params.start:
        start = bucket_of(_moment(params.start, tz, "from"))
    else:
        first = end - BUCKET
        for _ in range((periods or DEFAULT_PERIODS[params.granularity]) - 1):
            first = utc_period_of(first, params.granularity, tz) - BUCKET
        start = utc_period_of(first, params.granularity, tz)
    if end <= start:
        raise BadRequest("`to` must come after `from`")
    if end - start > LONGEST[params.granularity]:
        days = LONGEST[params.granularity].days
        raise BadRequest(f"a report by {params.granularity} covers {days} days at most")
    return start, end


async def _caught_up(db: Database, relay: EventRelay, tenant_id: str) -> projector.Freshness:
    # Events of writes acknowledged a moment ago may not be numbered yet: number them now, so that the
    # report reflects them.
    for _ in range(RELAY_NUDGES):
        if not await relay.relay_once(tenant_id):
            break
    return await projector.catch_up(db, tenant_id, max_steps=CATCH_UP_STEPS)


REPORTS: dict[str, Callable[[Database, ReportRequest], Awaitable[dict[str, Any]]]] = {
    "conversations": service.conversations_report,
    "messages": service.messages_report,
    "customers": service.customers_report,
    "agents": service.agents_report,
}


async def run(
    db: Database, relay: EventRelay, scope: Scope, params: Params, kind: str, *, periods: int | None = None
) -> dict[str, Any]:
    """The report `kind`; without `from`, it covers the last `periods` periods (default: a few)."""
    tz = await _zone(db, scope, params.tz)
    now = utcnow()
    start, end = window_of(params, tz, now, periods)
    window = Window(
        start=start,
        end=end,
        agent=None if params.agent is None else AGENT_PREFIX + params.agent,
        business_number=params.business_number,
    )
    freshness = await service.merged_freshness(
        scope.tenant_ids, lambda tenant_id: _caught_up(db, relay, tenant_id)
    )
    request = ReportRequest(scope.tenant_ids, window, params.granularity, tz, now)
    body = await REPORTS[kind](db, request)
    return {
        "scope": {
            "tenant_id": scope.tenant_id,
            "organization_id": scope.organization_id,
            "tenant_ids": list(scope.tenant_ids),
        },
        "from": start.astimezone(tz),
        "to": end.astimezone(tz),
        "granularity": params.granularity.value,
        "timezone": tz.key,
        "filters": {"agent": params.agent, "business_number": params.business_number},
        "freshness": {
            "complete": freshness.complete,
            "rebuilding": freshness.rebuilding,
            "events_behind": freshness.events_behind,
        },
        **body,
    }


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)
    return out.getvalue()
