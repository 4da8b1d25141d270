"""The reads behind the reports: sums of the projection per 15-minute bucket, and the few row lists that
need more than sums (distinct customers, agent sessions). One tenant per call: row-level security names
one tenant per transaction, and an organization's roll-up adds its tenants' answers up."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, func, literal, select, union
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.analytics.models import (
    FACT_COLUMNS,
    analytics_agent_sessions,
    analytics_conversations,
    analytics_facts,
    analytics_failures,
)
from state_manager.conversations.lifecycle import OPEN_STATES
from state_manager.conversations.models import conversations

f, fl, ac, s = analytics_facts.c, analytics_failures.c, analytics_conversations.c, analytics_agent_sessions.c

AGENT_PREFIX = "agent:"


@dataclass(frozen=True, slots=True)
class Window:
    """What a report covers: [start, end) in UTC, aligned to buckets, and its filters."""

    start: dt.datetime
    end: dt.datetime
    agent: str | None  # "agent:<id>"
    business_number: str | None


def _filters(window: Window, actor: Any, number: Any) -> list[ColumnElement[bool]]:
    found: list[ColumnElement[bool]] = []
    if window.agent is not None:
        found.append(actor == window.agent)
    if window.business_number is not None:
        found.append(number == window.business_number)
    return found


async def fact_sums_by_bucket(conn: AsyncConnection, tenant_id: str, window: Window) -> list[dict[str, Any]]:
    """Every fact column summed per bucket."""
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
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def fact_sums_by_agent(conn: AsyncConnection, tenant_id: str, window: Window) -> list[dict[str, Any]]:
    query: Select[Any] = (
        select(f.actor, *(func.sum(f[name]).label(name) for name in FACT_COLUMNS))
        .where(
            f.tenant_id == tenant_id,
            f.bucket >= window.start,
            f.bucket < window.end,
            f.actor.startswith(AGENT_PREFIX, autoescape=True),
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
    return {code: int(count) for code, count in (await conn.execute(query)).tuples()}


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
    return {state: int(count) for state, count in (await conn.execute(query)).tuples()}


async def conversations_started(
    conn: AsyncConnection, tenant_id: str, window: Window
) -> list[tuple[uuid.UUID, str, dt.datetime]]:
    """(customer, channel, started_at) of each conversation started in the window."""
    query = select(ac.customer_id, ac.channel, ac.started_at).where(
        ac.tenant_id == tenant_id,
        ac.started_at >= window.start,
        ac.started_at < window.end,
        *_filters(window, ac.actor, ac.business_number_id),
    )
    return [
        (customer, channel, started) for customer, channel, started in (await conn.execute(query)).tuples()
    ]


async def customers_seen_before(conn: AsyncConnection, tenant_id: str, window: Window) -> set[uuid.UUID]:
    """Customers of conversations started in the window who had a conversation before it (on any number,
    with any agent: they are returning customers of the tenant)."""
    in_window = select(ac.customer_id).where(
        ac.tenant_id == tenant_id,
        ac.started_at >= window.start,
        ac.started_at < window.end,
        *_filters(window, ac.actor, ac.business_number_id),
    )
    query = (
        select(ac.customer_id)
        .where(ac.tenant_id == tenant_id, ac.started_at < window.start, ac.customer_id.in_(in_window))
        .distinct()
    )
    return set((await conn.execute(query)).scalars())


async def conversations_handled(conn: AsyncConnection, tenant_id: str, window: Window) -> dict[str, int]:
    """Per agent: the conversations the agent was in during the window, or wrote in."""
    wrote = select(f.actor.label("agent"), f.conversation_id).where(
        f.tenant_id == tenant_id,
        f.bucket >= window.start,
        f.bucket < window.end,
        f.outbound > 0,
        f.actor.startswith(AGENT_PREFIX, autoescape=True),
        *_filters(window, f.actor, f.business_number_id),
    )
    joined = select(s.agent, s.conversation_id).where(
        s.tenant_id == tenant_id,
        s.joined_at < window.end,
        (s.left_at.is_(None)) | (s.left_at > window.start),
        *_filters(window, s.agent, s.business_number_id),
    )
    both = union(wrote, joined).subquery()
    query = select(both.c.agent, func.count(literal(1))).group_by(both.c.agent)
    return {agent: int(count) for agent, count in (await conn.execute(query)).tuples()}


async def agent_sessions(
    conn: AsyncConnection, tenant_id: str, window: Window
) -> Sequence[tuple[str, dt.datetime, dt.datetime | None]]:
    """(agent, joined_at, left_at) of every stint that overlaps the window."""
    query = select(s.agent, s.joined_at, s.left_at).where(
        s.tenant_id == tenant_id,
        s.joined_at < window.end,
        (s.left_at.is_(None)) | (s.left_at > window.start),
        *_filters(window, s.agent, s.business_number_id),
    )
    return list((await conn.execute(query)).tuples())
