"""The second tier and the news between processes: Redis when REDIS_URL is set, nothing otherwise.

Keys (the tenant in braces is a Redis Cluster hash tag: a tenant's keys share one slot):
- `sm:{tenant}:g<generation>:<cache>:<key>`: an entry (expiry, ETag, tags, body), with a TTL.
- `sm:{tenant}:tag:<tag>`: the entry keys that carry a tag, so that a write can drop them.
- `sm:{tenant}:seq`: the tenant's invalidation counter; `sm:{tenant}:inv:<tag>`: its value at the tag's
  last invalidation (kept `MARKER_SECONDS`). A loader reads the counter with the entry (one MGET) and its
  entry is stored only if none of its tags was invalidated since: a slow reader cannot put an older value
  back (`_PUT`).
- `sm:cache:generation`: entries of other generations are never read. An instance whose invalidations
  could not reach Redis bumps it once Redis answers again, so that nothing cached before the outage is
  served after it.

A write's invalidation is one script per tenant (`_INVALIDATE`): count, mark, drop the entries, and publish
the tags on `sm:cache:invalidate`, to which every process subscribes to drop its local entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from state_manager.cache.breaker import CircuitBreaker
from state_manager.cache.local import LocalTier, Tag
from state_manager.observability import metrics
from state_manager.settings import Settings

log = logging.getLogger("state_manager.cache")

CHANNEL = "sm:cache:invalidate"
GENERATION_CHANNEL = "sm:cache:generation"
GENERATION_KEY = "sm:cache:generation"
MARKER_SECONDS = 120
# A load slower than this is not stored: the markers that would refuse it may have expired.
MAX_LOAD_SECONDS = MARKER_SECONDS / 2
_SEPARATOR = "\x1f"
_FAILURES = (RedisError, OSError, TimeoutError)

_PUT = """
local token = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[2]) or '0') < token then return 0 end
local markers = tonumber(ARGV[4])
for i = 3, 2 + markers do
  local marked = redis.call('GET', KEYS[i])
  if marked and tonumber(marked) > token then return 0 end
end
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[3], 'PX', ttl)
for i = 3 + markers, #KEYS do
  redis.call('SADD', KEYS[i], KEYS[1])
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return 1
"""

_INVALIDATE = """
local seq = redis.call('INCR', KEYS[1])
local markers = tonumber(ARGV[4])
for i = 2, 1 + markers do redis.call('SET', KEYS[i], seq, 'PX', ARGV[1]) end
for i = 2 + markers, #KEYS do
  for _, key in ipairs(redis.call('SMEMBERS', KEYS[i])) do redis.call('DEL', key) end
  redis.call('DEL', KEYS[i])
