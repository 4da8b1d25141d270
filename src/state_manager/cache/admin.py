"""`GET /v1/admin/cache` (hit ratio and size per cache, the tiers' state) and `POST /v1/admin/cache/warm`."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from state_manager.cache import warming
from state_manager.cache.lookups import CACHES
from state_manager.cache.shared import RedisTier
from state_manager.deps import AdminDep, ServicesDep
from state_manager.errors import NotFound
from state_manager.observability import metrics
from state_manager.strict_json import StrictJsonRoute
from state_manager.tenants import repository as tenants_repo

router = APIRouter(prefix="/v1/admin/cache", tags=["admin"], route_class=StrictJsonRoute)


class CacheFigures(BaseModel):
    hits_local: int
    hits_redis: int
    misses: int
    coalesced: int = Field(description="Lookups that waited for another request's load of the same key")
    hit_ratio: float | None = Field(description="Hits over hits and misses; null before any lookup")
    loads: dict[str, int] = Field(description="Database loads by outcome (found, absent, error)")
    load_seconds_avg: float | None
    invalidations: int
    evictions: dict[str, int] = Field(description="Local entries dropped for room (size) or age (expired)")
    local_entries: int
    local_bytes: int


class CacheStats(BaseModel):
    backend: str = Field(description="redis, or memory on the embedded default")
    status: str = Field(description="ok, or degraded while Redis is not used")
    tiers: dict[str, Any] = Field(description="Each tier's state: circuit, subscription, generation, size")
    caches: dict[str, CacheFigures]
    redis: dict[str, Any] | None = Field(description="What Redis says of its memory and evictions")


def _samples() -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in metrics.registry().collect():
        if family.name.startswith("state_manager_cache_"):
            for sample in family.samples:
                found[sample.name].append((sample.labels, sample.value))
    return found


def _figures(samples: dict[str, list[tuple[dict[str, str], float]]], cache: str) -> CacheFigures:
    def summed(name: str, **labels: str) -> float:
        wanted = {"cache": cache, **labels}
        return sum(v for ls, v in samples.get(name, []) if all(ls.get(k) == w for k, w in wanted.items()))

    def total(name: str, **labels: str) -> int:
        return int(summed(name, **labels))

    hits_local = total("state_manager_cache_hits_total", tier="local")
    hits_redis = total("state_manager_cache_hits_total", tier="redis")
    misses = total("state_manager_cache_misses_total")
    hits = hits_local + hits_redis
    load_count = total("state_manager_cache_load_seconds_count")
    load_sum = summed("state_manager_cache_load_seconds_sum")
    return CacheFigures(
        hits_local=hits_local,
        hits_redis=hits_redis,
        misses=misses,
        coalesced=total("state_manager_cache_coalesced_total"),
        hit_ratio=round(hits / (hits + misses), 4) if hits + misses else None,
        loads={o: total("state_manager_cache_loads_total", outcome=o) for o in ("found", "absent", "error")},
        load_seconds_avg=round(load_sum / load_count, 6) if load_count else None,
        invalidations=total("state_manager_cache_invalidations_total"),
        evictions={r: total("state_manager_cache_evictions_total", reason=r) for r in ("size", "expired")},
        local_entries=total("state_manager_cache_local_entries"),
        local_bytes=total("state_manager_cache_local_bytes"),
    )


@router.get("", summary="Hit ratio and size per cache, and the state of each tier")
async def cache_stats(_: AdminDep, services: ServicesDep) -> CacheStats:
    cache = services.cache
    samples = _samples()
    report = cache.report()
    redis = None
    if isinstance(cache.shared, RedisTier):
        with contextlib.suppress(Exception):  # stats must answer while Redis does not
            redis = await cache.shared.server_info()
    return CacheStats(
        backend=cache.name,
        status=report["status"],
        tiers=report,
        caches={name: _figures(samples, name) for name in CACHES},
        redis=redis,
    )


@router.post(
    "/warm",
    summary="Warm the lookups of recently active open conversations; streams progress as JSON lines",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
async def warm_cache(
    _: AdminDep,
    services: ServicesDep,
    tenant: Annotated[
        list[str] | None, Query(description="Only these tenants (default: every tenant)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1_000_000)] = 10_000,
    hours: Annotated[float, Query(gt=0, le=24 * 365)] = 24.0,
) -> StreamingResponse:
    if tenant:
        async with services.db.transaction(None, write=False) as conn:
            for tenant_id in tenant:
                if await tenants_repo.get_tenant(conn, tenant_id) is None:
                    raise NotFound(f"tenant {tenant_id!r} not found")

    async def lines() -> AsyncIterator[bytes]:
        last = None
        async for last in warming.warm(
            services.db, services.cache, tenant_ids=tenant, limit=limit, hours=hours
        ):
            yield orjson.dumps({"conversations": last.conversations, "total": last.total}) + b"\n"
        done = {"done": True, "conversations": 0, "total": 0, "lookups": 0}
        if last is not None:
            done |= {"conversations": last.conversations, "total": last.total, "lookups": last.lookups}
        yield orjson.dumps(done) + b"\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")
