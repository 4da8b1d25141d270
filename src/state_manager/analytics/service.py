"""The reports: the projection's sums read per tenant, added up (one tenant, or an organization's), put
in the periods of the caller's time zone, and turned into the metrics docs/analytics.md defines."""

from __future__ import annotations

import datetime as dt
import enum
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.analytics import repository as repo
from state_manager.analytics.facts import BUCKET_MINUTES, bucket_of
from state_manager.analytics.models import FACT_COLUMNS
from state_manager.analytics.projector import Freshness
from state_manager.db import Database

T = TypeVar("T")
BUCKET = dt.timedelta(minutes=BUCKET_MINUTES)
TOP_FAILURE_CODES = 10


class Granularity(enum.StrEnum):
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"


@dataclass(frozen=True, slots=True)
class ReportRequest:
    tenant_ids: Sequence[str]
    window: repo.Window
    granularity: Granularity
    tz: ZoneInfo
    now: dt.datetime


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


def periods(request: ReportRequest) -> list[dt.datetime]:
    """Every period the window touches, in order, empty ones included."""
    found: dict[dt.datetime, None] = {}
    moment = request.window.start
    while moment < request.window.end:
        found.setdefault(period_of(moment, request.granularity, request.tz).astimezone(dt.UTC))
        moment += BUCKET
    return list(found)


async def _per_tenant(
    db: Database, tenant_ids: Sequence[str], read: Callable[[AsyncConnection, str], Awaitable[T]]
) -> list[T]:
    answers = []
    for tenant_id in tenant_ids:
        async with db.transaction(tenant_id, write=False) as conn:
            answers.append(await read(conn, tenant_id))
    return answers


def _add_up(rows: Iterable[Mapping[str, Any]], key: str) -> dict[Any, dict[str, float]]:
    sums: dict[Any, dict[str, float]] = defaultdict(lambda: dict.fromkeys(FACT_COLUMNS, 0.0))
    for row in rows:
        target = sums[row[key]]
        for name in FACT_COLUMNS:
            target[name] += float(row[name] or 0)
    return sums


def _ratio(part: float, whole: float, digits: int = 3) -> float | None:
    return None if not whole else round(part / whole, digits)


def conversation_metrics(sums: Mapping[str, float]) -> dict[str, float | None]:
    ended = sums["closed"] + sums["expired"]
    return {
        "started": int(sums["started"]),
        "closed": int(sums["closed"]),
        "expired": int(sums["expired"]),
        "reopened": int(sums["reopened"]),
        "unanswered": int(sums["unanswered"]),
        "windows_lapsed": int(sums["windows_lapsed"]),
        "first_response_count": int(sums["first_responses"]),
        "first_response_avg_seconds": _ratio(sums["first_response_seconds"], sums["first_responses"]),
        "reply_count": int(sums["replies"]),
        "reply_avg_seconds": _ratio(sums["reply_seconds"], sums["replies"]),
        "resolution_count": int(sums["closed"]),
        "resolution_avg_seconds": _ratio(sums["resolution_seconds"], sums["closed"]),
        "duration_avg_seconds": _ratio(sums["ended_seconds"], ended),
        "messages_per_conversation": _ratio(sums["conversation_messages"], sums["started"]),
    }


def message_metrics(sums: Mapping[str, float]) -> dict[str, float | None]:
    outbound = sums["outbound"]
    return {
        "inbound": int(sums["inbound"]),
        "outbound": int(outbound),
        "delivered": int(sums["delivered"]),
        "read": int(sums["read"]),
        "failed": int(sums["failed"]),
        "delivered_rate": _ratio(sums["delivered"], outbound, 4),
        "read_rate": _ratio(sums["read"], outbound, 4),
        "failed_rate": _ratio(sums["failed"], outbound, 4),
        "deliver_avg_seconds": _ratio(sums["delivery_seconds"], sums["delivery_timed"]),
        "read_avg_seconds": _ratio(sums["read_seconds"], sums["read"]),
    }


CONVERSATION_METRICS = tuple(conversation_metrics(dict.fromkeys(FACT_COLUMNS, 0.0)))
MESSAGE_METRICS = tuple(message_metrics(dict.fromkeys(FACT_COLUMNS, 0.0)))


