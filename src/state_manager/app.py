"""The FastAPI application: routers, middleware, error handlers, and a lifespan that opens the backends."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from state_manager import http_errors, openapi_errors, startup
from state_manager.analytics.projector import AnalyticsProjector
from state_manager.analytics.routes import router as analytics_router
from state_manager.analytics.system_routes import router as system_health_router
from state_manager.audit.routes import router as audit_router
from state_manager.cache import admin as cache_admin
from state_manager.cache import open_lookup_cache
from state_manager.cache.warming import warm_at_start
from state_manager.compat.routes import router as compat_router
from state_manager.context.routes import router as context_router
from state_manager.conversations.routes import router as conversations_router
from state_manager.customers.routes import router as customers_router
from state_manager.dashboard.routes import router as dashboard_router
from state_manager.db import open_database
from state_manager.deps import Services
from state_manager.events.routes import router as events_router
from state_manager.events.service import open_events
from state_manager.genesys.routes import router as genesys_router
from state_manager.jobs.scheduler import JobScheduler
from state_manager.messages import media_urls
from state_manager.messages.inbound import inbound_recorder
from state_manager.messages.routes import router as messages_router
from state_manager.observability import health
from state_manager.observability.logging import configure as configure_logging
from state_manager.observability.middleware import RequestMiddleware
from state_manager.queues.consumer import QueueConsumers
from state_manager.ratelimit import RateLimitPolicy, open_rate_limiter
from state_manager.settings import AuthMode, Settings
from state_manager.subscriptions.dispatcher import WebhookDispatcher
from state_manager.subscriptions.routes import router as subscriptions_router
from state_manager.tenants import routes as tenant_routes
from state_manager.tenants.auth import Authenticator
from state_manager.webhooks.routes import router as webhooks_router

log = logging.getLogger("state_manager")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    media_urls.configure(settings.media_url_policy)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level, settings.log_format)
        db = open_database(settings)
        cache = open_lookup_cache(settings)
        limiter = open_rate_limiter(settings)
        events = open_events(settings, db)
        webhooks = WebhookDispatcher(settings, db)
        scheduler = JobScheduler(settings, db, cache)
        analytics = AnalyticsProjector(db, sweep_seconds=settings.analytics_sweep_seconds)
        events.relay.on_numbered.append(analytics.numbered)  # their conversations are projected at once
        events.relay.on_numbered.append(webhooks.on_numbered)  # deliveries written as events are numbered
        queues = None
        warming: asyncio.Task[None] | None = None
        try:
            await cache.start()
            await limiter.start()
            await startup.prepare_schema(settings, db)
            await startup.first_run(settings, db)
            auth = Authenticator(
                db,
                cache_seconds=settings.api_key_cache_seconds,
                required=settings.auth_mode is AuthMode.REQUIRED,
                default_tenant_id=settings.default_tenant_id,
                limiter=limiter,
                limits=RateLimitPolicy.from_settings(settings),
            )
            inbound = inbound_recorder(db, cache)
            await events.start()
            webhooks.start()
            scheduler.start()
            analytics.start()
            if settings.rabbitmq_url:
                queues = QueueConsumers(settings, db, cache, auth, inbound)
                await queues.start()
            app.state.services = Services(
                settings=settings,
                db=db,
                cache=cache,
                auth=auth,
                inbound=inbound,
                events=events,
                webhooks=webhooks,
                queues=queues,
            )
            # Objects made at start-up live as long as the process; keeping them out of the
            # collector's generations removes most of its pauses from the request path.
            gc.collect()
            gc.freeze()
            warming = asyncio.create_task(warm_at_start(settings, db, cache), name="cache-warming")
            yield
        finally:
            if warming is not None:
                warming.cancel()
                await _stopped("cache warming", asyncio.wait({warming}))
            # The background writers stop before the queue consumers, whose cancelled work could hold
            # SQLite's write lock for a while; the jobs first, as their last batch writes events.
            await _stopped("scheduler", scheduler.close())
            await _stopped("analytics projector", analytics.close())
            await _stopped("event relay", events.close())
            await _stopped("webhook dispatcher", webhooks.close())
            if queues is not None:
                await _stopped("queue consumers", queues.stop())
            await _stopped("rate limiter", limiter.close())
            await _stopped("cache", cache.close())
            await _stopped("database pool", db.dispose())

    app = FastAPI(
        title="state-manager",
        version="0.1.0",
        summary="Conversation state for WhatsApp <-> Genesys Cloud, for many tenants.",
        lifespan=lifespan,
    )
    _document_auth_headers(app)
    app.add_middleware(RequestMiddleware, max_body_bytes=settings.max_body_bytes)
    http_errors.install(app)
    app.include_router(health.router)
    # Routes are matched in order, and matching costs: the hot paths (lookups, inbound messages, receipts)
    # come before the administration.
    app.include_router(conversations_router)
    app.include_router(messages_router)
    app.include_router(webhooks_router)
    app.include_router(genesys_router)
    app.include_router(customers_router)
    app.include_router(context_router)
    app.include_router(events_router)
    app.include_router(subscriptions_router)
    app.include_router(audit_router)
    app.include_router(tenant_routes.own)
    app.include_router(tenant_routes.admin)
    app.include_router(cache_admin.router)
    app.include_router(compat_router)
    app.include_router(analytics_router)
    app.include_router(system_health_router)
    app.include_router(dashboard_router)
    _hot_routes_first(app.router)
    return app


# Each part of the shutdown gets this long; one that takes longer is left behind, logged, so that a stop
# always ends (a stop was seen waiting well past a minute after PostgreSQL restarted, cause not found yet).
SHUTDOWN_STEP_SECONDS = 15.0


async def _stopped(part: str, closing: Awaitable[Any]) -> None:
    task = asyncio.ensure_future(closing)
    done, _ = await asyncio.wait({task}, timeout=SHUTDOWN_STEP_SECONDS)
    if not done:
        task.cancel()  # not waited for: what it waits on is what hangs
        log.warning("shutdown: the %s did not stop within %.0f s; left behind", part, SHUTDOWN_STEP_SECONDS)
    elif not task.cancelled() and task.exception() is not None:
        log.warning("shutdown: the %s failed to stop cleanly", part, exc_info=task.exception())


# What the callers ask most. Matching tries the routes in order, a regular expression each, and the inbound
# route came after every conversation route.
HOT_ROUTES = (
    ("GET", "/v1/conversations/open"),
    ("POST", "/v1/messages/inbound"),
    ("POST", "/v1/receipts"),
)


def _hot_routes_first(router: APIRouter) -> None:
    """Moves HOT_ROUTES right after the health probes. None of them shares a path with a route before it, so
    no request changes route (a literal path before a templated one is what the order gives already)."""
    hot = [
        route
        for method, path in HOT_ROUTES
        for route in router.routes
        if isinstance(route, APIRoute) and route.path == path and method in route.methods
    ]
    if len(hot) != len(HOT_ROUTES):
        # Also what FastAPI 0.137 and later give (their routers keep included routes apart): pyproject.toml
        # says why the service stays below it.
        raise RuntimeError("a route of HOT_ROUTES is not among the application's routes")
    rest = [route for route in router.routes if route not in hot]
    after_health = max(i for i, route in enumerate(rest) if getattr(route, "path", "").startswith("/health/"))
    router.routes[:] = [*rest[: after_health + 1], *hot, *rest[after_health + 1 :]]


_TENANT_HEADER = {
    "name": "X-Tenant-ID",
    "in": "header",
    "required": False,
    "description": "The tenant to act for (needed with service and admin keys)",
    "schema": {"type": "string"},
}


def _document_auth_headers(app: FastAPI) -> None:
    """API keys and X-Tenant-ID in the OpenAPI schema; `deps.get_tenant_scope` reads them itself."""

    def schema() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            document.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "smk_… API key"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
            for path, operations in document["paths"].items():
                if not path.startswith("/v1/"):
                    continue
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}, {"apiKey": []}]
                    if not path.startswith("/v1/admin/"):
                        operation.setdefault("parameters", []).append(_TENANT_HEADER)
            openapi_errors.document_errors(document)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = schema  # type: ignore[method-assign]
