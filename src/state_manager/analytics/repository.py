"""The reads behind the reports: sums of the projection per 15-minute bucket, and the few row lists that
need more than sums (distinct customers, agent sessions). One tenant per call: row-level security names
one tenant per transaction, and an organization's roll-up adds its tenants' answers up."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    ColumnElement,
    RowMapping,
    Select,
    and_,
    case,
    distinct,
    func,
    literal,
    or_,
    select,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.analytics.models import (
    FACT_COLUMNS,
    analytics_agent_involvement,
    analytics_agent_sessions,
    analytics_conversations,
    analytics_facts,
    analytics_failures,
)
from state_manager.analytics.periods import Granularity, utc_period_of
from state_manager.conversations.lifecycle import OPEN_STATES
from state_manager.conversations.models import conversations
from state_manager.db.types import UTCDateTime

f, fl, ac, s = analytics_facts.c, analytics_failures.c, analytics_conversations.c, analytics_agent_sessions.c

AGENT_PREFIX = "agent:"


@dataclass(frozen=True, slots=True)
class Window:
    """What a report covers: [start, end) in UTC, aligned to buckets, and its filters."""

    start: dt.datetime
    end: dt.datetime
    agent: str | None  # "agent:<id>"
    business_number: str | None


def _is_agent(actor: Any) -> ColumnElement[bool]:
    # A range rather than LIKE: under row-level security PostgreSQL estimates only with leakproof
    # operators, which LIKE is not (a 100-fold misestimate, and a sort spilling to disk, was measured).
    return and_(actor >= AGENT_PREFIX, actor < AGENT_PREFIX[:-1] + chr(ord(AGENT_PREFIX[-1]) + 1))


def _filters(window: Window, actor: Any, number: Any) -> list[ColumnElement[bool]]:
    found: list[ColumnElement[bool]] = []
    if window.agent is not None:
        found.append(actor == window.agent)
    if window.business_number is not None:
        found.append(number == window.business_number)
    return found


async def fact_sums_by_bucket(
    conn: AsyncConnection, tenant_id: str, window: Window
) -> AsyncGenerator[RowMapping, None]:
    """Every fact column summed per bucket, streamed: a 90-day report has 8,640 buckets of 22 sums, and
    holding them all was its memory peak (issue 8, docs/benchmarks.md, "Memory")."""
    query: Select[Any] = (
        select(f.bucket, *(func.sum(f[name]).label(name) for name in FACT_COLUMNS))
        .where(
            f.tenant_id == tenant_id,
            f.bucket >= window.start,
            f.bucket < window.end,
            *_filters(window, f.actor, f.business_number_id),
        )
        .group_by(f.bucket)
    )
    async for row in (await conn.stream(query)).mappings():
        yield row


async def fact_sums_by_agent(conn: AsyncConnection, tenant_id: str, window: Window) -> list[dict[str, Any]]:
    query: Select[Any] = (
        select(f.actor, *(func.sum(f[name]).label(name) for name in FACT_COLUMNS))
        .where(
            f.tenant_id == tenant_id,
            f.bucket >= window.start,
            f.bucket < window.end,
            _is_agent(f.actor),
            *_filters(window, f.actor, f.business_number_id),
        )
        .group_by(f.actor)
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def pending_windows(
    conn: AsyncConnection, tenant_id: str, window: Window, until: dt.datetime
) -> list[dt.datetime]:
    """Reply windows of unanswered customer messages that ended in the window before `until` (now): they
    lapsed after the conversation was last projected."""
    query = select(ac.pending_window_ends_at).where(
        ac.tenant_id == tenant_id,
        ac.pending_window_ends_at >= window.start,
        ac.pending_window_ends_at < min(window.end, until),
        *_filters(window, ac.actor, ac.business_number_id),
    )
    return [moment for moment in (await conn.execute(query)).scalars() if moment is not None]


async def failure_codes(conn: AsyncConnection, tenant_id: str, window: Window) -> dict[str, int]:
    query = (
        select(fl.code, func.sum(fl.failed))
        .where(
            fl.tenant_id == tenant_id,
            fl.bucket >= window.start,
            fl.bucket < window.end,
            *_filters(window, fl.actor, fl.business_number_id),
        )
        .group_by(fl.code)
    )
    return {code: int(count) for code, count in (await conn.execute(query))}


async def open_by_state(conn: AsyncConnection, tenant_id: str, business_number: str | None) -> dict[str, int]:
    """The tenant's conversations open now, by state (the live table, not the projection)."""
    c = conversations.c
    query = (
        select(c.state, func.count())
        .where(c.tenant_id == tenant_id, c.state.in_([state.value for state in OPEN_STATES]))
        .group_by(c.state)
    )
    if business_number is not None:
        query = query.where(c.business_number_id == business_number)
    return {state: int(count) for state, count in (await conn.execute(query))}


@dataclass
class CustomerCounts:
    """Distinct customers, new customers (their first conversation) and conversations started: per
    period (UTC start), in the whole window, and per channel (customers, conversations)."""

    periods: dict[dt.datetime, tuple[int, int, int]]
    totals: tuple[int, int, int]
    channels: dict[str, tuple[int, int]]