def _series(
    request: ReportRequest,
    by_bucket: Mapping[dt.datetime, Mapping[str, float]],
    metrics: Callable[[Mapping[str, float]], dict[str, Any]],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    by_period: dict[dt.datetime, dict[str, float]] = {
        start: dict.fromkeys(FACT_COLUMNS, 0.0) for start in periods(request)
    }
    totals = dict.fromkeys(FACT_COLUMNS, 0.0)
    for bucket, sums in by_bucket.items():
        target = by_period[period_of(bucket, request.granularity, request.tz).astimezone(dt.UTC)]
        for name in FACT_COLUMNS:
            target[name] += sums[name]
            totals[name] += sums[name]
    series = [
        {"period": start.astimezone(request.tz).isoformat(), **metrics(sums)}
        for start, sums in by_period.items()
    ]
    return metrics(totals), series


async def _bucket_sums(db: Database, request: ReportRequest) -> dict[dt.datetime, dict[str, float]]:
    answers = await _per_tenant(
        db, request.tenant_ids, lambda conn, tenant: repo.fact_sums_by_bucket(conn, tenant, request.window)
    )
    return _add_up((row for rows in answers for row in rows), "bucket")


async def conversations_report(db: Database, request: ReportRequest) -> dict[str, Any]:
    by_bucket = await _bucket_sums(db, request)
    # Reply windows that lapsed after their conversation was last projected (no event marks the moment).
    lapsed = await _per_tenant(
        db,
        request.tenant_ids,
        lambda conn, tenant: repo.pending_windows(conn, tenant, request.window, request.now),
    )
    for moment in (moment for moments in lapsed for moment in moments):
        by_bucket.setdefault(bucket_of(moment), dict.fromkeys(FACT_COLUMNS, 0.0))["windows_lapsed"] += 1
    totals, series = _series(request, by_bucket, conversation_metrics)
    now: Counter[str] = Counter()
    for counts in await _per_tenant(
        db,
        request.tenant_ids,
        lambda conn, tenant: repo.open_by_state(conn, tenant, request.window.business_number),
    ):
        now.update(counts)
    open_now = {state: now.get(state, 0) for state in ("pending", "active", "waiting", "error")}
    return {"totals": totals, "series": series, "now": {"open": sum(open_now.values()), **open_now}}


async def messages_report(db: Database, request: ReportRequest) -> dict[str, Any]:
    totals, series = _series(request, await _bucket_sums(db, request), message_metrics)
    codes: Counter[str] = Counter()
    for found in await _per_tenant(
        db, request.tenant_ids, lambda conn, tenant: repo.failure_codes(conn, tenant, request.window)
    ):
        codes.update(found)
    top = sorted(codes.items(), key=lambda item: (-item[1], item[0]))[:TOP_FAILURE_CODES]
    return {
        "totals": totals,
        "series": series,
        "failure_codes": [{"code": code, "count": count} for code, count in top],
    }


async def customers_report(db: Database, request: ReportRequest) -> dict[str, Any]:
    started: list[tuple[str, Any, str, dt.datetime]] = []
    returning: set[tuple[str, Any]] = set()
    for tenant_id in request.tenant_ids:
        async with db.transaction(tenant_id, write=False) as conn:
            rows = await repo.conversations_started(conn, tenant_id, request.window)
            started.extend((tenant_id, customer, channel, at) for customer, channel, at in rows)
            before = await repo.customers_seen_before(conn, tenant_id, request.window)
            returning.update((tenant_id, customer) for customer in before)

    # A customer is new in the period of their first conversation ever; returning in every other.
    first_in_window: dict[tuple[str, Any], dt.datetime] = {}
    for tenant_id, customer, _, at in started:
        key = (tenant_id, customer)
        if key not in returning and (key not in first_in_window or at < first_in_window[key]):
            first_in_window[key] = at

    def period(moment: dt.datetime) -> dt.datetime:
        return period_of(moment, request.granularity, request.tz).astimezone(dt.UTC)

    seen: dict[dt.datetime, set[tuple[str, Any]]] = {start: set() for start in periods(request)}
    conversations_in: Counter[dt.datetime] = Counter()
    channel_customers: dict[str, set[tuple[str, Any]]] = defaultdict(set)
    channel_conversations: Counter[str] = Counter()
    for tenant_id, customer, channel, at in started:
        seen[period(at)].add((tenant_id, customer))
        conversations_in[period(at)] += 1
        channel_customers[channel].add((tenant_id, customer))
        channel_conversations[channel] += 1
    new_in: Counter[dt.datetime] = Counter(period(at) for at in first_in_window.values())

    def metrics(customers: int, new: int, conversations: int) -> dict[str, Any]:
        return {
            "customers": customers,
            "new": new,
            "returning": customers - new,
            "conversations": conversations,
            "conversations_per_customer": _ratio(conversations, customers),
        }

    everyone = {(tenant_id, customer) for tenant_id, customer, _, _ in started}
    by_bucket = await _bucket_sums(db, request)
    hours: Counter[int] = Counter()
    weekdays: Counter[int] = Counter()
    for bucket, sums in by_bucket.items():
        local = bucket.astimezone(request.tz)
        hours[local.hour] += int(sums["inbound"])
        weekdays[local.weekday()] += int(sums["inbound"])
    return {
        "totals": metrics(len(everyone), len(first_in_window), len(started)),
        "series": [
            {
                "period": start.astimezone(request.tz).isoformat(),
                **metrics(len(customers), new_in[start], conversations_in[start]),
            }
            for start, customers in seen.items()
        ],
        "channels": [
            {
                "channel": channel,
                "customers": len(channel_customers[channel]),
                "conversations": channel_conversations[channel],
            }
            for channel in sorted(channel_customers)
        ],
        "busiest_hours": [{"hour": hour, "inbound": hours[hour]} for hour in range(24)],
        "busiest_weekdays": [{"weekday": day, "inbound": weekdays[day]} for day in range(7)],
    }


async def agents_report(db: Database, request: ReportRequest) -> dict[str, Any]:
    window = request.window
    sums_by_agent: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(FACT_COLUMNS, 0.0))
    handled: Counter[str] = Counter()
    stints: list[tuple[str, dt.datetime, dt.datetime | None]] = []
    for tenant_id in request.tenant_ids:
        async with db.transaction(tenant_id, write=False) as conn:
            for agent, sums in _add_up(
                await repo.fact_sums_by_agent(conn, tenant_id, window), "actor"
            ).items():
                for name, value in sums.items():
                    sums_by_agent[agent][name] += value
            handled.update(await repo.conversations_handled(conn, tenant_id, window))
            stints.extend(await repo.agent_sessions(conn, tenant_id, window))

    # Concurrent load over the part of the window that has passed; a stint still open runs until now.
    until = min(window.end, request.now)
    span = max((until - window.start).total_seconds(), 0.0)
    handle_count: Counter[str] = Counter()
    handle_seconds: dict[str, float] = defaultdict(float)
    overlap: dict[str, float] = defaultdict(float)
    changes: dict[str, list[tuple[dt.datetime, int]]] = defaultdict(list)
    for agent, joined, left in stints:
        if left is not None and window.start <= left < window.end:
            handle_count[agent] += 1
            handle_seconds[agent] += max(0.0, (left - joined).total_seconds())
        start, end = max(joined, window.start), min(left or until, until)
        if end > start:
            overlap[agent] += (end - start).total_seconds()
            changes[agent] += [(start, 1), (end, -1)]

    def peak(agent: str) -> int:
        load = highest = 0
        for _, change in sorted(changes[agent], key=lambda item: (item[0], item[1])):  # leaving first
            load += change
            highest = max(highest, load)
        return highest

    agents = sorted(set(sums_by_agent) | set(handled) | set(handle_count) | set(overlap))
    rows = []
    for agent in agents:
        sums = sums_by_agent[agent]
        rows.append(
            {
                "agent": agent.removeprefix(repo.AGENT_PREFIX),
                "conversations_handled": handled[agent],
                "first_response_count": int(sums["first_responses"]),
                "first_response_avg_seconds": _ratio(sums["first_response_seconds"], sums["first_responses"]),
                "reply_count": int(sums["replies"]),
                "reply_avg_seconds": _ratio(sums["reply_seconds"], sums["replies"]),
                "messages_sent": int(sums["outbound"]),
                "handle_count": handle_count[agent],
                "handle_avg_seconds": _ratio(handle_seconds[agent], handle_count[agent]),
                "concurrent_avg": _ratio(overlap[agent], span),
                "concurrent_peak": peak(agent),
            }
        )
    return {"agents": rows}


async def merged_freshness(
    tenant_ids: Sequence[str], catch_up: Callable[[str], Awaitable[Freshness]]
) -> Freshness:
    rebuilding, behind = False, 0
    for tenant_id in tenant_ids:
        found = await catch_up(tenant_id)
        rebuilding = rebuilding or found.rebuilding
        behind += found.events_behind
    return Freshness(rebuilding=rebuilding, events_behind=behind)
