"""Webhooks from the WhatsApp side, as Meta sends them or as the existing inbound queue carries them."""

from __future__ import annotations

from fastapi import APIRouter, Request

from state_manager.deps import ServicesDep, TenantDep
from state_manager.strict_json import StrictJsonRoute
from state_manager.webhooks import service
from state_manager.webhooks.schemas import QueuedInboundMessage, WebhookAccepted, WhatsAppWebhook

router = APIRouter(prefix="/v1/inbound", tags=["webhooks"], route_class=StrictJsonRoute)


@router.post(
    "/whatsapp",
    summary="Accept a WhatsApp webhook: record its messages once, apply its statuses, keep its raw body",
)
async def accept_whatsapp(
    body: WhatsAppWebhook | QueuedInboundMessage,
    request: Request,
    scope: TenantDep,
    services: ServicesDep,
) -> WebhookAccepted:
    return await service.accept_whatsapp(
        scope.db, scope.cache, services.inbound, scope.tenant_id, await request.body(), body
    )
