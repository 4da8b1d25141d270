"""The relay: numbers committed events per tenant, then publishes them on the bus.

Any number of instances run one. For each tenant, one relay at a time holds the lease (a
transaction-scoped advisory lock on PostgreSQL, the write lock on SQLite) and, in that transaction,
numbers the unnumbered events in the order they were written, from the tenant's last number: the
numbers of committed events therefore have no gaps and never change. Publishing happens after that
commit, so nothing is announced that could still roll back. The bus knows how far it got (the last
entry of the tenant's Redis stream): after a failed publish, and at every sweep, the relay publishes
again what a crash or a bus outage left behind, at most the last `REPUBLISH_WINDOW` events (the stream
refuses an entry it holds; subscribers skip a number they have seen; older events are in the table).

A commit that wrote events wakes the relay of its own process at once (`Database.commit_listeners`);
every `EVENTS_SWEEP_SECONDS` each relay also looks at every tenant for events a crashed process left.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from sqlalchemy import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.db import Database
from state_manager.db.locks import lock_names
from state_manager.db.pending import pending_work
from state_manager.events import repository as repo
from state_manager.events.bus import EventBus
from state_manager.events.schemas import Published
from state_manager.observability import metrics
from state_manager.observability.errors import error_summary

log = logging.getLogger("state_manager.events")

BATCH = 500
REPUBLISH_WINDOW = 10_000
LEASE_WAIT_SECONDS = 5.0
RETRY_SECONDS = 1.0
GATHER_SECONDS = 0.005
STOP_WAIT_SECONDS = 5.0
PUBLISH_WAIT_SECONDS = 0.02
PUBLISH_RETRY_SECONDS = 0.002

# Work done inside the numbering transaction, with the events just numbered (webhook deliveries).
OnNumbered = Callable[[AsyncConnection, str, Sequence[RowMapping]], Awaitable[None]]


def relay_lease(tenant_id: str) -> str:
    """The lock name under which one process at a time numbers a tenant's events."""
    return f"events-relay:{tenant_id}"


