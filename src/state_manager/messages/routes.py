"""Messages: inbound recording, per-conversation recording and listing, lookups, ID links, receipts."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response, status

from state_manager.conversations.schemas import ConversationRead
from state_manager.deps import ServicesDep, TenantDep
from state_manager.etag import etag
from state_manager.messages import outbound, service
from state_manager.messages.outbound import GenesysOutboundMessage, OutboundRecorded, QueuedOutboundMessage
from state_manager.messages.schemas import (
    Correlation,
    InboundMessage,
    InboundRecorded,
    LinkIds,
    MessageRead,
    MessageRecord,
    ReceiptBatch,
    ReceiptResults,
)
from state_manager.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page, decode_cursor, encode_cursor
from state_manager.strict_json import StrictJsonRoute

router = APIRouter(tags=["messages"], route_class=StrictJsonRoute)


@router.post(
    "/v1/messages/inbound",
    status_code=status.HTTP_201_CREATED,
    response_model=InboundRecorded,
    summary="Record a customer's WhatsApp message (customer, conversation and message in one transaction)",
    responses={200: {"description": "a repeat of a message already recorded", "model": InboundRecorded}},
)
async def record_inbound(body: InboundMessage, scope: TenantDep, services: ServicesDep) -> Response:
    # The hottest write: answered with ready-made JSON, so that FastAPI's handler is skipped (strict_json.py).
    recorded = await services.inbound.record(scope.tenant_id, body)
    return Response(
        recorded.model_dump_json(),
        status_code=status.HTTP_200_OK if recorded.duplicate else status.HTTP_201_CREATED,
        media_type="application/json",
    )


@router.post(
    "/v1/conversations/{conversation_id}/messages",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "a repeat of a message already recorded", "model": MessageRead}},
)
async def record_message(
    conversation_id: uuid.UUID, body: MessageRecord, scope: TenantDep, response: Response
) -> MessageRead:
    async with scope.write() as conn:
        message, created = await service.record(conn, scope.tenant_id, conversation_id, body)
    if not created:
        response.status_code = status.HTTP_200_OK
    return message


@router.get("/v1/conversations/{conversation_id}/messages")
async def list_messages(
    conversation_id: uuid.UUID,
    scope: TenantDep,
    order: Literal["asc", "desc"] = "asc",
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Page[MessageRead]:
    async with scope.read() as conn:
        items = await service.list_page(
            conn,
            scope.tenant_id,
            conversation_id,
            after=decode_cursor(cursor) if cursor else None,
            newest_first=order == "desc",
            limit=limit,
        )
    next_cursor = encode_cursor(items[-1].occurred_at, items[-1].id) if len(items) == limit else None
    return Page(items=items, next_cursor=next_cursor)


@router.get("/v1/messages/by-wamid/{wamid}", response_model=MessageRead)
async def get_message_by_wamid(wamid: str, scope: TenantDep) -> Response:
    body = await service.by_external_id_cached(scope.db, scope.cache, scope.tenant_id, "wamid", wamid)
    return Response(body, media_type="application/json")


@router.get("/v1/messages/by-genesys-id/{genesys_message_id}", response_model=MessageRead)
async def get_message_by_genesys_id(genesys_message_id: str, scope: TenantDep) -> Response:
    body = await service.by_external_id_cached(
        scope.db, scope.cache, scope.tenant_id, "genesys", genesys_message_id
    )
    return Response(body, media_type="application/json")


@router.get("/v1/messages/{message_id}")
async def get_message(message_id: uuid.UUID, scope: TenantDep) -> MessageRead:
    async with scope.read() as conn:
        return await service.read(conn, scope.tenant_id, message_id)


@router.post(
    "/v1/messages/{message_id}/link",
    summary="Link the wamid or Genesys ID learnt later; receipts held for it are applied",
)
async def link_message_ids(message_id: uuid.UUID, body: LinkIds, scope: TenantDep) -> MessageRead:
    async with scope.write() as conn:
        return await service.link_ids(conn, scope.tenant_id, message_id, body)


@router.post("/v1/receipts", summary="Apply delivery receipts in a batch, in any order, any number of times")
async def apply_receipts(body: ReceiptBatch, scope: TenantDep) -> ReceiptResults:
    async with scope.write() as conn:
        return ReceiptResults(results=await service.apply_receipts(conn, scope.tenant_id, body.receipts))


@router.post(
    "/v1/correlations",
    summary="Link a Genesys conversation to the conversation of a WhatsApp message (any of its messages)",
)
async def correlate(body: Correlation, scope: TenantDep, response: Response) -> ConversationRead:
    async with scope.write() as conn:
        conversation = await service.correlate(conn, scope.tenant_id, body)
    response.headers["ETag"] = etag(conversation.version)
    return conversation


@router.post(
    "/v1/outbound/genesys",
    status_code=status.HTTP_201_CREATED,
    summary="Record an agent's message from Genesys (Open Messaging webhook or queue shape) for WhatsApp",
    responses={200: {"description": "a repeat of a message already recorded", "model": OutboundRecorded}},
)
async def record_outbound(
    body: GenesysOutboundMessage | QueuedOutboundMessage, scope: TenantDep, response: Response
) -> OutboundRecorded:
    async with scope.write() as conn:
        recorded = await outbound.record_outbound(conn, scope.tenant_id, body)
    if recorded.duplicate:
        response.status_code = status.HTTP_200_OK
    return recorded
