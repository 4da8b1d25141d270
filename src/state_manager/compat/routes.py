"""The old Node.js state-manager's HTTP routes (`/health`, `/state/...` and the unprefixed paths its callers
use by mistake), so that those callers work unchanged. The translation is in compat/service.py.

These routes answer errors in the old shape, `{"error": "..."}` with the old status codes, never
problem+json and never HTML; the rest of the service keeps its problem+json errors. They take the API
keys of every other route; the tenant is `X-Tenant-ID`, else `?tenantId=`, else the body's `tenantId`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from state_manager.compat import service
from state_manager.compat.schemas import (
    ConversationStatusChanged,
    FormattedMapping,
    MappingRow,
    MessagePage,
    MessageTracked,
    Stats,
    StatusUpdated,
)
from state_manager.deps import PrincipalDep, Services, ServicesDep, TenantScope, actor_of, tenant_header
from state_manager.errors import BadRequest, StateManagerError, ValidationFailed
from state_manager.strict_json import StrictJsonRoute, parse_body

log = logging.getLogger("state_manager.compat")


def _error(exc: Exception) -> Response:
    headers: dict[str, str] = {}
    if isinstance(exc, service.CompatError):
        status, body = exc.status, exc.body
    elif isinstance(exc, StateManagerError):
        # Validation is a 400 in the old API (this service says 422).
        status = 400 if isinstance(exc, ValidationFailed) else exc.status
        body, headers = {"error": exc.detail}, exc.headers
    elif isinstance(exc, RequestValidationError | ValidationError):
        status, body = 400, {"error": "; ".join(str(error.get("msg", "")) for error in exc.errors())}
    elif isinstance(exc, StarletteHTTPException):
        status, body = exc.status_code, {"error": str(exc.detail)}
        headers = dict(exc.headers or {})
    elif isinstance(exc, IntegrityError):
        log.warning("unexpected integrity error", exc_info=exc)
        status, body = 409, {"error": "the change conflicts with existing data"}
    else:
        log.error("unhandled error", exc_info=exc)
        status, body = 500, {"error": "an unexpected error occurred"}
    return JSONResponse(body, status_code=status, headers=headers)


class CompatRoute(StrictJsonRoute):
    """Every error of these routes, including those of their dependencies, in the old shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def compat_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return _error(exc)

        return compat_handler


router = APIRouter(tags=["compat (old state-manager API)"], route_class=CompatRoute)


async def legacy_body(request: Request) -> dict[str, Any]:
    """The JSON object sent, or {} when there is no body (Express read a missing body as {})."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        document = parse_body(raw)
    except json.JSONDecodeError as exc:
        raise BadRequest("the body is not valid JSON") from exc
    if not isinstance(document, dict):
        raise BadRequest("the body must be a JSON object")
    return document


LegacyBody = Annotated[dict[str, Any], Depends(legacy_body)]


async def compat_scope(
    request: Request, principal: PrincipalDep, services: ServicesDep, body: LegacyBody
) -> TenantScope:
    """Like deps.get_tenant_scope, with the tenant named where the old API's callers name it."""
    requested = service.requested_tenant(tenant_header(request), request.query_params.get("tenantId"), body)
    tenant_id = await services.auth.tenant_for(principal, requested)
    return TenantScope(tenant_id=tenant_id, db=services.db, cache=services.cache, actor=actor_of(principal))


CompatScope = Annotated[TenantScope, Depends(compat_scope)]


async def _health(services: Services) -> Response:
    status, body = await service.health_report(services)
    return JSONResponse(body, status_code=status)


@router.get(
    "/health",
    summary="Old health: database, cache (as `redis`) and `uptime_seconds`; 503 when the database fails",
)
async def root_health(services: ServicesDep) -> Response:
    return await _health(services)


@router.get("/state/health", summary="The same as /health")
async def state_health(services: ServicesDep) -> Response:
    return await _health(services)


@router.post("/state/mapping", summary="Deprecated: creates nothing (400 without waId, else 410)")
async def create_mapping(body: LegacyBody, scope: CompatScope) -> None:
    service.create_mapping(body)


@router.get(
    "/state/mapping/{wa_id}",
    summary="The customer's open conversation, as the old mapping row",
    response_model=MappingRow,
)
async def get_mapping(wa_id: str, scope: CompatScope) -> Response:
    body = await service.mapping_by_wa_id_cached(scope.db, scope.cache, scope.tenant_id, wa_id)
    return Response(body, media_type="application/json")