class EventRelay:
    def __init__(self, db: Database, bus: EventBus, *, sweep_seconds: float) -> None:
        self.db = db
        self.bus = bus
        self.sweep_seconds = sweep_seconds
        self.on_numbered: list[OnNumbered] = []
        self._running: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._behind: set[str] = set()  # tenants whose numbered events the bus may be missing
        self._numbered_at_sweep: dict[str, int] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping = False
        self.numbered = 0
        self.last_error: str | None = None

    def start(self) -> None:
        self.db.commit_listeners.append(self.notify)
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="event-relay-sweep")

    async def close(self) -> None:
        """Lets running batches finish (a task cancelled inside a write transaction can leave SQLite's
        write lock taken until its busy timeout), then stops."""
        self._stopping = True
        if self.notify in self.db.commit_listeners:
            self.db.commit_listeners.remove(self.notify)
        if self._sweeper is not None:
            self._sweeper.cancel()  # it only reads
        running = list(self._running.values())
        if running:
            await asyncio.wait(running, timeout=STOP_WAIT_SECONDS)
        tasks = [*self._running.values(), *([self._sweeper] if self._sweeper else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def notify(self, tenant_id: str) -> None:
        """A commit made events of the tenant visible: relay them now (or once the current run ends)."""
        if self._stopping:
            return  # the next instance to start, or another one's sweep, relays them
        if tenant_id in self._running:
            self._again.add(tenant_id)
            return
        # In a context of its own: the request whose commit woke it would otherwise lend the run its
        # request ID, and every log line of the run would name that request.
        task = asyncio.get_running_loop().create_task(
            self._work(tenant_id), name=f"event-relay:{tenant_id}", context=contextvars.Context()
        )
        self._running[tenant_id] = task

    async def _work(self, tenant_id: str) -> None:
        try:
            while not self._stopping:
                # Commits that land meanwhile are numbered in the same run: under load one run serves
                # many commits instead of one each.
                await asyncio.sleep(GATHER_SECONDS)
                self._again.discard(tenant_id)
                if tenant_id in self._behind:
                    await self._catch_up_bus(tenant_id)
                try:
                    more = await self.relay_once(tenant_id)
                except Exception as exc:
                    self._failed("events not numbered yet; trying again", tenant_id, exc)
                    await asyncio.sleep(RETRY_SECONDS)
                    continue
                if not more and tenant_id not in self._again:
                    return
        finally:
            self._running.pop(tenant_id, None)

    def _failed(self, message: str, tenant_id: str, exc: Exception) -> None:
        self.last_error = error_summary(exc)
        metrics.EVENT_RELAY_ERRORS.inc()
        log.warning(message, extra={"tenant_id": tenant_id, "error": f"{type(exc).__name__}: {exc}"})

    async def relay_once(self, tenant_id: str) -> bool:
        """Numbers a batch of new events, then publishes it; True if there may be more. Numbering goes on
        while the bus is away: the hubs read numbered events from the table, and the bus is caught up
        once it is back."""
        async with self.db.transaction(tenant_id, write=True, lock_timeout=LEASE_WAIT_SECONDS) as conn:
            await lock_names(conn, [relay_lease(tenant_id)])
            numbered = await repo.number_pending(conn, tenant_id, BATCH)
            for hook in self.on_numbered if numbered else ():
                await hook(conn, tenant_id, numbered)
        if not numbered:
            return False
        last = numbered[0]["seq"] - 1
        self.numbered += len(numbered)
        metrics.EVENTS_NUMBERED.inc(len(numbered))
        if tenant_id not in self._behind:
            batch = [Published.from_row(row) for row in numbered]
            try:
                if not await self._publish_in_turn(tenant_id, batch, last):
                    self._behind.add(tenant_id)
                    return True
            except Exception as exc:
                self._behind.add(tenant_id)
                self._failed("events numbered but not published; the bus is caught up later", tenant_id, exc)
        return len(numbered) == BATCH

    async def _publish_in_turn(self, tenant_id: str, batch: list[Published], follows: int) -> bool:
        """Publishes a batch once the bus holds the one before it. Another instance that numbered the
        events just before these usually publishes them within a few milliseconds: waiting for it is much
        cheaper than reading them back from the table. False if it has not after PUBLISH_WAIT_SECONDS."""
        deadline = time.monotonic() + PUBLISH_WAIT_SECONDS
        while not await self.bus.publish(tenant_id, batch, follows=follows):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(PUBLISH_RETRY_SECONDS)
        return True

    async def _catch_up_bus(self, tenant_id: str) -> None:
        try:
            await self.catch_up_bus(tenant_id)
        except Exception as exc:
            self._failed("the bus is still away; events stay in the table", tenant_id, exc)

    async def catch_up_bus(self, tenant_id: str) -> None:
        """Publishes again the numbered events the bus does not hold (within REPUBLISH_WINDOW)."""
        through = await self.bus.published_through(tenant_id)
        while through is not None:
            async with self.db.transaction(tenant_id, write=False) as conn:
                last = await repo.last_numbered(conn, tenant_id)
                start = max(through, last - REPUBLISH_WINDOW)
                rows = await repo.after(conn, tenant_id, start, BATCH, until=last)
            if not rows:
                break
            if not await self.bus.publish(
                tenant_id, [Published.from_row(row) for row in rows], follows=through
            ):
                return  # the stream went back meanwhile (Redis restarted): the next run starts again
            through = rows[-1]["seq"]
        self._behind.discard(tenant_id)

    async def _sweep_forever(self) -> None:
        while True:
            started = time.monotonic()
            for tenant_id in await self._waiting_tenants():
                self.notify(tenant_id)
            await asyncio.sleep(max(0.0, self.sweep_seconds - (time.monotonic() - started)))

    async def _waiting_tenants(self) -> list[str]:
        """Tenants with events not numbered, or numbered but not on the bus (a process died between)."""
        try:
            found = await pending_work(self.db)
        except Exception as exc:
            self.last_error = error_summary(exc)
            log.warning("event sweep failed", extra={"error": f"{type(exc).__name__}: {exc}"})
            return []
        # Behind only if the bus still lacks what was numbered by the previous sweep: events numbered a
        # moment ago are normally being published right now.
        earlier: dict[str, int] = {}
        for work in found:
            if numbered := self._numbered_at_sweep.get(work.tenant_id, 0):
                earlier[work.tenant_id] = numbered
            self._numbered_at_sweep[work.tenant_id] = work.last_numbered
        with contextlib.suppress(Exception):  # the bus away: numbering goes on regardless
            through = await self.bus.published_through_each(list(earlier))
            self._behind.update(
                tenant_id
                for tenant_id, last in earlier.items()
                if (bus_has := through[tenant_id]) is not None and bus_has < last
            )
        return [work.tenant_id for work in found if work.unnumbered_events or work.tenant_id in self._behind]

    def report(self) -> dict[str, object]:
        return {"numbered": self.numbered, "relaying": len(self._running), "last_error": self.last_error}
