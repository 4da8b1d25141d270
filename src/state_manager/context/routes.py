"""Context key/values of a conversation or a customer."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from state_manager.context import service
from state_manager.context.schemas import ContextPatch, ContextRead
from state_manager.deps import TenantDep
from state_manager.strict_json import StrictJsonRoute

router = APIRouter(prefix="/v1", tags=["context"], route_class=StrictJsonRoute)


@router.get("/conversations/{conversation_id}/context")
async def get_conversation_context(conversation_id: uuid.UUID, scope: TenantDep) -> ContextRead:
    async with scope.read() as conn:
        return await service.read(conn, scope.tenant_id, "conversation", conversation_id)


@router.patch("/conversations/{conversation_id}/context")
async def patch_conversation_context(
    conversation_id: uuid.UUID, body: ContextPatch, scope: TenantDep
) -> ContextRead:
    async with scope.write() as conn:
        return await service.patch(conn, scope.tenant_id, "conversation", conversation_id, body)


@router.get("/customers/{customer_id}/context")
async def get_customer_context(customer_id: uuid.UUID, scope: TenantDep) -> ContextRead:
    async with scope.read() as conn:
        return await service.read(conn, scope.tenant_id, "customer", customer_id)


@router.patch("/customers/{customer_id}/context")
async def patch_customer_context(customer_id: uuid.UUID, body: ContextPatch, scope: TenantDep) -> ContextRead:
    async with scope.write() as conn:
        return await service.patch(conn, scope.tenant_id, "customer", customer_id, body)
