"""Customer profiles and identities."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response, status
from fastapi.responses import StreamingResponse

from state_manager.customers import erasure, export, service
from state_manager.customers.identity import IdentityChannel
from state_manager.customers.schemas import (
    CustomerCreate,
    CustomerMerge,
    CustomerRead,
    CustomerUpdate,
    ErasureRead,
    ErasureRequest,
    IdentityIn,
)
from state_manager.deps import TenantDep
from state_manager.etag import etag, expected_version
from state_manager.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page, decode_cursor, encode_cursor
from state_manager.strict_json import StrictJsonRoute

router = APIRouter(prefix="/v1/customers", tags=["customers"], route_class=StrictJsonRoute)
IfMatch = Annotated[str | None, Header(alias="If-Match", description="ETag from a previous read")]


def _with_etag(response: Response, customer: CustomerRead) -> CustomerRead:
    response.headers["ETag"] = etag(customer.version)
    return customer


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_customer(body: CustomerCreate, scope: TenantDep, response: Response) -> CustomerRead:
    async with scope.write() as conn:
        return _with_etag(response, await service.create(conn, scope.tenant_id, body))


@router.get("")
async def list_customers(
    scope: TenantDep,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Page[CustomerRead]:
    after = decode_cursor(cursor) if cursor else None
    async with scope.read() as conn:
        items = await service.list_page(conn, scope.tenant_id, after=after, limit=limit)
    next_cursor = encode_cursor(items[-1].created_at, items[-1].id) if len(items) == limit else None
    return Page(items=items, next_cursor=next_cursor)


@router.get(
    "/by-identity/{channel}/{external_id}",
    response_model=CustomerRead,
    responses={200: {"headers": {"ETag": {"description": "the customer's version"}}}},
)
async def get_customer_by_identity(
    channel: IdentityChannel, external_id: Annotated[str, Path(max_length=256)], scope: TenantDep
) -> Response:
    body, tag = await service.by_identity_cached(scope.db, scope.cache, scope.tenant_id, channel, external_id)
    return Response(body, media_type="application/json", headers={"ETag": tag})


@router.get("/{customer_id}")
async def get_customer(customer_id: uuid.UUID, scope: TenantDep, response: Response) -> CustomerRead:
    async with scope.read() as conn:
        return _with_etag(response, await service.read(conn, scope.tenant_id, customer_id))


@router.patch("/{customer_id}", responses={412: {"description": "If-Match names an older version"}})
async def update_customer(
    customer_id: uuid.UUID,
    body: CustomerUpdate,
    scope: TenantDep,
    response: Response,
    if_match: IfMatch = None,
) -> CustomerRead:
    expected = expected_version(if_match)
    async with scope.write() as conn:
        return _with_etag(response, await service.update(conn, scope.tenant_id, customer_id, body, expected))


@router.get(
    "/{customer_id}/export",
    summary="Everything held about the customer, as one JSON document (a download; audited)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The document described in docs/data-rights.md, streamed",
            "content": {"application/json": {}},
        }
    },
)
async def export_customer(customer_id: uuid.UUID, scope: TenantDep) -> StreamingResponse:
    # Recorded and committed before the first byte leaves (customers/export.py says why).
    async with scope.write() as conn:
        await export.record_export(conn, scope.tenant_id, customer_id, actor=scope.actor)
    return StreamingResponse(
        export.export_document(scope.db, scope.tenant_id, customer_id),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="customer-{customer_id}.json"'},
    )


@router.post(
    "/{customer_id}/erase",
    summary="Erase the customer's personal data; anonymous counts stay (audited; twice = once)",
)
async def erase_customer(
    customer_id: uuid.UUID, scope: TenantDep, body: ErasureRequest | None = None
) -> ErasureRead:
    reason = body.reason if body is not None else None
    async with scope.write() as conn:
        return await erasure.erase(conn, scope.tenant_id, customer_id, actor=scope.actor, reason=reason)


@router.post(
    "/{customer_id}/merge",
    summary="Merge another customer into this one (identities, conversations, context), then remove it",
    responses={
        409: {"description": "both have an open conversation on the same business number, or one is erased"},
        412: {"description": "If-Match names an older version"},
    },
)
async def merge_customer(
    customer_id: uuid.UUID,
    body: CustomerMerge,
    scope: TenantDep,
    response: Response,
    if_match: IfMatch = None,
) -> CustomerRead:
    expected = expected_version(if_match)
    async with scope.write() as conn:
        return _with_etag(response, await service.merge(conn, scope.tenant_id, customer_id, body, expected))


@router.post("/{customer_id}/identities", status_code=status.HTTP_201_CREATED)
async def add_identity(
    customer_id: uuid.UUID, body: IdentityIn, scope: TenantDep, response: Response
) -> CustomerRead:
    async with scope.write() as conn:
        return _with_etag(response, await service.add_identity(conn, scope.tenant_id, customer_id, body))
