"""A byte-value cache with TTLs. Redis when REDIS_URL is set, an in-process LRU otherwise.

Keys always start with the tenant: use `key(tenant_id, kind, id)`.
"""

from __future__ import annotations

import abc

from state_manager.settings import Settings


def key(tenant_id: str, kind: str, *parts: str) -> str:
    return ":".join(("sm", tenant_id, kind, *parts))


class Cache(abc.ABC):
    name: str

    @abc.abstractmethod
    async def get(self, key: str) -> bytes | None: ...

    @abc.abstractmethod
    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None: ...

    @abc.abstractmethod
    async def delete(self, *keys: str) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> float:
        """Round-trip time in seconds; raises when the cache cannot be reached."""

    async def close(self) -> None:
        return None


def open_cache(settings: Settings) -> Cache:
    if settings.redis_url:
        from state_manager.cache.redis import RedisCache

        return RedisCache(settings.redis_url)
    from state_manager.cache.memory import MemoryCache

    return MemoryCache()
