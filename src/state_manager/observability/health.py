"""Liveness, readiness (the database; the cache and the queue consumers, which degrade it but never fail
it: without them the service is slower, not wrong) and Prometheus metrics."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from fastapi import APIRouter
from starlette.responses import JSONResponse, Response

from state_manager.deps import Services, ServicesDep
from state_manager.observability import metrics
from state_manager.strict_json import StrictJsonRoute

router = APIRouter(tags=["health"], route_class=StrictJsonRoute)
CHECK_TIMEOUT_SECONDS = 2.0


@router.get("/health/live", summary="The process is up")
async def live() -> dict[str, str]:
    return {"status": "ok"}


async def run_check(name: str, probe: Any) -> tuple[str, dict[str, Any]]:
    try:
        seconds = await asyncio.wait_for(probe(), CHECK_TIMEOUT_SECONDS)
    except Exception as exc:
        return name, {"status": "error", "error": type(exc).__name__}
    return name, {"status": "ok", "latency_ms": round(seconds * 1000, 2)}


async def queues_check(services: Services) -> dict[str, Any]:
    """The consumers' own account of themselves, and the queues' depths (read on a channel of the health
    check's own). A broker outage degrades the service; it never makes it unready: HTTP still works."""
    queues = services.queues
    if queues is None:
        return {"status": "not_used"}
    report = queues.report()
    try:
        report["depths"] = await asyncio.wait_for(queues.depths(), CHECK_TIMEOUT_SECONDS)
    except Exception as exc:
        report["depths"] = None
        report["depth_error"] = type(exc).__name__
    return report


async def cache_check(services: Services) -> dict[str, Any]:
    """The cache's own account (circuit, subscription, generation) and a ping: "degraded" when Redis does
    not answer, since lookups then read the database."""
    report = services.cache.report()
    _, ping = await run_check("cache", services.cache.ping)
    if ping["status"] != "ok":
        report |= {"status": "degraded", "error": ping["error"]}
    else:
        report["latency_ms"] = ping["latency_ms"]
    return report


async def all_checks(services: Services) -> dict[str, dict[str, Any]]:
    """The reports of the database, the cache, the queues and the events, asked at once."""
    (_, database), cache, queues = await asyncio.gather(
        run_check("database", services.db.ping), cache_check(services), queues_check(services)
    )
    # The bus away is not the events away: numbering goes on and subscribers are fed from the table.
    # Rate limits without Redis are each process's own: "degraded", admitting more, never less.
    return {
        "database": database,
        "cache": cache,
        "queues": queues,
        "events": services.events.report(),
        "rate_limits": services.auth.limiter.report(),
    }


def verdict(checks: dict[str, dict[str, Any]]) -> str:
    """ "failed" without the database; "degraded" without the cache, the queues or the event bus (slower,
    not wrong)."""
    if checks["database"]["status"] != "ok":
        return "failed"
    optional = ("cache", "queues", "events", "rate_limits")
    if any(checks[name]["status"] not in ("ok", "not_used") for name in optional if name in checks):
        return "degraded"
    return "ok"


@router.get(
    "/health/ready",
    summary="The database answers (status `degraded` when the cache, the queues or the event bus do not)",
    responses={503: {"description": "the database failed; `failed` names it"}},
)
async def ready(services: ServicesDep) -> Response:
    checks = await all_checks(services)
    status = verdict(checks)
    failed = ["database"] if status == "failed" else []
    body = {
        "status": "unavailable" if failed else status,
        "checks": checks,
        "failed": failed,
        "time": dt.datetime.now(dt.UTC).isoformat(),
    }
    return JSONResponse(body, status_code=503 if failed else 200)


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def prometheus() -> Response:
    payload, content_type = metrics.render()
    return Response(payload, media_type=content_type)
