"""`GET /v1/analytics/system`: the system health report (analytics/system.py), for administrators."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from starlette.responses import Response

from state_manager.analytics import system
from state_manager.analytics.system_schemas import SystemHealth
from state_manager.deps import AdminDep, ServicesDep
from state_manager.strict_json import StrictJsonRoute

router = APIRouter(tags=["analytics"], route_class=StrictJsonRoute)


@router.get(
    "/v1/analytics/system",
    summary="Requests, cache, event and queue backlogs, database and Redis, as this instance sees them",
    response_model=SystemHealth,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
async def system_health(
    _: AdminDep,
    services: ServicesDep,
    format: Annotated[
        Literal["json", "csv"], Query(description="csv: the per-route request table alone")
    ] = "json",
) -> Response | SystemHealth:
    if format == "csv":
        return Response(
            system.requests_csv(system.request_figures()),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="system-requests.csv"'},
        )
    return await system.system_health(
        db=services.db, cache=services.cache, events=services.events, queues=services.queues
    )
