"""The system health report: this process's request and cache figures (from the Prometheus registry, every
worker's when several share PROMETHEUS_MULTIPROC_DIR), and the database-wide backlogs and sizes.

Each part is computed on its own and within a short timeout: a dependency that is away or slow makes its
own part `PartFailed`, never the report an error (docs/analytics.md, "System health").
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import math
import os
import socket
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from sqlalchemy import ColumnElement, Table, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

import state_manager.db.tables  # noqa: F401  (every table in the metadata)
from state_manager.analytics.system_schemas import (
    CacheFigures,
    CacheRatios,
    DatabaseFigures,
    EventFigures,
    OutboxFigures,
    PartDisabled,
    PartFailed,
    QueueFigures,
    RedisFigures,
    RequestFigures,
    RouteFigures,
    SystemHealth,
    TableFigures,
)
from state_manager.cache import LookupCache
from state_manager.cache.lookups import CACHES
from state_manager.cache.shared import RedisTier
from state_manager.db import Database, metadata
from state_manager.events.models import events as events_table
from state_manager.events.service import EventSystem
from state_manager.observability import metrics
from state_manager.queues.consumer import QueueConsumers
from state_manager.queues.models import broker_outbox
from state_manager.tenants.models import tenants

T = TypeVar("T")
SizesFrom = Literal["catalog", "dbstat", "file"]

# Redis, RabbitMQ and the database's ping: a healthy one answers in milliseconds.
DEPENDENCY_TIMEOUT_SECONDS = 1.0
# The database's backlog and size queries, which read a little more.
DATABASE_TIMEOUT_SECONDS = 5.0
QUANTILES = (0.5, 0.95, 0.99)
TIERS = ("local", "redis")
CSV_COLUMNS = (
    "method",
    "route",
    "requests",
    "errors",
    "client_errors",
    "error_rate",
    "requests_per_second",
    "p50_ms",
    "p95_ms",
    "p99_ms",
)

# When this process started (its modules are imported at start): the request counts are since then.
_STARTED_AT = dt.datetime.now(dt.UTC)
_STARTED_MONOTONIC = time.monotonic()

_REQUESTS = "state_manager_http_requests_total"
_LATENCY_BUCKET = "state_manager_http_request_duration_seconds_bucket"
_CACHE_HITS = "state_manager_cache_hits_total"
_CACHE_MISSES = "state_manager_cache_misses_total"
_WANTED = frozenset({_REQUESTS, _LATENCY_BUCKET, _CACHE_HITS, _CACHE_MISSES})

Samples = dict[str, list[tuple[dict[str, str], float]]]


def instance_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def uptime_seconds() -> float:
    return time.monotonic() - _STARTED_MONOTONIC


def workers_merged() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def describe(exc: BaseException, timeout: float | None = None) -> str:
    if isinstance(exc, TimeoutError) and timeout is not None:
        return f"no answer within {timeout:g} s"
    message = str(exc).strip()
    described = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return described[:300]


# --- metrics -----------------------------------------------------------------------------------------


def samples() -> Samples:
    """The samples the report reads, from the registry /metrics renders (every worker's, or this one's)."""
    found: Samples = defaultdict(list)
    for family in metrics.registry().collect():
        for sample in family.samples:
            if sample.name in _WANTED:
                found[sample.name].append((sample.labels, sample.value))
    return found


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The q-quantile of a histogram as Prometheus' histogram_quantile estimates it: found in the bucket
    where the cumulative count reaches q * total, interpolated linearly inside it (the first bucket starts
    at 0; a rank in the +Inf bucket answers the highest finite bound). `buckets`: (upper bound,
    cumulative count), sorted, the last one +Inf. None without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / (cumulative - below)
        lower, below = upper, cumulative
    return lower


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def request_figures(found: Samples | None = None) -> RequestFigures:
    found = samples() if found is None else found
    uptime = uptime_seconds()
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])  # requests, 5xx, 4xx
    for labels, value in found.get(_REQUESTS, []):
        figures = counts[(labels["method"], labels["route"])]
        figures[0] += int(value)
        status = labels.get("status", "")
        if status.startswith("5"):
            figures[1] += int(value)
        elif status.startswith("4"):
            figures[2] += int(value)
    buckets: dict[tuple[str, str], dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for labels, value in found.get(_LATENCY_BUCKET, []):
        buckets[(labels["method"], labels["route"])][float(labels["le"])] += value
    routes = []
    for (method, route), (requests, errors, client_errors) in counts.items():
        ordered = sorted(buckets.get((method, route), {}).items())
        p50, p95, p99 = (_ms(histogram_quantile(q, ordered)) for q in QUANTILES)
        routes.append(
            RouteFigures(
                method=method,
                route=route,
                requests=requests,
                errors=errors,
                client_errors=client_errors,
                error_rate=round(errors / requests, 4) if requests else 0.0,
                requests_per_second=round(requests / uptime, 4),
                p50_ms=p50,
                p95_ms=p95,
                p99_ms=p99,
            )
        )
    routes.sort(key=lambda r: (-r.requests, r.route, r.method))
    total = sum(r.requests for r in routes)
    errors = sum(r.errors for r in routes)
    return RequestFigures(
        uptime_seconds=round(uptime, 3),
        requests=total,
        errors=errors,
        client_errors=sum(r.client_errors for r in routes),
        error_rate=_ratio(errors, total),
        requests_per_second=round(total / uptime, 4),
        routes=routes,
    )


def _cache_ratios(hits: dict[str, int], misses: int) -> CacheRatios:
    lookups = sum(hits.values()) + misses
    reached = lookups
    tier_ratio: dict[str, float | None] = {}
    for tier in TIERS:  # in the order a lookup asks them: each tier sees what the ones before missed
        tier_ratio[tier] = _ratio(hits[tier], reached)
        reached -= hits[tier]
    return CacheRatios(
        lookups=lookups,
        hits=hits,
        misses=misses,
        hit_ratio=_ratio(sum(hits.values()), lookups),
        tier_hit_ratio=tier_ratio,
    )


def cache_figures(cache: LookupCache, found: Samples | None = None) -> CacheFigures:
    found = samples() if found is None else found
    hits: dict[str, dict[str, int]] = {name: dict.fromkeys(TIERS, 0) for name in CACHES}
    misses: dict[str, int] = dict.fromkeys(CACHES, 0)
    for labels, value in found.get(_CACHE_HITS, []):
        name, tier = labels.get("cache", ""), labels.get("tier", "")
        if name in hits and tier in TIERS:
            hits[name][tier] += int(value)
    for labels, value in found.get(_CACHE_MISSES, []):
        if (name := labels.get("cache", "")) in misses:
            misses[name] += int(value)
    overall = {tier: sum(hits[name][tier] for name in CACHES) for tier in TIERS}
    return CacheFigures(
        backend=cache.name,
        overall=_cache_ratios(overall, sum(misses.values())),
        caches={name: _cache_ratios(hits[name], misses[name]) for name in CACHES},
    )


def requests_csv(figures: RequestFigures) -> str:
    """The per-route table as CSV, with a header row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for route in figures.routes:
        row = route.model_dump()
        writer.writerow(["" if row[column] is None else row[column] for column in CSV_COLUMNS])
    return out.getvalue()


