"""Redis cache. Every call has a short timeout: a slow or dead Redis must not hold a request."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from state_manager.cache.base import Cache


class RedisCache(Cache):
    name = "redis"

    def __init__(self, url: str, *, timeout_seconds: float = 0.25) -> None:
        self._redis = Redis.from_url(
            url,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            health_check_interval=30,
        )

    async def ping(self) -> float:
        started = time.perf_counter()
        await self._redis.ping()
        return time.perf_counter() - started

    async def close(self) -> None:
        await self._redis.aclose()