async def customer_counts(
    conn: AsyncConnection, tenant_id: str, window: Window, granularity: Granularity, tz: ZoneInfo
) -> CustomerCounts:
    """Distinct counts do not add up across periods: they are counted from the conversations themselves,
    by PostgreSQL in its periods of `tz`; SQLite (the embedded default, smaller) hands the rows over."""
    where = (
        ac.tenant_id == tenant_id,
        ac.started_at >= window.start,
        ac.started_at < window.end,
        *_filters(window, ac.actor, ac.business_number_id),
    )
    if conn.dialect.name != "postgresql":
        rows = await conn.execute(
            select(ac.customer_id, ac.channel, ac.started_at, ac.customer_first).where(*where)
        )
        return _count_customers(list(rows), granularity, tz)
    counts = (
        func.count(distinct(ac.customer_id)),
        func.count().filter(ac.customer_first),
        func.count(),
    )
    period = func.date_trunc(granularity.value, ac.started_at, tz.key, type_=UTCDateTime()).label("period")
    per_period = await conn.execute(select(period, *counts).where(*where).group_by(period))
    totals = (await conn.execute(select(*counts).where(*where))).one()
    channels = await conn.execute(
        select(ac.channel, func.count(distinct(ac.customer_id)), func.count())
        .where(*where)
        .group_by(ac.channel)
    )
    return CustomerCounts(
        periods={start: (int(a), int(b), int(c)) for start, a, b, c in per_period},
        totals=(int(totals[0]), int(totals[1]), int(totals[2])),
        channels={channel: (int(a), int(b)) for channel, a, b in channels},
    )


def _count_customers(
    rows: Sequence[tuple[uuid.UUID, str, dt.datetime, bool]], granularity: Granularity, tz: ZoneInfo
) -> CustomerCounts:
    per_period: dict[dt.datetime, tuple[set[uuid.UUID], list[int]]] = defaultdict(lambda: (set(), [0, 0]))
    channels: dict[str, tuple[set[uuid.UUID], list[int]]] = defaultdict(lambda: (set(), [0]))
    for customer, channel, started_at, first in rows:
        customers, counts = per_period[utc_period_of(started_at, granularity, tz)]
        customers.add(customer)
        counts[0] += int(first)
        counts[1] += 1
        channels[channel][0].add(customer)
        channels[channel][1][0] += 1
    return CustomerCounts(
        periods={start: (len(seen), new, started) for start, (seen, (new, started)) in per_period.items()},
        totals=(len({row[0] for row in rows}), sum(int(row[3]) for row in rows), len(rows)),
        channels={channel: (len(seen), started) for channel, (seen, (started,)) in channels.items()},
    )


async def conversations_handled(conn: AsyncConnection, tenant_id: str, window: Window) -> dict[str, int]:
    """Per agent: the conversations the agent took part in during the window."""
    i = analytics_agent_involvement.c
    query = (
        select(i.agent, func.count())
        .where(
            i.tenant_id == tenant_id,
            i.first_at < window.end,
            or_(i.last_at.is_(None), i.last_at >= window.start),
            *_filters(window, i.agent, i.business_number_id),
        )
        .group_by(i.agent)
    )
    return {agent: int(count) for agent, count in (await conn.execute(query))}


@dataclass
class StintFigures:
    handled: int  # stints that ended in the window
    handle_seconds: float
    overlap_seconds: float  # time in conversations inside the window (up to `until`)
    peak: int


async def stint_figures(
    conn: AsyncConnection, tenant_id: str, window: Window, until: dt.datetime
) -> dict[str, StintFigures]:
    """Per agent, from the agent's stints (joined to left) that overlap the window, in SQL: epoch seconds
    make the arithmetic the same on both databases."""
    start_s, until_s = window.start.timestamp(), until.timestamp()
    ended_in_window = and_(s.left_at >= window.start, s.left_at < window.end)
    hi = case((or_(s.left_s.is_(None), s.left_s > until_s), literal(until_s)), else_=s.left_s)
    lo = case((s.joined_s < start_s, literal(start_s)), else_=s.joined_s)
    overlapping = (
        s.tenant_id == tenant_id,
        s.joined_at < window.end,
        or_(s.left_at.is_(None), s.left_at > window.start),
        *_filters(window, s.agent, s.business_number_id),
    )
    sums = (
        select(
            s.agent,
            func.count(case((ended_in_window, 1))),
            func.sum(case((ended_in_window, s.left_s - s.joined_s), else_=0.0)),
            func.sum(case((hi > lo, hi - lo), else_=0.0)),
        )
        .where(*overlapping)
        .group_by(s.agent)
    )
    figures = {
        agent: StintFigures(int(count), float(handle or 0), float(overlap or 0), 0)
        for agent, count, handle, overlap in (await conn.execute(sums))
    }
    # The peak: a running sum of +1 at each (clipped) start and -1 at each end, leaving before joining.
    clipped = select(s.agent, lo.label("lo"), hi.label("hi")).where(*overlapping, hi > lo).cte("clipped")
    changes = union_all(
        select(clipped.c.agent, clipped.c.lo.label("at"), literal(1).label("change")),
        select(clipped.c.agent, clipped.c.hi.label("at"), literal(-1).label("change")),
    ).subquery("changes")
    load = select(
        changes.c.agent,
        func.sum(changes.c.change)
        .over(partition_by=changes.c.agent, order_by=(changes.c.at, changes.c.change), rows=(None, 0))
        .label("load"),
    ).subquery("load")
    peaks = select(load.c.agent, func.max(load.c.load)).group_by(load.c.agent)
    for agent, peak in await conn.execute(peaks):
        figures[agent].peak = int(peak)
    return figures