# --- database ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Backlog:
    count: int = 0
    oldest: dt.datetime | None = None

    def add(self, count: int, oldest: dt.datetime | None) -> None:
        self.count += count
        if oldest is not None and (self.oldest is None or oldest < self.oldest):
            self.oldest = oldest

    def age_seconds(self, now: dt.datetime) -> float | None:
        return None if self.oldest is None else round(max(0.0, (now - self.oldest).total_seconds()), 3)


async def _tenant_ids(db: Database) -> list[str]:
    async with db.transaction(None, write=False) as conn:
        return list((await conn.execute(select(tenants.c.id).order_by(tenants.c.id))).scalars())


async def _backlog_of(
    conn: AsyncConnection, table: Table, tenant_id: str, waiting: ColumnElement[bool], since: Any
) -> tuple[int, dt.datetime | None]:
    query = select(func.count(), func.min(since)).where(table.c.tenant_id == tenant_id, waiting)
    count, oldest = (await conn.execute(query)).one()
    return int(count), oldest


async def backlogs(db: Database, *, outbox: bool) -> tuple[Backlog, Backlog]:
    """Every tenant's unnumbered events (`ix_events_unnumbered`) and, with `outbox`, unpublished queue
    output. Read tenant by tenant: on PostgreSQL row-level security shows a transaction one tenant's rows
    only, and the tenant in the condition keeps both queries on their indexes."""
    e, o = events_table.c, broker_outbox.c
    unnumbered, unpublished = Backlog(), Backlog()
    for tenant_id in await _tenant_ids(db):
        async with db.transaction(tenant_id, write=False) as conn:
            unnumbered.add(*await _backlog_of(conn, events_table, tenant_id, e.seq.is_(None), e.occurred_at))
            if outbox:
                unpublished.add(
                    *await _backlog_of(conn, broker_outbox, tenant_id, o.published_at.is_(None), o.created_at)
                )
    return unnumbered, unpublished


