"""Conversations: open, read, list, update, state transitions, participants."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status
from pydantic import BaseModel, Field

from state_manager.agents import service as agents
from state_manager.agents.schemas import DEFAULT_MESSAGES, MAX_MESSAGES, AgentContext
from state_manager.conversations import service
from state_manager.conversations.lifecycle import ConversationState
from state_manager.conversations.schemas import (
    BUSINESS_NUMBER_ID,
    ConversationOpen,
    ConversationOpened,
    ConversationRead,
    ConversationUpdate,
    ParticipantAdd,
    ParticipantLeave,
    ParticipantRead,
    StateChangeRead,
    TransitionRequest,
)
from state_manager.customers import service as customers
from state_manager.customers.identity import IdentityChannel
from state_manager.customers.schemas import IdentityIn
from state_manager.deps import TenantDep, get_tenant_scope
from state_manager.errors import BadRequest
from state_manager.etag import etag, expected_version
from state_manager.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page, decode_cursor, encode_cursor
from state_manager.query import parse_query, query_parameters
from state_manager.strict_json import StrictJsonRoute
from state_manager.timefmt import FilterTime

router = APIRouter(prefix="/v1/conversations", tags=["conversations"], route_class=StrictJsonRoute)
IfMatch = Annotated[str | None, Header(alias="If-Match", description="ETag from a previous read")]


def _with_etag(response: Response, conversation: ConversationRead) -> ConversationRead:
    response.headers["ETag"] = etag(conversation.version)
    return conversation


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Get or create the open conversation of a customer on a business number",
    responses={200: {"description": "it was already open", "model": ConversationOpened}},
)
async def open_conversation(
    body: ConversationOpen, scope: TenantDep, response: Response
) -> ConversationOpened:
    async with scope.write() as conn:
        conversation, created = await service.open_conversation(conn, scope.tenant_id, body)
    if not created:
        response.status_code = status.HTTP_200_OK
    response.headers["ETag"] = etag(conversation.version)
    return ConversationOpened(created=created, conversation=conversation)


@router.get("")
async def list_conversations(
    scope: TenantDep,
    state: Annotated[list[ConversationState] | None, Query()] = None,
    customer_id: uuid.UUID | None = None,
    agent_id: Annotated[str | None, Query(max_length=128)] = None,
    business_number_id: Annotated[str | None, Query(pattern=BUSINESS_NUMBER_ID)] = None,
    started_after: FilterTime | None = None,
    started_before: FilterTime | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Page[ConversationRead]:
    async with scope.read() as conn:
        items = await service.list_page(
            conn,
            scope.tenant_id,
            states=[s.value for s in state] if state else None,
            customer_id=customer_id,
            agent_id=agent_id,
            business_number_id=business_number_id,
            started_after=started_after,
            started_before=started_before,
            before=decode_cursor(cursor) if cursor else None,
            limit=limit,
        )
    next_cursor = encode_cursor(items[-1].started_at, items[-1].id) if len(items) == limit else None
    return Page(items=items, next_cursor=next_cursor)


class OpenLookup(BaseModel):
    wa_id: str | None = Field(
        default=None, min_length=1, max_length=256, description="WhatsApp ID; shorthand for channel=whatsapp"
    )
    channel: IdentityChannel | None = None
    external_id: str | None = Field(default=None, max_length=256)
    business_number_id: str | None = Field(
        default=None, pattern=BUSINESS_NUMBER_ID, description="Without it: the most recently active"
    )


@router.get(
    "/open",
    summary="The open conversation of a customer, by identity",
    response_model=ConversationRead,
    responses={200: {"headers": {"ETag": {"description": "the conversation's version"}}}},
    openapi_extra=query_parameters(OpenLookup),
)
async def get_open_conversation(request: Request) -> Response:
    # The hottest route: its tenant and its query are read in one step each, without FastAPI's dependency
    # solving (a seventh of a cached lookup's CPU), and its answer is ready-made JSON, usually from the
    # cache (see service).
    scope = await get_tenant_scope(request)
    query = parse_query(OpenLookup, request)
    if query.wa_id is not None:
        identity = IdentityIn(channel=IdentityChannel.WHATSAPP, external_id=query.wa_id)
    elif query.channel is not None and query.external_id:
        identity = IdentityIn(channel=query.channel, external_id=query.external_id)
    else:
        raise BadRequest("give wa_id, or channel and external_id")
    key = customers.normalized(identity, "wa_id" if query.wa_id is not None else "external_id")
    body, tag = await service.open_by_identity_cached(
        scope.db, scope.cache, scope.tenant_id, *key, query.business_number_id
    )
    return Response(body, media_type="application/json", headers={"ETag": tag})


@router.get(
    "/by-genesys-id/{genesys_conversation_id}",
    response_model=ConversationRead,
    responses={200: {"headers": {"ETag": {"description": "the conversation's version"}}}},
)
async def get_conversation_by_genesys_id(genesys_conversation_id: str, scope: TenantDep) -> Response:
    body, tag = await service.by_genesys_id_cached(
        scope.db, scope.cache, scope.tenant_id, genesys_conversation_id
    )
    return Response(body, media_type="application/json", headers={"ETag": tag})


@router.get("/{conversation_id}")
async def get_conversation(
    conversation_id: uuid.UUID, scope: TenantDep, response: Response
) -> ConversationRead:
    async with scope.read() as conn:
        return _with_etag(response, await service.read(conn, scope.tenant_id, conversation_id))


@router.patch("/{conversation_id}", responses={412: {"description": "If-Match names an older version"}})
async def update_conversation(
    conversation_id: uuid.UUID,
    body: ConversationUpdate,
    scope: TenantDep,
    response: Response,
    if_match: IfMatch = None,
) -> ConversationRead:
    expected = expected_version(if_match)
    async with scope.write() as conn:
        return _with_etag(
            response, await service.update(conn, scope.tenant_id, conversation_id, body, expected)
        )


@router.post(
    "/{conversation_id}/transitions",
    summary="Move the conversation to another state",
    responses={409: {"description": "not allowed from the current state (given in the body)"}},
)
async def transition_conversation(
    conversation_id: uuid.UUID,
    body: TransitionRequest,
    scope: TenantDep,
    response: Response,
    if_match: IfMatch = None,
) -> ConversationRead:
    expected = expected_version(if_match)
    async with scope.write() as conn:
        return _with_etag(
            response, await service.transition(conn, scope.tenant_id, conversation_id, body, expected)
        )


@router.get("/{conversation_id}/history", summary="Every state change, oldest first")
async def conversation_history(conversation_id: uuid.UUID, scope: TenantDep) -> list[StateChangeRead]:
    async with scope.read() as conn:
        return await service.history(conn, scope.tenant_id, conversation_id)


@router.get("/{conversation_id}/participants")
async def list_participants(conversation_id: uuid.UUID, scope: TenantDep) -> list[ParticipantRead]:
    async with scope.read() as conn:
        return await service.participants(conn, scope.tenant_id, conversation_id)


@router.post(
    "/{conversation_id}/participants",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "already present", "model": ParticipantRead}},
)
async def add_participant(
    conversation_id: uuid.UUID, body: ParticipantAdd, scope: TenantDep, response: Response
) -> ParticipantRead:
    async with scope.write() as conn:
        participant, created = await service.add_participant(conn, scope.tenant_id, conversation_id, body)
    if not created:
        response.status_code = status.HTTP_200_OK
    return participant


@router.post("/{conversation_id}/participants/{participant_id}/leave")
async def remove_participant(
    conversation_id: uuid.UUID, participant_id: uuid.UUID, body: ParticipantLeave, scope: TenantDep
) -> ParticipantRead:
    async with scope.write() as conn:
        return await service.remove_participant(
            conn, scope.tenant_id, conversation_id, participant_id, body.left_at
        )


@router.get(
    "/{conversation_id}/agent-context",
    summary="Everything an agent needs: conversation, participants, customer, context, messages, history",
    response_model=AgentContext,
)
async def get_agent_context(
    conversation_id: uuid.UUID,
    scope: TenantDep,
    messages: Annotated[int, Query(ge=0, le=MAX_MESSAGES)] = DEFAULT_MESSAGES,
) -> Response:
    body = await agents.agent_context_cached(
        scope.db, scope.cache, scope.tenant_id, conversation_id, message_count=messages
    )
    return Response(body, media_type="application/json")
