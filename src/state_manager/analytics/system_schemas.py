"""The system health report, `GET /v1/analytics/system` (docs/analytics.md, "System health").

Each part answers on its own: a dependency that is away (Redis, RabbitMQ, even the database) turns its
part into `{"ok": false, "error": …}`, never the whole report into an error; a dependency that is not
configured is `{"enabled": false}`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, Field


class PartFailed(BaseModel):
    """A part whose source did not answer (in time)."""

    ok: Literal[False] = False
    error: str = Field(description="What went wrong: the exception's type and message")


class PartDisabled(BaseModel):
    """A part whose dependency is not configured (no REDIS_URL, no RABBITMQ_URL)."""

    enabled: Literal[False] = False


# --- requests ----------------------------------------------------------------------------------------


class RouteFigures(BaseModel):
    method: str
    route: str = Field(description="The route template (`unmatched` for paths no route serves)")
    requests: int = Field(description="Requests answered since the start")
    errors: int = Field(description="Requests answered with a 5xx status")
    client_errors: int = Field(description="Requests answered with a 4xx status")
    error_rate: float = Field(description="errors / requests")
    requests_per_second: float = Field(description="requests / uptime_seconds")
    p50_ms: float | None = Field(description="Median latency, estimated from the histogram buckets")
    p95_ms: float | None
    p99_ms: float | None


class RequestFigures(BaseModel):
    ok: Literal[True] = True
    uptime_seconds: float = Field(description="Since this process started")
    requests: int = Field(description="Every route's requests together")
    errors: int
    client_errors: int
    error_rate: float | None = Field(description="errors / requests; null before any request")
    requests_per_second: float
    routes: list[RouteFigures] = Field(description="One row per method and route template, busiest first")


# --- cache -------------------------------------------------------------------------------------------


class CacheRatios(BaseModel):
    lookups: int = Field(description="hits (every tier) + misses")
    hits: dict[str, int] = Field(description="Hits per tier (local, redis)")
    misses: int = Field(description="Lookups no tier could answer (read from the database)")
    hit_ratio: float | None = Field(description="hits / lookups; null before any lookup")
    tier_hit_ratio: dict[str, float | None] = Field(
        description="Per tier, its hits over the lookups that reached it (local: every lookup; redis: "
        "those the local tier missed)"
    )


class CacheFigures(BaseModel):
    ok: Literal[True] = True
    backend: str = Field(description="redis, or memory on the embedded default")
    overall: CacheRatios = Field(description="Every cache together")
    caches: dict[str, CacheRatios]


# --- events ------------------------------------------------------------------------------------------


class EventFigures(BaseModel):
    ok: Literal[True] = True
    unnumbered: int = Field(description="Committed events the relay has not numbered yet, every tenant")
    oldest_unnumbered_age_seconds: float | None = Field(
        description="Age of the oldest of them; null when there is none"
    )
    this_instance: dict[str, Any] = Field(
        description="This process's event bus, relay and WebSocket subscribers, as /health/ready shows them"
    )


# --- queues ------------------------------------------------------------------------------------------


class OutboxFigures(BaseModel):
    ok: Literal[True] = True
    unpublished: int = Field(description="Queue output committed but not yet confirmed by the broker")
    oldest_unpublished_age_seconds: float | None


class QueueFigures(BaseModel):
    enabled: Literal[True] = True
    ok: bool = Field(description="The broker answered with every consumed queue's depth")
    error: str | None = Field(default=None, description="Why not, when it did not")
    depths: dict[str, int] | None = Field(description="Messages waiting in each consumed queue")
    consumers: dict[str, Any] = Field(description="This process's consumers, as /health/ready shows them")
    outbox: OutboxFigures | PartFailed


# --- database ----------------------------------------------------------------------------------------


class TableFigures(BaseModel):
    name: str
    exists: bool = Field(description="False when the schema lacks the table (not migrated yet)")
    size_bytes: int | None = Field(
        description="The table with its indexes (and TOAST on PostgreSQL); null when unknown"
    )
    rows: int | None = Field(
        description="Rows: an estimate on PostgreSQL (pg_class.reltuples once the table was analyzed, "
        "the statistics' live rows before), an exact count on SQLite; null when the table is missing"
    )


class DatabaseFigures(BaseModel):
    ok: Literal[True] = True
    backend: str = Field(description="postgresql or sqlite")
    ping_ms: float | None = Field(description="Round trip of SELECT 1; null when it failed")
    ping_error: str | None = None
    database_bytes: int = Field(description="The whole database (SQLite: page_count * page_size)")
    sizes_from: Literal["catalog", "dbstat", "file"] = Field(
        description="Where table sizes come from: PostgreSQL's catalog, SQLite's dbstat, or nowhere (file: "
        "SQLite without dbstat, only database_bytes is known)"
    )
    tables: list[TableFigures]


# --- redis -------------------------------------------------------------------------------------------


class RedisFigures(BaseModel):
    enabled: Literal[True] = True
    ok: Literal[True] = True
    ping_ms: float
    used_memory_bytes: int | None
    maxmemory_bytes: int | None
    maxmemory_policy: str | None
    evicted_keys: int | None
    keys: int | None


# --- the report --------------------------------------------------------------------------------------


class SystemHealth(BaseModel):
    instance: str = Field(description="hostname:pid of the process that answered")
    generated_at: dt.datetime
    started_at: dt.datetime = Field(description="When this process started")
    workers_merged: bool = Field(
        description="True when the request figures are every worker's (PROMETHEUS_MULTIPROC_DIR), "
        "false when they are this process's alone"
    )
    requests: RequestFigures | PartFailed
    cache: CacheFigures | PartFailed
    events: EventFigures | PartFailed
    queues: QueueFigures | PartFailed | PartDisabled
    database: DatabaseFigures | PartFailed
    redis: RedisFigures | PartFailed | PartDisabled