end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return seq
"""

_BUMP = """
local generation = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], generation)
return generation
"""


def tenant_prefix(tenant_id: str) -> str:
    return f"sm:{{{tenant_id}}}"


class SharedTier:
    """No second tier: one process, whose local tier is all there is (the embedded default)."""

    name = "memory"

    def __init__(self, local: LocalTier) -> None:
        self.local = local

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> float:
        return 0.0

    async def get(self, tenant_id: str, key: str) -> tuple[bytes | None, int] | None:
        """The stored value (or None) and the token to store a loaded one with; None: tier unusable."""
        return None

    async def put(
        self, tenant_id: str, key: str, value: bytes, tags: tuple[str, ...], token: int, ttl_ms: int
    ) -> None:
        return None

    async def invalidate(self, tags: set[Tag]) -> None:
        """After commit: drop what the tags touch here and everywhere else."""
        self.local.invalidate(tags)

    def report(self) -> dict[str, Any]:
        return {"backend": self.name, "status": "ok"}


class RedisTier(SharedTier):
    name = "redis"

    def __init__(self, local: LocalTier, settings: Settings) -> None:
        super().__init__(local)
        assert settings.redis_url is not None
        timeout = settings.cache_timeout_seconds
        self._redis = Redis.from_url(
            settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        # The subscription waits for messages indefinitely; its health checks notice a dead link.
        self._subscriber = Redis.from_url(
            settings.redis_url, socket_connect_timeout=1.0, health_check_interval=5
        )
        self._ttl_ms = int(settings.cache_shared_seconds * 1000)
        self._put = self._redis.register_script(_PUT)
        self._invalidate = self._redis.register_script(_INVALIDATE)
        self._bump = self._redis.register_script(_BUMP)
        self.breaker = CircuitBreaker(settings.cache_breaker_failures, settings.cache_breaker_seconds)
        self.generation: int | None = None  # unknown: the tier is not used until it is read
        self.dirty = False  # an invalidation was lost: bump the generation before using the tier
        self.subscribed = False
        self.last_error: str | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._recovery_timer: asyncio.TimerHandle | None = None
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._pending: dict[str, set[str]] = defaultdict(set)
        self._batch: asyncio.Future[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks
        self.local.enabled = False  # until the subscription is up

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="cache-invalidation-listener")
        # Serve from the caches only once subscribed; starting without Redis still works (uncached).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout=2.0)
        await self._recover()

    async def close(self) -> None:
        if self._recovery_timer is not None:
            self._recovery_timer.cancel()
        for task in (self._listener, self._recovery):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._redis.aclose()
        await self._subscriber.aclose()

    async def ping(self) -> float:
        started = time.perf_counter()
        await self._redis.ping()
        return time.perf_counter() - started

    @property
    def _healthy(self) -> bool:
        return self.generation is not None and not self.dirty and self.breaker.closed

    def _usable(self) -> bool:
        if self._healthy:
            return True
        self._schedule_recovery()
        return False

    def _schedule_recovery(self) -> None:
        """Try to use Redis again once the circuit allows a trial; retried on a timer, not by traffic,
        so that a process whose lookups are all local hits comes back too."""
        if self._recovery is None and self._recovery_timer is None:
            self._recovery_timer = asyncio.get_running_loop().call_later(
                self.breaker.seconds_to_trial(), self._start_recovery
            )

    def _start_recovery(self) -> None:
        self._recovery_timer = None
        if self._recovery is None:
            self._recovery = asyncio.create_task(self._recover(), name="cache-recovery")

    def _failed(self, operation: str, exc: BaseException) -> None:
        metrics.CACHE_SHARED_ERRORS.child(operation).inc()
        self.last_error = f"{operation}: {type(exc).__name__}"
        was_closed = self.breaker.closed
        self.breaker.failed()
        if was_closed and not self.breaker.closed:
            log.warning("Redis failing (%s); reading the database until it answers again", self.last_error)
        if not self._healthy:
            self._schedule_recovery()

    async def _recover(self) -> None:
        """Learn the generation (or, after lost invalidations, start a new one), then use the tier again."""
        try:
            if self.dirty:
                generation = int(await self._bump(keys=[GENERATION_KEY], args=[GENERATION_CHANNEL]))
                log.warning(
                    "cache generation %d: entries cached before the Redis outage are ignored", generation
                )
            else:
                await self._redis.set(GENERATION_KEY, 1, nx=True)
                generation = int(await self._redis.get(GENERATION_KEY) or 1)
        except _FAILURES as exc:
            self._recovery = None
            self._failed("recover", exc)
        else:
            self._recovery = None
            self.generation = generation
            self.dirty = False
            if not self.breaker.closed:
                log.info("Redis answers again; cache tier back in use")
            self.breaker.close()

    def _entry_key(self, tenant_id: str, key: str) -> str:
        return f"{tenant_prefix(tenant_id)}:g{self.generation}:{key}"

    async def get(self, tenant_id: str, key: str) -> tuple[bytes | None, int] | None:
        if not self._usable():
            return None
        try:
            value, seq = await self._redis.mget(
                self._entry_key(tenant_id, key), f"{tenant_prefix(tenant_id)}:seq"
            )
        except _FAILURES as exc:
            self._failed("get", exc)
            return None
        self.breaker.succeeded()
        return value, int(seq or 0)

    async def put(
        self, tenant_id: str, key: str, value: bytes, tags: tuple[str, ...], token: int, ttl_ms: int
    ) -> None:
        if not self._usable():
            return
        prefix = tenant_prefix(tenant_id)
        keys = [
            self._entry_key(tenant_id, key),
            f"{prefix}:seq",
            *(f"{prefix}:inv:{tag}" for tag in tags),
            *(f"{prefix}:tag:{tag}" for tag in tags),
        ]
        try:
            await self._put(keys=keys, args=[token, min(ttl_ms, self._ttl_ms), value, len(tags)])
        except _FAILURES as exc:
            self._failed("put", exc)
        else:
            self.breaker.succeeded()

    async def invalidate(self, tags: set[Tag]) -> None:
        """Returns once Redis has dropped the entries and published the tags (or could not).

        Writes that finish at the same moment share one round trip (a pipeline of one script per
        tenant): under load that is one call to Redis for many writes instead of one each.
        """
        await super().invalidate(tags)  # this process at once: read-your-writes on this worker
        if not self._usable():
            self.dirty = True
            return
        for tenant_id, tag in tags:
            self._pending[tenant_id].add(tag)
        if self._batch is None:
            self._batch = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(self._start_batch)
        await asyncio.shield(self._batch)

    def _start_batch(self) -> None:
        task = asyncio.ensure_future(self._send_batch())
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send_batch(self) -> None:
        pending, batch = self._pending, self._batch
        self._pending, self._batch = defaultdict(set), None
        try:
            try:
                await self._send_invalidations(pending)
            except NoScriptError:
                # Redis lost its scripts (a restart, SCRIPT FLUSH): no call of the batch ran, and each is
                # idempotent anyway. Load the script and send the batch again.
                await self._redis.script_load(_INVALIDATE)
                await self._send_invalidations(pending)
        except _FAILURES as exc:
            # Other processes may keep what these writes changed: start a new generation when Redis is
            # back (their local tiers are cleared by it, or were when their subscription dropped).
            self.dirty = True
            self._failed("invalidate", exc)
        else:
            self.breaker.succeeded()
        finally:
            if batch is not None:
                batch.set_result(None)  # the writes go on either way: they have committed

    async def _send_invalidations(self, pending: dict[str, set[str]]) -> None:
        """One pipeline, one script call per tenant (keys of one tenant share a Redis Cluster slot), called
        by its SHA: given the Script object, redis-py asks SCRIPT EXISTS first, a round trip per batch."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for tenant_id, tags in pending.items():
                prefix = tenant_prefix(tenant_id)
                message = "\n".join(f"{tenant_id}{_SEPARATOR}{tag}" for tag in tags)
                keys = [
                    f"{prefix}:seq",
                    *(f"{prefix}:inv:{tag}" for tag in tags),
                    *(f"{prefix}:tag:{tag}" for tag in tags),
                ]
                pipe.evalsha(
                    self._invalidate.sha, len(keys), *keys, MARKER_SECONDS * 1000, CHANNEL, message, len(tags)
                )
            await pipe.execute()

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            pubsub = self._subscriber.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL, GENERATION_CHANNEL)
                # Whatever happened while we were not listening is unknown: start from empty, and
                # learn the generation again (Redis may have restarted).
                self.local.clear()
                self.local.enabled = self.local.ttl_seconds > 0
                self.generation = None
                self._schedule_recovery()
                self.subscribed = True
                self._subscribed.set()
                delay = 0.1
                async for message in pubsub.listen():
                    self._apply(message["channel"], message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.subscribed:
                    log.warning("cache invalidation channel lost (%s); local tier off until it is back", exc)
                self.subscribed = False
                self.local.enabled = False
                self.local.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _apply(self, channel: bytes, data: bytes) -> None:
        if channel == GENERATION_CHANNEL.encode():
            self.local.clear()
            self.generation = int(data)
            return
        tags: set[Tag] = set()
        for line in data.decode().splitlines():
            tenant_id, _, tag = line.partition(_SEPARATOR)
            tags.add((tenant_id, tag))
        self.local.invalidate(tags)

    def report(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "status": "ok" if self._healthy and self.subscribed else "degraded",
            "circuit": self.breaker.state,
            "subscribed": self.subscribed,
            "generation": self.generation,
            "last_error": self.last_error,
        }

    async def server_info(self) -> dict[str, Any]:
        """What Redis says of its memory, for `GET /v1/admin/cache`."""
        memory = await self._redis.info("memory")
        stats = await self._redis.info("stats")
        return {
            "used_memory_bytes": memory.get("used_memory"),
            "maxmemory_bytes": memory.get("maxmemory"),
            "maxmemory_policy": memory.get("maxmemory_policy"),
            "evicted_keys": stats.get("evicted_keys"),
            "keys": await self._redis.dbsize(),
        }


def open_shared_tier(settings: Settings, local: LocalTier) -> SharedTier:
    if settings.redis_url:
        return RedisTier(local, settings)
    return SharedTier(local)