# Sizes and row estimates of every table in one query. The catalog and statistics functions check no
# privilege on the table: they answer for the service's role, which owns nothing and is subject to
# row-level security. Rows: the planner's estimate once the table was analyzed (autovacuum does), the
# statistics' live-row count before. The database's size needs CONNECT on it (PUBLIC has it unless
# revoked): null otherwise.
_POSTGRES_TABLES = text(
    """
    SELECT t.name,
           c.oid IS NOT NULL AS present,
           pg_total_relation_size(c.oid) AS size_bytes,
           CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint
                ELSE pg_stat_get_live_tuples(c.oid) END AS estimated_rows,
           (SELECT CASE WHEN has_database_privilege(current_database(), 'CONNECT')
                        THEN pg_database_size(current_database()) END) AS database_bytes
    FROM unnest(CAST(:names AS text[])) WITH ORDINALITY AS t(name, position)
    LEFT JOIN pg_class c ON c.oid = to_regclass(quote_ident(t.name))
    ORDER BY t.position
    """
)


async def _postgres_tables(
    db: Database, names: list[str]
) -> tuple[int | None, SizesFrom, list[TableFigures]]:
    async with db.transaction(None, write=False) as conn:
        rows = (await conn.execute(_POSTGRES_TABLES, {"names": names})).all()
    tables = [
        TableFigures(
            name=row.name,
            exists=row.present,
            size_bytes=None if row.size_bytes is None else int(row.size_bytes),
            rows=None if row.estimated_rows is None else int(row.estimated_rows),
        )
        for row in rows
    ]
    database_bytes = None if not rows or rows[0].database_bytes is None else int(rows[0].database_bytes)
    return database_bytes, "catalog", tables


async def _sqlite_dbstat(db: Database) -> dict[str, int] | None:
    """Bytes per b-tree (tables and indexes) from the dbstat virtual table; None if SQLite lacks it."""
    try:
        async with db.transaction(None, write=False) as conn:
            rows = await conn.execute(text("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"))
            return {str(name): int(size) for name, size in rows}
    except DBAPIError as exc:
        if "dbstat" in str(exc):
            return None
        raise


async def _sqlite_tables(db: Database, names: list[str]) -> tuple[int | None, SizesFrom, list[TableFigures]]:
    btrees = await _sqlite_dbstat(db)
    by_name = {table.name: table for table in metadata.sorted_tables}
    async with db.transaction(None, write=False) as conn:
        page_count = (await conn.execute(text("PRAGMA page_count"))).scalar_one()
        page_size = (await conn.execute(text("PRAGMA page_size"))).scalar_one()
        btree_rows = await conn.execute(
            text("SELECT name, tbl_name FROM sqlite_master WHERE type IN ('table', 'index')")
        )
        owner_of: dict[str, str] = {str(name): str(table) for name, table in btree_rows}
        present = {tbl for name, tbl in owner_of.items() if name == tbl}
        counts = {
            name: int((await conn.execute(select(func.count()).select_from(by_name[name]))).scalar_one())
            for name in names
            if name in present
        }
    sizes: dict[str, int] = defaultdict(int)
    for btree, size in (btrees or {}).items():
        if btree in owner_of:
            sizes[owner_of[btree]] += size
    tables = [
        TableFigures(
            name=name,
            exists=name in present,
            size_bytes=sizes.get(name, 0) if btrees is not None and name in present else None,
            rows=counts.get(name),
        )
        for name in names
    ]
    return int(page_count) * int(page_size), "file" if btrees is None else "dbstat", tables


async def _ping_ms(db: Database) -> tuple[float | None, str | None]:
    try:
        seconds = await asyncio.wait_for(db.ping(), DEPENDENCY_TIMEOUT_SECONDS)
    except Exception as exc:
        return None, describe(exc, DEPENDENCY_TIMEOUT_SECONDS)
    return round(seconds * 1000, 3), None


