"""The shared cache server, if any: Redis when REDIS_URL is set, nothing to reach otherwise.

What is cached lives in each process (`reads.py`); Redis carries the invalidations between processes
(`invalidation.py`). This handle is what readiness checks: `/health/ready` names it.
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
