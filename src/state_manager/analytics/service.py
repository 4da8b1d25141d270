"""The reports: the projection's sums read per tenant, added up (one tenant, or an organization's), put
in the periods of the caller's time zone, and turned into the metrics docs/analytics.md defines."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from sqlalchemy import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.analytics import repository as repo
from state_manager.analytics.facts import bucket_of
from state_manager.analytics.models import FACT_COLUMNS
from state_manager.analytics.periods import Granularity, utc_period_of
from state_manager.analytics.periods import periods as all_periods
from state_manager.analytics.projector import Freshness
from state_manager.db import Database

T = TypeVar("T")
TOP_FAILURE_CODES = 10


@dataclass(frozen=True, slots=True)
class ReportRequest:
    tenant_ids: Sequence[str]
    window: repo.Window
    granularity: Granularity
    tz: ZoneInfo
    now: dt.datetime


def periods(request: ReportRequest) -> list[dt.datetime]:
    return all_periods(request.window.start, request.window.end, request.granularity, request.tz)


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
    by_period: Mapping[dt.datetime, Mapping[str, float]],
    metrics: Callable[[Mapping[str, float]], dict[str, Any]],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    totals = dict.fromkeys(FACT_COLUMNS, 0.0)
    for sums in by_period.values():
        for name in FACT_COLUMNS:
            totals[name] += sums[name]
    series = [
        {"period": start.astimezone(request.tz).isoformat(), **metrics(sums)}
        for start, sums in by_period.items()
    ]
    return metrics(totals), series


async def _each_bucket(
    db: Database, request: ReportRequest, take: Callable[[dt.datetime, RowMapping], None]
) -> None:
    """Hands every tenant's sums of each bucket to `take` as they are read, never all of them at once."""
    for tenant_id in request.tenant_ids:
        async with (
            db.transaction(tenant_id, write=False) as conn,
            contextlib.aclosing(repo.fact_sums_by_bucket(conn, tenant_id, request.window)) as rows,
        ):
            async for row in rows:
                take(row["bucket"], row)


async def _period_sums(db: Database, request: ReportRequest) -> dict[dt.datetime, dict[str, float]]:
    """Every fact column summed per period of the request, in order, empty periods included."""
    by_period = {start: dict.fromkeys(FACT_COLUMNS, 0.0) for start in periods(request)}

    def take(bucket: dt.datetime, row: RowMapping) -> None:
        target = by_period[utc_period_of(bucket, request.granularity, request.tz)]
        for name in FACT_COLUMNS:
            target[name] += float(row[name] or 0)

    await _each_bucket(db, request, take)
    return by_period


async def conversations_report(db: Database, request: ReportRequest) -> dict[str, Any]:
    by_period = await _period_sums(db, request)
    # Reply windows that lapsed after their conversation was last projected (no event marks the moment).
    lapsed = await _per_tenant(
        db,
        request.tenant_ids,
        lambda conn, tenant: repo.pending_windows(conn, tenant, request.window, request.now),
    )
    for moment in (moment for moments in lapsed for moment in moments):
        by_period[utc_period_of(bucket_of(moment), request.granularity, request.tz)]["windows_lapsed"] += 1
    totals, series = _series(request, by_period, conversation_metrics)
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
    totals, series = _series(request, await _period_sums(db, request), message_metrics)
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
    per_period: dict[dt.datetime, list[int]] = {start: [0, 0, 0] for start in periods(request)}
    totals = [0, 0, 0]
    channels: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    # Customers are the tenant's own: an organization's distinct customers are its tenants' added up.
    for counts in await _per_tenant(
        db,
        request.tenant_ids,
        lambda conn, tenant: repo.customer_counts(
            conn, tenant, request.window, request.granularity, request.tz
        ),
    ):
        for start, figures in counts.periods.items():
            per_period[start] = [a + b for a, b in zip(per_period[start], figures, strict=True)]
        totals = [a + b for a, b in zip(totals, counts.totals, strict=True)]
        for channel, (customers, conversations) in counts.channels.items():
            channels[channel][0] += customers
            channels[channel][1] += conversations

    def metrics(customers: int, new: int, conversations: int) -> dict[str, Any]:
        return {
            "customers": customers,
            "new": new,
            "returning": customers - new,
            "conversations": conversations,
            "conversations_per_customer": _ratio(conversations, customers),
        }

    hours: Counter[int] = Counter()
    weekdays: Counter[int] = Counter()

    def take(bucket: dt.datetime, row: RowMapping) -> None:
        local = bucket.astimezone(request.tz)
        hours[local.hour] += int(row["inbound"] or 0)
        weekdays[local.weekday()] += int(row["inbound"] or 0)

    await _each_bucket(db, request, take)
    return {
        "totals": metrics(*totals),
        "series": [
            {"period": start.astimezone(request.tz).isoformat(), **metrics(*figures)}
            for start, figures in per_period.items()
        ],
        "channels": [
            {"channel": channel, "customers": customers, "conversations": conversations}
            for channel, (customers, conversations) in sorted(channels.items())
        ],
        "busiest_hours": [{"hour": hour, "inbound": hours[hour]} for hour in range(24)],
        "busiest_weekdays": [{"weekday": day, "inbound": weekdays[day]} for day in range(7)],
    }


async def agents_report(db: Database, request: ReportRequest) -> dict[str, Any]:
    window = request.window
    until = min(window.end, request.now)  # concurrent load over the part of the window that has passed
    span = max((until - window.start).total_seconds(), 0.0)
    sums_by_agent: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(FACT_COLUMNS, 0.0))
    handled: Counter[str] = Counter()
    stints: dict[str, repo.StintFigures] = {}
    for tenant_id in request.tenant_ids:
        async with db.transaction(tenant_id, write=False) as conn:
            per_agent = _add_up(await repo.fact_sums_by_agent(conn, tenant_id, window), "actor")
            for agent, sums in per_agent.items():
                for name, value in sums.items():
                    sums_by_agent[agent][name] += value
            handled.update(await repo.conversations_handled(conn, tenant_id, window))
            for agent, found in (await repo.stint_figures(conn, tenant_id, window, until)).items():
                known = stints.setdefault(agent, repo.StintFigures(0, 0.0, 0.0, 0))
                known.handled += found.handled
                known.handle_seconds += found.handle_seconds
                known.overlap_seconds += found.overlap_seconds
                # An agent in several tenants' conversations at once: their peaks may not coincide.
                known.peak = max(known.peak, found.peak)

    rows = []
    for agent in sorted(set(sums_by_agent) | set(handled) | set(stints)):
        sums = sums_by_agent[agent]
        stint = stints.get(agent, repo.StintFigures(0, 0.0, 0.0, 0))
        rows.append(
            {
                "agent": agent.removeprefix(repo.AGENT_PREFIX),
                "conversations_handled": handled[agent],
                "first_response_count": int(sums["first_responses"]),
                "first_response_avg_seconds": _ratio(sums["first_response_seconds"], sums["first_responses"]),
                "reply_count": int(sums["replies"]),
                "reply_avg_seconds": _ratio(sums["reply_seconds"], sums["replies"]),
                "messages_sent": int(sums["outbound"]),
                "handle_count": stint.handled,
                "handle_avg_seconds": _ratio(stint.handle_seconds, stint.handled),
                "concurrent_avg": _ratio(stint.overlap_seconds, span),
                "concurrent_peak": stint.peak,
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
