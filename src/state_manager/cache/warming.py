"""Warming: the lookups of recently active open conversations, loaded before callers ask for them.

Each lookup goes through `LookupCache.get` like a caller's would: entries another instance put in Redis
are taken from there, the rest loaded from the database, under the same guards as any read.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from state_manager.cache import LookupCache
from state_manager.conversations import repository as conversations_repo
from state_manager.conversations import service as conversations
from state_manager.customers import service as customers
from state_manager.customers.identity import IdentityChannel
from state_manager.db import Database
from state_manager.db.types import utcnow
from state_manager.errors import NotFound
from state_manager.settings import Settings
from state_manager.tenants import repository as tenants_repo

log = logging.getLogger("state_manager.cache")


@dataclass(frozen=True, slots=True)
class Progress:
    tenant_id: str
    conversations: int  # warmed so far, all tenants
    total: int  # to warm, all tenants (known once every tenant has been asked)
    lookups: int


async def _plan(
    db: Database, tenant_ids: Sequence[str] | None, limit: int, since: dt.datetime
) -> list[tuple[str, list[dict[str, object]]]]:
    if tenant_ids is None:
        async with db.transaction(None, write=False) as conn:
            tenant_ids = [row["id"] for row in await tenants_repo.list_tenants(conn, None)]
    plan = []
    left = limit
    for tenant_id in tenant_ids:
        if left <= 0:
            break
        async with db.transaction(tenant_id, write=False) as conn:
            rows = await conversations_repo.recently_active_open(conn, tenant_id, since, left)
        plan.append((tenant_id, [dict(row) for row in rows]))
        left -= len(rows)
    return plan


async def warm(
    db: Database, cache: LookupCache, *, tenant_ids: Sequence[str] | None, limit: int, hours: float
) -> AsyncIterator[Progress]:
    """Warms the open-conversation, Genesys-ID and customer lookups of up to `limit` open conversations
    active in the last `hours`, the latest first; yields after each conversation."""
    plan = await _plan(db, tenant_ids, limit, utcnow() - dt.timedelta(hours=hours))
    total = sum(len(rows) for _, rows in plan)
    done = lookups = 0
    for tenant_id, rows in plan:
        for row in rows:
            wa_id, genesys_id = row["wa_id"], row["genesys_conversation_id"]
            try:
                if isinstance(wa_id, str):
                    await conversations.open_by_identity_cached(
                        db, cache, tenant_id, "whatsapp", wa_id, str(row["business_number_id"])
                    )
                    await customers.by_identity_cached(db, cache, tenant_id, IdentityChannel.WHATSAPP, wa_id)
                    lookups += 2
                if isinstance(genesys_id, str):
                    await conversations.by_genesys_id_cached(db, cache, tenant_id, genesys_id)
                    lookups += 1
            except NotFound:
                pass  # closed since it was listed
            done += 1
            yield Progress(tenant_id, done, total, lookups)


async def warm_at_start(settings: Settings, db: Database, cache: LookupCache) -> None:
    """Run in the background at start-up; requests are served meanwhile."""
    if settings.cache_warm_limit <= 0:
        return
    started = time.perf_counter()
    last = None
    try:
        async for progress in warm(
            db, cache, tenant_ids=None, limit=settings.cache_warm_limit, hours=settings.cache_warm_hours
        ):
            last = progress
    except Exception:
        log.exception("cache warming stopped early")
        return
    if last is not None:
        log.info(
            "cache warmed: %d lookups of %d conversations in %.2f s",
            last.lookups,
            last.conversations,
            time.perf_counter() - started,
        )
