"""No cache server: the embedded default keeps everything in the process, which is always reachable."""

from __future__ import annotations

from state_manager.cache.base import Cache


class MemoryCache(Cache):
    name = "memory"

    async def ping(self) -> float:
        return 0.0
