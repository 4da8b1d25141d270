"""Events from Genesys Cloud (through the genesys-webhook-service)."""

from __future__ import annotations

from fastapi import APIRouter

from state_manager.deps import TenantDep
from state_manager.genesys import service
from state_manager.genesys.schemas import GenesysEvent, GenesysEventResult
from state_manager.strict_json import StrictJsonRoute

router = APIRouter(prefix="/v1/events", tags=["genesys"], route_class=StrictJsonRoute)


@router.post(
    "/genesys",
    summary="Apply a Genesys event: agent connected or disconnected, customer ended, wrap-up, "
    "conversation disconnected, message receipt",
)
async def genesys_event(body: GenesysEvent, scope: TenantDep) -> GenesysEventResult:
    async with scope.write() as conn:
        return await service.handle(conn, scope.tenant_id, body)
