"""Events: the WebSocket subscription (`/v1/ws`) and the event log over HTTP (`GET /v1/events`)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Request, WebSocket
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from state_manager.deps import Services, TenantDep, client_address, presented_key, tenant_header
from state_manager.errors import (
    BadRequest,
    EventsTrimmed,
    Forbidden,
    NotFound,
    StateManagerError,
    TooManyRequests,
    Unauthorized,
)
from state_manager.events import service
from state_manager.events.live import LiveSubscription, SubscribeOptions, comma_separated
from state_manager.events.schemas import EventPage
from state_manager.events.types import EventType
from state_manager.query import parse_query, query_parameters

router = APIRouter(tags=["events"])

_CLOSE_CODES: dict[type[StateManagerError], int] = {
    Unauthorized: 4401,
    Forbidden: 4403,
    NotFound: 4404,
    BadRequest: 4400,
    EventsTrimmed: 4410,
    TooManyRequests: 4429,
}


class EventQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    after: int = Field(default=0, ge=0, description="Events numbered after this one")
    limit: int = Field(default=100, ge=1, le=1000)
    types: Annotated[list[EventType], BeforeValidator(comma_separated)] = Field(
        default_factory=list, description="Comma-separated event types; absent = all"
    )
    conversation_id: uuid.UUID | None = None
    customer_id: uuid.UUID | None = None


@router.get(
    "/v1/events",
    summary="The tenant's events after a number, oldest first (resume with next_after)",
    openapi_extra=query_parameters(EventQuery),
)
async def list_events(request: Request, scope: TenantDep) -> EventPage:
    query = parse_query(EventQuery, request)
    async with scope.read() as conn:
        return await service.page(conn, scope.tenant_id, **query.model_dump())


@router.websocket("/v1/ws")
async def subscribe(websocket: WebSocket) -> None:
    """Live events of one tenant. Key: `Authorization: Bearer`, `X-API-Key` or `?api_key=`; tenant:
    `X-Tenant-ID` or `?tenant=` (service and admin keys). Query: `after`, `types`, `conversation_id`,
    `customer_id`, `heartbeat` (events/live.py describes the frames and close codes)."""
    services: Services = websocket.app.state.services
    headers, query = websocket.headers, websocket.query_params
    await websocket.accept()
    try:
        principal = await services.auth.principal(
            presented_key(headers.get("authorization"), headers.get("x-api-key") or query.get("api_key")),
            client_address(websocket),
        )
        tenant_id = await services.auth.tenant_for(principal, tenant_header(websocket) or query.get("tenant"))
        options = SubscribeOptions.model_validate(dict(query))
        if options.after is not None:
            async with services.db.transaction(tenant_id, write=False) as conn:
                await service.refuse_trimmed(conn, tenant_id, options.after)
    except ValidationError as exc:
        await websocket.close(4400, _reason(exc.errors(include_url=False)[0]["loc"], exc.errors()[0]["msg"]))
        return
    except StateManagerError as exc:
        code = next((code for kind, code in _CLOSE_CODES.items() if isinstance(exc, kind)), 4400)
        await websocket.close(code, str(exc)[:120])
        return
    await LiveSubscription(
        websocket, services.db, services.events.hub, tenant_id, options, capacity=services.events.ws_backlog
    ).serve()


def _reason(location: tuple[int | str, ...], message: str) -> str:
    # A close reason holds at most 123 bytes.
    return f"{'.'.join(str(part) for part in location)}: {message}"[:120]