@router.get("/state/mapping/{mapping_id}/messages", summary="Messages of a conversation, by its UUID")
async def get_mapping_messages(mapping_id: str, request: Request, scope: CompatScope) -> MessagePage:
    limit, offset = service.page_window(request.query_params)
    async with scope.read() as conn:
        return await service.messages_by_mapping_id(conn, scope.tenant_id, mapping_id, limit, offset)


@router.get("/state/conversation/{conversation_id}", summary="A conversation by its Genesys conversation ID")
@router.get("/conversation/{conversation_id}", include_in_schema=False)
async def get_conversation(conversation_id: str, scope: CompatScope) -> FormattedMapping:
    async with scope.read() as conn:
        return await service.mapping_by_genesys_id(conn, scope.tenant_id, conversation_id)


@router.patch(
    "/state/conversation/{conversation_id}",
    summary="Move a conversation (by Genesys conversation ID) to `status`: active, closed, expired, …",
)
@router.patch("/conversation/{conversation_id}", include_in_schema=False)
async def patch_conversation(
    conversation_id: str, body: LegacyBody, scope: CompatScope
) -> ConversationStatusChanged:
    async with scope.write() as conn:
        return await service.set_conversation_status(conn, scope.tenant_id, conversation_id, body)


@router.get(
    "/state/conversation/{conversation_id}/messages",
    summary="Messages of a conversation by Genesys conversation ID, newest first, with the real total",
)
async def get_conversation_messages(
    conversation_id: str, request: Request, scope: CompatScope
) -> MessagePage:
    limit, offset = service.page_window(request.query_params)
    async with scope.read() as conn:
        return await service.messages_by_genesys_id(conn, scope.tenant_id, conversation_id, limit, offset)


@router.post("/state/message", summary="Record a message of a conversation once, by its wamid")
@router.post("/message", include_in_schema=False)
async def track_message(body: LegacyBody, scope: CompatScope) -> MessageTracked:
    async with scope.write() as conn:
        return await service.track_message(conn, scope.tenant_id, body)


@router.patch(
    "/state/message/{wamid:path}/status",
    summary="Apply a status (sent, delivered, read, failed) in any order; statuses merge",
)
@router.patch("/message/{wamid:path}/status", include_in_schema=False)
async def update_message_status(wamid: str, body: LegacyBody, scope: CompatScope) -> StatusUpdated:
    async with scope.write() as conn:
        return await service.update_message_status(conn, scope.tenant_id, wamid, body)


@router.post("/state/correlate", summary="Link a Genesys conversation to the conversation of a wamid")
@router.post("/state/correlation", summary="The same as /state/correlate")
async def correlate(body: LegacyBody, scope: CompatScope) -> FormattedMapping:
    async with scope.write() as conn:
        return await service.correlate(conn, scope.tenant_id, body)


@router.post("/state/context/{conversation_id}", summary="Replace a conversation's context value")
async def set_context(conversation_id: str, body: LegacyBody, scope: CompatScope) -> dict[str, bool]:
    async with scope.write() as conn:
        await service.set_context(conn, scope.tenant_id, conversation_id, body)
    return {"success": True}


@router.get("/state/context/{conversation_id}", summary="A conversation's context value, or null")
async def get_context(conversation_id: str, scope: CompatScope) -> dict[str, Any]:
    async with scope.read() as conn:
        return {"context": await service.get_context(conn, scope.tenant_id, conversation_id)}


@router.get("/state/stats", summary="Counts of the tenant's conversations and messages")
@router.get("/state/stats/summary", summary="The same as /state/stats")
@router.get("/stats/summary", include_in_schema=False)
async def stats(scope: CompatScope, services: ServicesDep) -> Stats:
    return await service.stats(services.db, services.events.relay, scope.tenant_id)


@router.get(
    "/state/analytics/metrics",
    summary="One metric per hour, day or week (`metric`, `interval`, `from`, `to`): /v1/analytics figures",
)
@router.get("/analytics/metrics", include_in_schema=False)
async def analytics_metrics(request: Request, scope: CompatScope, services: ServicesDep) -> dict[str, Any]:
    return await service.analytics_metrics(
        services.db, services.events.relay, scope.tenant_id, request.query_params
    )


@router.api_route(
    "/state/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False
)
async def unknown_state_route(rest: str, request: Request) -> Response:
    return JSONResponse({"error": f"Cannot {request.method} /state/{rest}"}, status_code=404)
