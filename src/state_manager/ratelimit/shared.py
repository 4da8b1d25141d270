"""One budget per key across every worker and instance, through Redis, without a round trip per request.

Each process decides from its own buckets (`buckets.py`) and, every `RATE_LIMIT_SYNC_SECONDS` (0.1 s),
reports what it took from each bucket used lately to Redis in one pipeline. Redis keeps the shared bucket
(`_SYNC`: refilled by Redis' clock, minus everything reported, allowed to go below zero) and answers what
is left, which becomes the process's bucket. A process can therefore admit, before it hears of the
others, what its bucket held at its last report plus the refill until the next one; the excess puts the
shared bucket in debt, which every process then repays by refusing. Bound (docs/operations.md, "Rate
limits"): N processes admit at most (N - 1) x (burst + rate x interval) more than one process would, once
per time the bucket was full; over longer windows the rate holds.

Keys are installation-wide, not tenant data: `sm:ratelimit:key:<key id>` (service and admin keys act
for every tenant) and `sm:ratelimit:auth-failures:<client address>`; each is a hash with a TTL of its
time to refill, so an idle one disappears.

If Redis fails, the buckets go on alone (each process its own budget, the embedded default's behaviour)
and the report says "degraded" until a sync succeeds again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from state_manager.observability import metrics
from state_manager.ratelimit.buckets import Bucket, RateLimiter

log = logging.getLogger("state_manager.ratelimit")

KEY_PREFIX = "sm:ratelimit:"
ACTIVE_SECONDS = 1.0  # a bucket used this recently keeps learning what the others take
_FAILURES = (RedisError, OSError, TimeoutError)

_SYNC = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local rate, burst, taken = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if tokens == nil or at == nil then tokens, at = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate) - taken
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'at', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return string.format('%.6f', tokens)
"""


class RedisRateLimiter(RateLimiter):
    name = "redis"

    def __init__(self, redis_url: str, *, sync_seconds: float, timeout_seconds: float) -> None:
        super().__init__()
        self._redis = Redis.from_url(
            redis_url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds
        )
        self._sync_script = self._redis.register_script(_SYNC)
        self._sync_seconds = sync_seconds
        self._task: asyncio.Task[None] | None = None
        self.healthy = True
        self.last_error: str | None = None
        self.last_sync: float | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._sync_forever(), name="rate-limit-sync")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._redis.aclose()

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sync_seconds)
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive any surprise; the buckets keep working alone
                log.exception("rate limit sync failed")

    async def sync(self) -> None:
        """Report what each active bucket took since the last report; take back what Redis says is left."""
        now = time.monotonic()
        active: list[tuple[str, Bucket, int]] = []
        for name, bucket in self.buckets.items():
            if bucket.unsynced or now - bucket.used_at < ACTIVE_SECONDS:
                active.append((name, bucket, bucket.unsynced))
                bucket.unsynced = 0  # what is taken during the round trip is counted from zero
        if not active:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for name, bucket, taken in active:
                    limit = bucket.limit
                    await self._sync_script(
                        keys=[KEY_PREFIX + name], args=[limit.per_second, limit.burst, taken], client=pipe
                    )
                answers = await pipe.execute()
        except _FAILURES as exc:
            # What was taken meanwhile is not reported later: a debt from an outage would refuse callers
            # for what the local buckets already allowed.
            metrics.RATE_LIMIT_REDIS_ERRORS.inc()
            self.last_error = type(exc).__name__
            if self.healthy:
                log.warning(
                    "rate limits: Redis unreachable (%s); each process limits on its own until it answers",
                    self.last_error,
                )
            self.healthy = False
            return
        received = time.monotonic()
        for (_, bucket, _), left in zip(active, answers, strict=True):
            # Taken here while the answer was on its way: not in Redis' count yet.
            bucket.tokens = min(float(left), bucket.limit.burst) - bucket.unsynced
            bucket.updated = received
        if not self.healthy:
            log.info("rate limits: Redis answers again; budgets are shared again")
        self.healthy = True
        self.last_sync = time.time()

    def report(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "status": "ok" if self.healthy else "degraded",
            "buckets": len(self.buckets),
            "sync_seconds": self._sync_seconds,
            "last_error": self.last_error,
        }