async def database_figures(db: Database) -> DatabaseFigures:
    names = [table.name for table in metadata.sorted_tables]
    ping_ms, ping_error = await _ping_ms(db)
    sized = _postgres_tables if db.name == "postgresql" else _sqlite_tables
    database_bytes, sizes_from, tables = await sized(db, names)
    return DatabaseFigures(
        backend=db.name,
        ping_ms=ping_ms,
        ping_error=ping_error,
        database_bytes=database_bytes,
        sizes_from=sizes_from,
        tables=tables,
    )


# --- Redis and RabbitMQ ------------------------------------------------------------------------------


async def redis_figures(cache: LookupCache) -> RedisFigures | PartDisabled:
    """Asked on the cache's own Redis client (no connection of its own)."""
    shared = cache.shared
    if not isinstance(shared, RedisTier):
        return PartDisabled()
    seconds = await shared.ping()
    info = await shared.server_info()

    def number(key: str) -> int | None:
        value = info.get(key)
        return None if value is None else int(value)

    policy = info.get("maxmemory_policy")
    return RedisFigures(
        ping_ms=round(seconds * 1000, 3),
        used_memory_bytes=number("used_memory_bytes"),
        maxmemory_bytes=number("maxmemory_bytes"),
        maxmemory_policy=None if policy is None else str(policy),
        evicted_keys=number("evicted_keys"),
        keys=number("keys"),
    )


async def queue_depths(queues: QueueConsumers | None) -> dict[str, int]:
    """Each consumed queue's depth: a passive declare, on a channel of its own (at most every few
    seconds, QueueConsumers.depths)."""
    return {} if queues is None else await queues.depths()


def queue_figures(
    queues: QueueConsumers | None,
    depths: dict[str, int] | PartFailed,
    outbox: OutboxFigures | PartFailed,
) -> QueueFigures | PartDisabled:
    if queues is None:
        return PartDisabled()
    if isinstance(depths, PartFailed):
        return QueueFigures(
            ok=False, error=depths.error, depths=None, consumers=queues.report(), outbox=outbox
        )
    return QueueFigures(ok=True, depths=depths, consumers=queues.report(), outbox=outbox)


# --- the report --------------------------------------------------------------------------------------


async def _within(work: Awaitable[T], seconds: float) -> T | PartFailed:
    try:
        return await asyncio.wait_for(work, seconds)
    except Exception as exc:
        return PartFailed(error=describe(exc, seconds))


def _computed(work: Callable[[], T]) -> T | PartFailed:
    try:
        return work()
    except Exception as exc:
        return PartFailed(error=describe(exc))


async def system_health(
    *, db: Database, cache: LookupCache, events: EventSystem, queues: QueueConsumers | None
) -> SystemHealth:
    found = _computed(samples)
    if isinstance(found, PartFailed):
        requests: RequestFigures | PartFailed = found
        cache_part: CacheFigures | PartFailed = found
    else:
        requests = _computed(lambda: request_figures(found))
        cache_part = _computed(lambda: cache_figures(cache, found))

    async def both_backlogs() -> tuple[Backlog, Backlog]:
        return await backlogs(db, outbox=queues is not None)

    found_backlogs, database, redis, depths = await asyncio.gather(
        _within(both_backlogs(), DATABASE_TIMEOUT_SECONDS),
        _within(database_figures(db), DATABASE_TIMEOUT_SECONDS),
        _within(redis_figures(cache), DEPENDENCY_TIMEOUT_SECONDS),
        _within(queue_depths(queues), DEPENDENCY_TIMEOUT_SECONDS),
    )
    now = dt.datetime.now(dt.UTC)
    events_part: EventFigures | PartFailed
    outbox: OutboxFigures | PartFailed
    if isinstance(found_backlogs, PartFailed):
        events_part = outbox = found_backlogs
    else:
        unnumbered, unpublished = found_backlogs
        events_part = EventFigures(
            unnumbered=unnumbered.count,
            oldest_unnumbered_age_seconds=unnumbered.age_seconds(now),
            this_instance=events.report(),
        )
        outbox = OutboxFigures(
            unpublished=unpublished.count, oldest_unpublished_age_seconds=unpublished.age_seconds(now)
        )
    queue_part = _computed(lambda: queue_figures(queues, depths, outbox))
    return SystemHealth(
        instance=instance_name(),
        generated_at=now,
        started_at=_STARTED_AT,
        workers_merged=workers_merged(),
        requests=requests,
        cache=cache_part,
        events=events_part,
        queues=queue_part,
        database=database,
        redis=redis,
    )
