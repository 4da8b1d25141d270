"""The one interface to the cache: `get` a lookup's ready-made JSON through the tiers, `publishing_changes`
around writes.

A lookup is answered by the first of: this process's LRU (`local.py`), Redis (`shared.py`, when
REDIS_URL is set), the database (the caller's `load`). Concurrent misses of one key in one process share
one load. What a load returns is kept in both tiers only if no write touched its tags meanwhile.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from state_manager.cache import invalidation
from state_manager.cache.local import TTL_JITTER, LocalTier, Tag
from state_manager.cache.shared import MAX_LOAD_SECONDS, SharedTier, open_shared_tier
from state_manager.errors import NotFound
from state_manager.observability import metrics
from state_manager.settings import Settings

# Every cache, by name: metrics, the admin view and the docs use these.
OPEN_CONVERSATION = "open_conversation"
CONVERSATION_BY_GENESYS_ID = "conversation_by_genesys_id"
MESSAGE_BY_WAMID = "message_by_wamid"
MESSAGE_BY_GENESYS_ID = "message_by_genesys_id"
CUSTOMER_BY_IDENTITY = "customer_by_identity"
AGENT_CONTEXT = "agent_context"
LEGACY_MAPPING = "legacy_mapping"
CACHES = (
    OPEN_CONVERSATION,
    CONVERSATION_BY_GENESYS_ID,
    MESSAGE_BY_WAMID,
    MESSAGE_BY_GENESYS_ID,
    CUSTOMER_BY_IDENTITY,
    AGENT_CONTEXT,
    LEGACY_MAPPING,
)


@dataclass(frozen=True, slots=True)
class Loaded:
    """A lookup's answer as read from the database."""

    body: bytes
    etag: str
    tags: tuple[str, ...]  # what a write must name to drop it (`invalidation.customer_tag`, …)
    valid_for: float | None = None  # seconds it stays true whatever is written; 0 or less: never keep


Answer = tuple[bytes, str]  # JSON body, ETag


def _encode(loaded: Loaded, expires_at: float) -> bytes:
    header = f"{expires_at:.3f}\n{loaded.etag}\n{' '.join(loaded.tags)}\n".encode()
    return header + loaded.body


def decode_entry(value: bytes) -> tuple[float, str, tuple[str, ...], bytes]:
    expires_at, etag, tags, body = value.split(b"\n", 3)
    return float(expires_at), etag.decode(), tuple(tags.decode().split()), body


