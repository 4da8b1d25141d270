"""Liveness, readiness (database and cache; the queue consumers' state, which never fails it) and Prometheus
metrics."""

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


@router.get(
    "/health/ready",
    summary="The database and the cache answer",
    responses={503: {"description": "a check failed; `failed` names it"}},
)
async def ready(services: ServicesDep) -> Response:
    database, cache, queues = await asyncio.gather(
        run_check("database", services.db.ping),
        run_check(f"cache ({services.cache.name})", services.cache.ping),
        queues_check(services),
    )
    results = dict([database, cache])
    failed = [name for name, result in results.items() if result["status"] != "ok"]
    body = {
        "status": "unavailable" if failed else "ok",
        "checks": results | {"queues": queues},
        "failed": failed,
        "time": dt.datetime.now(dt.UTC).isoformat(),
    }
    return JSONResponse(body, status_code=503 if failed else 200)


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def prometheus() -> Response:
    payload, content_type = metrics.render()
    return Response(payload, media_type=content_type)
