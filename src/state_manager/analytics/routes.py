"""/v1/analytics: conversation, message, customer and agent reports for a tenant, or an organization's
tenants added up (admin keys). JSON, or CSV with `format=csv`."""

from __future__ import annotations

import enum
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from state_manager.analytics import reporting
from state_manager.analytics.periods import Granularity
from state_manager.analytics.schemas import AgentReport, ConversationReport, CustomerReport, MessageReport
from state_manager.deps import ServicesDep, client_address, get_tenant_scope, presented_key
from state_manager.errors import Forbidden
from state_manager.tenants.schemas import TENANT_ID_PATTERN, KeyKind

router = APIRouter(prefix="/v1/analytics", tags=["analytics"])


class Format(enum.StrEnum):
    JSON = "json"
    CSV = "csv"


async def report_scope(
    request: Request,
    services: ServicesDep,
    organization: Annotated[
        str | None,
        Query(pattern=TENANT_ID_PATTERN, description="admin keys: add up every tenant of this organization"),
    ] = None,
) -> reporting.Scope:
    if organization is None:
        tenant = await get_tenant_scope(request)
        return reporting.Scope(tenant_ids=(tenant.tenant_id,), tenant_id=tenant.tenant_id)
    principal = await services.auth.principal(
        presented_key(request.headers.get("authorization"), request.headers.get("x-api-key")),
        client_address(request),
    )
    if principal.kind is not KeyKind.ADMIN:
        raise Forbidden("an organization's roll-up needs an admin key")
    return await reporting.organization_scope(services.db, organization)


async def report_params(
    from_: Annotated[
        str | None,
        Query(alias="from", description="ISO-8601 time with a zone, or a date (midnight in `tz`)"),
    ] = None,
    to: Annotated[str | None, Query(description="as `from`; excluded; default now")] = None,
    granularity: Granularity = Granularity.DAY,
    tz: Annotated[str | None, Query(max_length=64, description="IANA zone; default the tenant's")] = None,
    agent: Annotated[str | None, Query(min_length=1, max_length=150, description="an agent's ID")] = None,
    business_number: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
) -> reporting.Params:
    return reporting.Params(from_, to, granularity, tz, agent, business_number)


ScopeDep = Annotated[reporting.Scope, Depends(report_scope)]
ParamsDep = Annotated[reporting.Params, Depends(report_params)]
FormatQuery = Annotated[Format, Query(description="json, or csv: the series (agents: one row each)")]


# FastAPI documents the response model's JSON; format=csv answers text.
CSV_TOO: dict[int | str, dict[str, Any]] = {200: {"content": {"text/csv": {"schema": {"type": "string"}}}}}


def _answer(report: dict[str, Any], rows_key: str, fmt: Format, name: str) -> Any:
    if fmt is Format.CSV:
        return Response(
            reporting.to_csv(report[rows_key]),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
        )
    return report


@router.get(
    "/conversations",
    response_model=ConversationReport,
    responses=CSV_TOO,
    summary="Conversation KPIs per period",
)
async def conversations(
    scope: ScopeDep, params: ParamsDep, services: ServicesDep, format: FormatQuery = Format.JSON
) -> Any:
    report = await reporting.run(services.db, services.events.relay, scope, params, "conversations")
    return _answer(report, "series", format, "conversations")


@router.get(
    "/messages", response_model=MessageReport, responses=CSV_TOO, summary="Delivery, read and failure figures"
)
async def messages(
    scope: ScopeDep, params: ParamsDep, services: ServicesDep, format: FormatQuery = Format.JSON
) -> Any:
    report = await reporting.run(services.db, services.events.relay, scope, params, "messages")
    return _answer(report, "series", format, "messages")


@router.get(
    "/customers",
    response_model=CustomerReport,
    responses=CSV_TOO,
    summary="New and returning customers, channels, hours",
)
async def customers(
    scope: ScopeDep, params: ParamsDep, services: ServicesDep, format: FormatQuery = Format.JSON
) -> Any:
    report = await reporting.run(services.db, services.events.relay, scope, params, "customers")
    return _answer(report, "series", format, "customers")


@router.get(
    "/agents",
    response_model=AgentReport,
    responses=CSV_TOO,
    summary="Per agent: handled, response times, load",
)
async def agents(
    scope: ScopeDep, params: ParamsDep, services: ServicesDep, format: FormatQuery = Format.JSON
) -> Any:
    report = await reporting.run(services.db, services.events.relay, scope, params, "agents")
    return _answer(report, "agents", format, "agents")