class LookupCache:
    def __init__(self, local: LocalTier, shared: SharedTier, shared_seconds: float) -> None:
        self.local = local
        self.shared = shared
        self._shared_seconds = shared_seconds
        # Loads in flight per key, with the local token taken as each began.
        self._loading: dict[str, tuple[int, asyncio.Task[Answer]]] = {}

    @property
    def name(self) -> str:
        return self.shared.name

    async def start(self) -> None:
        await self.shared.start()

    async def close(self) -> None:
        await self.shared.close()

    async def ping(self) -> float:
        return await self.shared.ping()

    async def get(
        self, cache: str, tenant_id: str, key: str, load: Callable[[], Awaitable[Loaded]]
    ) -> Answer:
        """The answer to `key` (unique within the cache and tenant); `load` raises NotFound when there
        is none, which is never cached."""
        local_key = f"{tenant_id}:{cache}:{key}"
        entry = self.local.get(local_key)
        if entry is not None:
            metrics.CACHE_HITS.child(cache, "local").inc()
            return entry.body, entry.etag
        token = self.local.token()
        in_flight = self._loading.get(local_key)
        # Joined only if nothing was written since it began: a caller after an acknowledged write must
        # not be handed what was read before it.
        if in_flight is not None and in_flight[0] == token:
            metrics.CACHE_COALESCED.child(cache).inc()
            loading = in_flight[1]
        else:
            loading = asyncio.ensure_future(self._fetch(cache, tenant_id, key, local_key, load, token))
            self._loading[local_key] = (token, loading)
            loading.add_done_callback(lambda done: self._loaded(local_key, done))
        # Shielded: a caller that goes away does not cancel the load that others wait for.
        return await asyncio.shield(loading)

    def _loaded(self, local_key: str, done: asyncio.Task[Answer]) -> None:
        in_flight = self._loading.get(local_key)
        if in_flight is not None and in_flight[1] is done:
            del self._loading[local_key]
        if not done.cancelled():
            done.exception()  # retrieved here, so that a load nobody waits for any more is not logged

    async def _fetch(
        self,
        cache: str,
        tenant_id: str,
        key: str,
        local_key: str,
        load: Callable[[], Awaitable[Loaded]],
        token: int,
    ) -> Answer:
        started = time.monotonic()
        shared_key = f"{cache}:{key}"
        stored = await self.shared.get(tenant_id, shared_key)
        if stored is not None and stored[0] is not None:
            expires_at, stored_etag, tags, body = decode_entry(stored[0])
            left = expires_at - time.time()
            if left > 0:
                metrics.CACHE_HITS.child(cache, "redis").inc()
                owned = tuple((tenant_id, t) for t in tags)
                self.local.put(local_key, cache, body, stored_etag, owned, token=token, valid_for=left)
                return body, stored_etag
        metrics.CACHE_MISSES.child(cache).inc()
        with metrics.CACHE_LOAD_SECONDS.labels(cache).time():
            try:
                loaded = await load()
            except NotFound:
                metrics.CACHE_LOADS.child(cache, "absent").inc()
                raise
            except Exception:
                metrics.CACHE_LOADS.child(cache, "error").inc()
                raise
        metrics.CACHE_LOADS.child(cache, "found").inc()
        owned = tuple((tenant_id, t) for t in loaded.tags)
        fresh = self.local.accepts(owned, token) and time.monotonic() - started < MAX_LOAD_SECONDS
        valid_for = loaded.valid_for
        if fresh and (valid_for is None or valid_for > 0):
            self.local.put(
                local_key, cache, loaded.body, loaded.etag, owned, token=token, valid_for=valid_for
            )
            shared_for = self._shared_seconds * random.uniform(TTL_JITTER, 1.0)
            if valid_for is not None:
                shared_for = min(shared_for, valid_for)
            if stored is not None and shared_for > 0:
                value = _encode(loaded, time.time() + shared_for)
                await self.shared.put(
                    tenant_id, shared_key, value, loaded.tags, stored[1], int(shared_for * 1000)
                )
        return loaded.body, loaded.etag

    async def publish(self, tags: set[Tag]) -> None:
        """After a commit: drop every entry carrying one of the tags, here and in every process."""
        if tags:
            await self.shared.invalidate(tags)

    @asynccontextmanager
    async def publishing_changes(self) -> AsyncIterator[None]:
        """Collects the tags written inside the block and publishes them after it succeeds."""
        with invalidation.collecting() as touched:
            yield
        await self.publish(touched)

    def report(self) -> dict[str, Any]:
        """The tiers' state, cheap enough for every readiness check (sizes per cache are metrics)."""
        return {
            **self.shared.report(),
            "local": {
                "enabled": self.local.enabled,
                "entries": len(self.local),
                "bytes": self.local.size_bytes,
            },
        }


def open_lookup_cache(settings: Settings) -> LookupCache:
    """Redis behind the local tier when REDIS_URL is set; the local tier alone otherwise.

    Several workers without Redis cannot tell each other about writes: no local tier then.
    """
    local_seconds = settings.cache_local_seconds
    if not settings.redis_url and settings.workers > 1:
        local_seconds = 0.0
    local = LocalTier(local_seconds, settings.cache_local_max_entries, settings.cache_local_max_bytes)
    return LookupCache(local, open_shared_tier(settings, local), settings.cache_shared_seconds)
