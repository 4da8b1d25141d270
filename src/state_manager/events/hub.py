"""This process's fan-out of numbered events to its WebSocket subscribers.

Per tenant with local subscribers, a feed knows the last number handed out and hands events out only in
order: a number seen again is skipped (the relay may publish twice), and a gap (a pub/sub message lost,
or another worker's events on the embedded default) is filled from the table before anything after it.
Every `EVENTS_CATCHUP_SECONDS` each feed also compares its number with the table's, so that an event
whose announcement never arrived is handed out anyway.

Each subscription has a bounded queue. A subscriber that lets it fill is told to go
(`Subscription.too_slow`) instead of holding the others back or growing without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from state_manager.db import Database
from state_manager.events import repository as repo
from state_manager.events.schemas import Published

log = logging.getLogger("state_manager.events")

PAGE = 500


class Subscription:
    def __init__(
        self,
        tenant_id: str,
        *,
        types: frozenset[str],
        conversation_id: str | None,
        customer_id: str | None,
        capacity: int,
    ) -> None:
        self.tenant_id = tenant_id
        self.types = types
        self.conversation_id = conversation_id
        self.customer_id = customer_id
        self.queue: asyncio.Queue[Published] = asyncio.Queue(capacity)
        self.too_slow = asyncio.Event()

    def matches(self, event: Published) -> bool:
        return (
            (not self.types or event.type in self.types)
            and (self.conversation_id is None or event.conversation_id == self.conversation_id)
            and (self.customer_id is None or event.customer_id == self.customer_id)
        )

    def offer(self, event: Published) -> None:
        if self.too_slow.is_set() or not self.matches(event):
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.too_slow.set()


class TenantFeed:
    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        self.last_seq = 0
        self.ready = asyncio.Event()
        self.early: list[Published] = []  # arrived while the feed was reading where the table stands
        self.subscriptions: set[Subscription] = set()
        self.users = 0  # subscribers attached or still replaying: the feed lives while there is one
        self.starting: asyncio.Future[None] | None = None
        self.filling: asyncio.Task[None] | None = None


class EventHub:
    def __init__(self, db: Database, *, catch_up_seconds: float) -> None:
        self.db = db
        self.catch_up_seconds = catch_up_seconds
        self._feeds: dict[str, TenantFeed] = {}
        self._poller: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._poller = asyncio.create_task(self._poll_forever(), name="event-hub-catch-up")

    async def close(self) -> None:
        tasks = [feed.filling for feed in self._feeds.values() if feed.filling is not None]
        if self._poller is not None:
            tasks.append(self._poller)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def subscriber_count(self) -> int:
        return sum(len(feed.subscriptions) for feed in self._feeds.values())

    async def feed(self, tenant_id: str) -> TenantFeed:
        """The tenant's feed, made (from where the table stands) if this process has none yet; the caller
        must `release` it."""
        feed = self._feeds.get(tenant_id)
        if feed is None:
            feed = self._feeds[tenant_id] = TenantFeed(tenant_id)
            feed.starting = asyncio.ensure_future(self._start(feed))
        feed.users += 1
        try:
            assert feed.starting is not None
            await asyncio.shield(feed.starting)
        except BaseException:
            feed.users -= 1
            raise
        return feed

    async def _start(self, feed: TenantFeed) -> None:
        try:
            async with self.db.transaction(feed.tenant_id, write=False) as conn:
                feed.last_seq = await repo.head(conn, feed.tenant_id)
        except BaseException:
            if self._feeds.get(feed.tenant_id) is feed:
                del self._feeds[feed.tenant_id]
            raise
        early, feed.early = feed.early, []
        feed.ready.set()
        self._advance(feed, early)

    def attach(self, feed: TenantFeed, subscription: Subscription) -> None:
        feed.subscriptions.add(subscription)

    def release(self, feed: TenantFeed, subscription: Subscription) -> None:
        feed.subscriptions.discard(subscription)
        feed.users -= 1
        if feed.users == 0 and self._feeds.get(feed.tenant_id) is feed:
            del self._feeds[feed.tenant_id]
            if feed.filling is not None:
                feed.filling.cancel()

    def deliver(self, batch: Sequence[Published]) -> None:
        """Events from the bus (one tenant's batch, in order)."""
        if not batch:
            return
        feed = self._feeds.get(batch[0].tenant_id)
        if feed is None:
            return
        if not feed.ready.is_set():
            feed.early.extend(batch)
            return
        self._advance(feed, batch)

    def _advance(self, feed: TenantFeed, batch: Sequence[Published]) -> None:
        for event in batch:
            if event.seq <= feed.last_seq:
                continue
            if event.seq != feed.last_seq + 1:
                self._fill(feed)  # a gap: the table has what is missing, and what follows
                return
            feed.last_seq = event.seq
            for subscription in feed.subscriptions:
                subscription.offer(event)

    def _fill(self, feed: TenantFeed) -> None:
        if feed.filling is None or feed.filling.done():
            feed.filling = asyncio.create_task(
                self._read_missing(feed), name=f"event-hub-fill:{feed.tenant_id}"
            )

    async def _read_missing(self, feed: TenantFeed) -> None:
        try:
            while True:
                async with self.db.transaction(feed.tenant_id, write=False) as conn:
                    rows = await repo.after(conn, feed.tenant_id, feed.last_seq, PAGE)
                self._advance(feed, [Published.from_row(row) for row in rows])
                if len(rows) < PAGE:
                    return
        except Exception as exc:
            log.warning("cannot read missed events; the next catch-up tries again", extra={"error": str(exc)})

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.catch_up_seconds)
            for feed in list(self._feeds.values()):
                if not feed.ready.is_set() or (feed.filling is not None and not feed.filling.done()):
                    continue
                try:
                    async with self.db.transaction(feed.tenant_id, write=False) as conn:
                        head = await repo.head(conn, feed.tenant_id)
                except Exception as exc:
                    log.warning("event catch-up failed", extra={"error": str(exc)})
                    continue
                if head > feed.last_seq:
                    self._fill(feed)
