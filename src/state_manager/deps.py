"""FastAPI dependencies, named for what they give. They validate as they inject."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import HTTPConnection

from state_manager.cache import LookupCache
from state_manager.db import Database
from state_manager.errors import BadRequest, Forbidden
from state_manager.events.service import EventSystem
from state_manager.messages.inbound import InboundRecorder
from state_manager.queues.consumer import QueueConsumers
from state_manager.settings import Settings
from state_manager.subscriptions.dispatcher import WebhookDispatcher
from state_manager.tenants.auth import Authenticator, Principal
from state_manager.tenants.schemas import KeyKind


@dataclass(frozen=True, slots=True)
class Services:
    """What the lifespan opened; one per process."""

    settings: Settings
    db: Database
    cache: LookupCache
    auth: Authenticator
    inbound: InboundRecorder
    events: EventSystem
    webhooks: WebhookDispatcher  # webhook subscriptions: sends deliveries
    queues: QueueConsumers | None  # when RABBITMQ_URL is set


async def get_services(request: Request) -> Services:
    # async so FastAPI calls it inline; a plain def costs a thread-pool hop on every request.
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return x_api_key


def client_address(connection: HTTPConnection) -> str | None:
    """The caller's address as uvicorn gives it (behind a proxy: X-Forwarded-For, FORWARDED_ALLOW_IPS)."""
    client = connection.scope.get("client")
    return client[0] if client else None


async def get_principal(
    request: Request,
    services: ServicesDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal:
    return await services.auth.principal(presented_key(authorization, x_api_key), client_address(request))


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_admin(principal: PrincipalDep) -> Principal:
    if principal.kind is not KeyKind.ADMIN:
        raise Forbidden("this needs an admin key")
    return principal


AdminDep = Annotated[Principal, Depends(get_admin)]

# Who acts when AUTH_MODE=disabled: no key was checked, so no key can be named in the audit log.
AUTH_DISABLED_ACTOR = "auth-disabled"


def actor_of(principal: Principal) -> str:
    """What the audit log records as the actor of a request: the ID of the API key it presented."""
    return principal.key_id or AUTH_DISABLED_ACTOR


@dataclass(frozen=True, slots=True)
class TenantScope:
    """A request's tenant and the way to open a transaction scoped to it."""

    tenant_id: str
    db: Database
    cache: LookupCache
    actor: str  # `actor_of` the request's key, for the audit log

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction; once it commits, the customers it touched leave every read cache."""
        async with self.cache.publishing_changes(), self.db.transaction(self.tenant_id, write=True) as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.db.transaction(self.tenant_id, write=False) as conn:
            yield conn


def tenant_header(request: HTTPConnection) -> str | None:
    """X-Tenant-ID, sent once: two of them (one added by a proxy, one by the caller) would be read as the
    first here and maybe as the last elsewhere, so they are refused (400)."""
    values = request.headers.getlist("x-tenant-id")
    if len(values) > 1:
        raise BadRequest("send X-Tenant-ID once")
    return values[0] if values else None


async def get_tenant_scope(request: Request) -> TenantScope:
    """The tenant a request acts for: its tenant key's, or `X-Tenant-ID` with a service or admin key.

    Reads its headers itself rather than through FastAPI parameters: this runs on every /v1 request, and
    FastAPI's per-parameter machinery cost more than the hot lookups it guards (the headers are in the
    OpenAPI schema all the same, see app.py).
    """
    services: Services = request.app.state.services
    headers = request.headers
    principal = await services.auth.principal(
        presented_key(headers.get("authorization"), headers.get("x-api-key")), client_address(request)
    )
    tenant_id = await services.auth.tenant_for(principal, tenant_header(request))
    return TenantScope(tenant_id=tenant_id, db=services.db, cache=services.cache, actor=actor_of(principal))


TenantDep = Annotated[TenantScope, Depends(get_tenant_scope)]
