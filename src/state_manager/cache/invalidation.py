"""Telling every process which customers a committed write touched, so that their read caches drop them.

Writes name the customers they change with `customer_changed` while their transaction runs;
`publishing_changes` wraps the transaction and, once it has committed, hands the names to the bus. A
transaction that fails publishes nothing.

Buses, chosen once at start-up (`open_bus`):
- `LocalBus`: one process, no Redis: the process's own cache is all there is.
- `RedisBus`: a Redis pub/sub channel that every worker of every instance subscribes to. While the
  subscription is down the process's read cache is switched off (every lookup reads the database), and
  it is cleared when the subscription is back, since invalidations may have been missed meanwhile.
- With several workers and no Redis there is no way to reach the other workers: the read cache is off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar

from redis.asyncio import Redis

from state_manager.cache.reads import ReadCache
from state_manager.settings import Settings

log = logging.getLogger("state_manager.cache")

CHANNEL = "sm:invalidate"
PUBLISH_TIMEOUT = 1.0  # seconds
PUBLISH_ATTEMPTS = 4
_SEPARATOR = "\x1f"
_touched: ContextVar[set[tuple[str, uuid.UUID]] | None] = ContextVar("touched_customers", default=None)


def customer_changed(tenant_id: str, customer_id: uuid.UUID) -> None:
    """Call from a write that changes what a lookup of this customer answers (inside the transaction)."""
    touched = _touched.get()
    if touched is not None:
        touched.add((tenant_id, customer_id))


class InvalidationBus:
    """Applies invalidations to this process's cache; subclasses also reach the other processes."""

    def __init__(self, reads: ReadCache) -> None:
        self.reads = reads

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def publish(self, customers: set[tuple[str, uuid.UUID]]) -> None:
        for customer in customers:
            self.reads.invalidate(customer)

    @asynccontextmanager
    async def publishing_changes(self) -> AsyncIterator[None]:
        """Collects the customers touched inside the block and publishes them after it succeeds."""
        touched: set[tuple[str, uuid.UUID]] = set()
        reset = _touched.set(touched)
        try:
            yield
        finally:
            _touched.reset(reset)
        if touched:
            await self.publish(touched)


class RedisBus(InvalidationBus):
    def __init__(self, reads: ReadCache, url: str) -> None:
        super().__init__(reads)
        # The subscription waits for messages indefinitely; publishing must never hold a request.
        self._redis = Redis.from_url(url, socket_connect_timeout=1.0, health_check_interval=10)
        self._publisher = Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=PUBLISH_TIMEOUT)
        self._listener: asyncio.Task[None] | None = None
        self._pending: set[tuple[str, uuid.UUID]] = set()
        self._batch: asyncio.Future[None] | None = None
        self._in_flight: set[asyncio.Future[object]] = set()
        self._subscribed = asyncio.Event()
        reads.enabled = False  # until the subscription is up

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="cache-invalidation-listener")
        # Serve from the cache only once subscribed; starting without Redis still works (uncached).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout=2.0)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._redis.aclose()
        await self._publisher.aclose()

    async def publish(self, customers: set[tuple[str, uuid.UUID]]) -> None:
        """Returns once Redis has taken the invalidation (or failed to).

        Requests that publish at the same moment share one PUBLISH: under load that is one round trip to
        Redis for many writes instead of one each.
        """
        await super().publish(customers)  # this process at once: read-your-writes on this worker
        self._pending.update(customers)
        if self._batch is None:
            self._batch = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(self._send_batch)
        await asyncio.shield(self._batch)

    def _send_batch(self, attempt: int = 1) -> None:
        customers, batch = self._pending, self._batch
        self._pending, self._batch = set(), None
        if not customers:  # a retry already took them
            if batch is not None:
                batch.set_result(None)
            return
        payload = "\n".join(f"{tenant}{_SEPARATOR}{customer}" for tenant, customer in customers)
        task = asyncio.ensure_future(self._publisher.publish(CHANNEL, payload))
        self._in_flight.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(lambda done: self._sent(done, batch, customers, attempt))

    def _sent(
        self,
        done: asyncio.Future[object],
        batch: asyncio.Future[None] | None,
        customers: set[tuple[str, uuid.UUID]],
        attempt: int,
    ) -> None:
        self._in_flight.discard(done)
        if batch is not None:
            batch.set_result(None)  # the requests go on either way: their own process is up to date
        if not done.cancelled() and done.exception() is None:
            return
        # Other workers that are still subscribed would keep stale entries: try again, a few times (a
        # Redis that stays away has dropped their subscriptions too, and with them their caches).
        if attempt >= PUBLISH_ATTEMPTS:
            log.error("cache invalidations for %d customer(s) could not be published", len(customers))
            return
        log.warning("could not publish cache invalidations (attempt %d); retrying", attempt)
        self._pending.update(customers)
        asyncio.get_running_loop().call_later(0.2 * 2**attempt, self._send_batch, attempt + 1)

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                # Whatever happened while we were not listening is unknown: start from empty.
                self.reads.clear()
                self.reads.enabled = self.reads.ttl_seconds > 0
                self._subscribed.set()
                delay = 0.1
                async for message in pubsub.listen():
                    self._apply(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.reads.enabled:
                    log.warning("cache invalidation channel lost (%s); read cache off until it is back", exc)
                self.reads.enabled = False
                self.reads.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _apply(self, data: bytes) -> None:
        for line in data.decode().splitlines():
            tenant, _, customer = line.partition(_SEPARATOR)
            with contextlib.suppress(ValueError):
                self.reads.invalidate((tenant, uuid.UUID(customer)))


def open_bus(settings: Settings) -> InvalidationBus:
    if settings.redis_url:
        return RedisBus(ReadCache(settings.lookup_cache_seconds), settings.redis_url)
    # Several workers without Redis cannot tell each other about writes: no read cache then.
    ttl = settings.lookup_cache_seconds if settings.workers == 1 else 0.0
    return InvalidationBus(ReadCache(ttl))
