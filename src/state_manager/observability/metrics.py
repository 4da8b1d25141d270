"""Prometheus metrics. With several workers, each process writes to PROMETHEUS_MULTIPROC_DIR."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

HTTP_REQUESTS = Counter(
    "state_manager_http_requests_total", "HTTP requests by route and status", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "state_manager_http_request_duration_seconds",
    "HTTP request latency by route",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
QUEUE_MESSAGES = Counter(
    "state_manager_queue_messages_total",
    "Consumed queue messages by queue and outcome (processed, retried, dlq:<reason>)",
    ["queue", "outcome"],
)
QUEUE_PUBLISHED = Counter(
    "state_manager_queue_published_total", "Output messages confirmed by the broker, by queue", ["queue"]
)


class PerCache:
    """A metric labelled by cache (and a reason or tier), its children bound once: `labels()` costs on
    the lookup path."""

    def __init__(self, metric: Counter | Gauge) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def child(self, *labels: str) -> Any:
        bound = self._children.get(labels)
        if bound is None:
            bound = self._children[labels] = self._metric.labels(*labels)
        return bound


CACHE_HITS = PerCache(
    Counter(
        "state_manager_cache_hits_total", "Lookups answered by a cache tier (local, redis)", ["cache", "tier"]
    )
)
CACHE_MISSES = PerCache(
    Counter("state_manager_cache_misses_total", "Lookups that no tier could answer", ["cache"])
)
CACHE_COALESCED = PerCache(
    Counter(
        "state_manager_cache_coalesced_total",
        "Lookups that waited for another request's load of the same key instead of loading",
        ["cache"],
    )
)
CACHE_LOADS = PerCache(
    Counter("state_manager_cache_loads_total", "Loads from the database by outcome", ["cache", "outcome"])
)
CACHE_LOAD_SECONDS = Histogram(
    "state_manager_cache_load_seconds",
    "Time to load a missed lookup from the database",
    ["cache"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
CACHE_INVALIDATIONS = PerCache(
    Counter(
        "state_manager_cache_invalidations_total",
        "Local entries dropped because a write changed what they say",
        ["cache"],
    )
)
CACHE_EVICTIONS = PerCache(
    Counter(
        "state_manager_cache_evictions_total",
        "Local entries dropped for room (size) or age (expired)",
        ["cache", "reason"],
    )
)
CACHE_ENTRIES = PerCache(
    Gauge(
        "state_manager_cache_local_entries",
        "Entries in the local tier",
        ["cache"],
        multiprocess_mode="livesum",
    )
)
CACHE_BYTES = PerCache(
    Gauge(
        "state_manager_cache_local_bytes",
        "Approximate bytes in the local tier",
        ["cache"],
        multiprocess_mode="livesum",
    )
)
CACHE_SHARED_ERRORS = PerCache(
    Counter(
        "state_manager_cache_redis_errors_total",
        "Redis calls that failed or timed out, by operation",
        ["operation"],
    )
)
CACHE_CIRCUIT_OPEN = Gauge(
    "state_manager_cache_circuit_open",
    "1 while the circuit to Redis is open (Redis skipped), else 0",
    multiprocess_mode="max",
)
RATE_LIMITED = PerCache(
    Counter(
        "state_manager_rate_limited_total",
        "Requests refused with 429, by the kind of key (tenant, service, admin), or auth-failures for a "
        "client address that failed to authenticate too often",
        ["kind"],
    )
)
RATE_LIMIT_REDIS_ERRORS = Counter(
    "state_manager_rate_limit_redis_errors_total",
    "Rate limit syncs with Redis that failed (each process then limits on its own)",
)

EVENTS_NUMBERED = Counter("state_manager_events_numbered_total", "Events numbered by this process's relay")
EVENT_RELAY_ERRORS = Counter(
    "state_manager_event_relay_errors_total", "Relay runs that failed (database or bus away) and will retry"
)
EVENTS_SENT = Counter(
    "state_manager_events_sent_total", "Events sent to WebSocket subscribers (replayed or live)", ["phase"]
)
WS_SUBSCRIBERS = Gauge(
    "state_manager_ws_subscribers", "WebSocket subscribers connected", multiprocess_mode="livesum"
)
WS_CLOSED = Counter("state_manager_ws_closed_total", "WebSocket subscriptions closed, by reason", ["reason"])


# Webhook subscriptions (subscriptions/dispatcher.py).
WEBHOOK_DELIVERIES = Counter(
    "state_manager_webhook_deliveries_total",
    "Webhook delivery attempts by outcome (delivered, retry, dead, lost_lease)",
    ["outcome"],
)
WEBHOOK_ATTEMPT_SECONDS = Histogram(
    "state_manager_webhook_attempt_seconds",
    "Time of one webhook delivery attempt, until the receiver answered or the attempt failed",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


# Scheduled jobs (jobs/scheduler.py): runs by outcome, and what they changed.
JOB_RUNS = Counter(
    "state_manager_job_runs_total", "Scheduled job runs by this process, by outcome", ["job", "outcome"]
)
JOB_WORK = Counter(
    "state_manager_job_changes_total",
    "What scheduled jobs changed (conversations expired, messages redacted, …)",
    ["job", "what"],
)


def registry() -> CollectorRegistry:
    """Every worker's metrics when several share PROMETHEUS_MULTIPROC_DIR, else this process's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        merged = CollectorRegistry()
        MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return merged
    return REGISTRY


def render() -> tuple[bytes, str]:
    return generate_latest(registry()), CONTENT_TYPE_LATEST
