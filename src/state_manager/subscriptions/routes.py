"""Webhook subscriptions (`/v1/webhooks/subscriptions`) and the delivery log (`/v1/webhooks/deliveries`)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Header, Query, Request, Response, status

from state_manager.deps import ServicesDep, TenantDep
from state_manager.etag import etag, expected_version
from state_manager.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page, decode_cursor, encode_cursor
from state_manager.query import parse_query, query_parameters
from state_manager.strict_json import StrictJsonRoute
from state_manager.subscriptions import service
from state_manager.subscriptions.schemas import (
    DeadRetry,
    DeliveryDetail,
    DeliveryQuery,
    DeliveryRead,
    RetriedCount,
    SecretRotation,
    SubscriptionCreate,
    SubscriptionRead,
    SubscriptionUpdate,
    SubscriptionWithSecret,
)

router = APIRouter(prefix="/v1/webhooks", tags=["webhook subscriptions"], route_class=StrictJsonRoute)
IfMatch = Annotated[str | None, Header(alias="If-Match", description="ETag from a previous read")]
_STALE: dict[int | str, dict[str, Any]] = {412: {"description": "If-Match names an older version"}}
S = TypeVar("S", bound=SubscriptionRead)


def _with_etag(response: Response, subscription: S) -> S:
    response.headers["ETag"] = etag(subscription.version)
    return subscription


@router.post(
    "/subscriptions",
    status_code=status.HTTP_201_CREATED,
    summary="Subscribe a URL to the tenant's events; the answer carries the signing secret, once",
)
async def create_subscription(
    body: SubscriptionCreate, scope: TenantDep, services: ServicesDep, response: Response
) -> SubscriptionWithSecret:
    refuse = services.settings.webhook_refuse_private_addresses
    async with scope.write() as conn:
        created = await service.create(conn, scope.tenant_id, body, refuse_private=refuse)
    return _with_etag(response, created)


@router.get("/subscriptions")
async def list_subscriptions(
    scope: TenantDep,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Page[SubscriptionRead]:
    after = decode_cursor(cursor) if cursor else None
    async with scope.read() as conn:
        items = await service.list_page(conn, scope.tenant_id, after=after, limit=limit)
    next_cursor = encode_cursor(items[-1].created_at, items[-1].id) if len(items) == limit else None
    return Page(items=items, next_cursor=next_cursor)


@router.get("/subscriptions/{subscription_id}")
async def get_subscription(
    subscription_id: uuid.UUID, scope: TenantDep, response: Response
) -> SubscriptionRead:
    async with scope.read() as conn:
        return _with_etag(response, await service.read(conn, scope.tenant_id, subscription_id))


@router.patch("/subscriptions/{subscription_id}", responses=_STALE)
async def update_subscription(
    subscription_id: uuid.UUID,
    body: SubscriptionUpdate,
    scope: TenantDep,
    services: ServicesDep,
    response: Response,
    if_match: IfMatch = None,
) -> SubscriptionRead:
    expected = expected_version(if_match)
    refuse = services.settings.webhook_refuse_private_addresses
    async with scope.write() as conn:
        updated = await service.update(
            conn, scope.tenant_id, subscription_id, body, expected, refuse_private=refuse
        )
    if updated.active:
        services.webhooks.notify(scope.tenant_id)  # deliveries held while it was inactive may go now
    return _with_etag(response, updated)


@router.post(
    "/subscriptions/{subscription_id}/rotate-secret",
    responses=_STALE,
    summary="Replace the signing secret (generated unless given); the answer carries it, once",
)
async def rotate_secret(
    subscription_id: uuid.UUID,
    scope: TenantDep,
    response: Response,
    body: SecretRotation | None = None,
    if_match: IfMatch = None,
) -> SubscriptionWithSecret:
    expected = expected_version(if_match)
    secret = body.secret if body is not None else None
    async with scope.write() as conn:
        rotated = await service.rotate_secret(conn, scope.tenant_id, subscription_id, secret, expected)
    return _with_etag(response, rotated)


@router.delete(
    "/subscriptions/{subscription_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=_STALE,
    summary="Delete a subscription with its delivery log; nothing more is sent to it",
)
async def delete_subscription(subscription_id: uuid.UUID, scope: TenantDep, if_match: IfMatch = None) -> None:
    expected = expected_version(if_match)
    async with scope.write() as conn:
        await service.delete(conn, scope.tenant_id, subscription_id, expected)


@router.get(
    "/deliveries",
    summary="The delivery log, newest first; status=dead lists the dead letters",
    openapi_extra=query_parameters(DeliveryQuery),
)
async def list_deliveries(request: Request, scope: TenantDep) -> Page[DeliveryRead]:
    query = parse_query(DeliveryQuery, request)
    before = decode_cursor(query.cursor) if query.cursor else None
    async with scope.read() as conn:
        items = await service.list_deliveries(
            conn,
            scope.tenant_id,
            status=query.status,
            subscription_id=query.subscription_id,
            before=before,
            limit=query.limit,
        )
    next_cursor = encode_cursor(items[-1].created_at, items[-1].id) if len(items) == query.limit else None
    return Page(items=items, next_cursor=next_cursor)


@router.get("/deliveries/{delivery_id}", summary="A delivery, the event it carries and its attempt log")
async def get_delivery(delivery_id: uuid.UUID, scope: TenantDep) -> DeliveryDetail:
    async with scope.read() as conn:
        return await service.read_delivery(conn, scope.tenant_id, delivery_id)


@router.post(
    "/deliveries/{delivery_id}/retry",
    responses={409: {"description": "The delivery is not dead"}},
    summary="Send a dead delivery again, now, with a fresh round of attempts",
)
async def retry_delivery(delivery_id: uuid.UUID, scope: TenantDep, services: ServicesDep) -> DeliveryDetail:
    async with scope.write() as conn:
        retried = await service.retry(conn, scope.tenant_id, delivery_id)
    services.webhooks.notify(scope.tenant_id)
    return retried


@router.post("/dead/retry", summary="Send every dead delivery of a subscription again")
async def retry_dead(body: DeadRetry, scope: TenantDep, services: ServicesDep) -> RetriedCount:
    async with scope.write() as conn:
        count = await service.retry_dead(conn, scope.tenant_id, body.subscription_id)
    if count:
        services.webhooks.notify(scope.tenant_id)
    return RetriedCount(retried=count)
