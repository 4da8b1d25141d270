"""The queue outbox: output is written with the state change it announces, and published after the commit.

Publishing straight from a handler would either announce a change that then rolls back, or lose the
announcement if the process dies between the commit and the publish. Instead a handler adds a row in its
own transaction, and the relay publishes committed rows, in order, with publisher confirms, and marks them
published in the same transaction that claimed them. A crash after the broker confirmed but before that
mark means the row is published again (at least once); it is never lost.

Rows stay a day after publication: a row's ID is derived from its input, so processing the same input
again (a redelivery after a lost ack) finds the row and publishes nothing new.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.db import Database
from state_manager.db.database import dialect_insert
from state_manager.db.locks import try_lock_name
from state_manager.db.pending import PendingWork, pending_work
from state_manager.db.types import utcnow
from state_manager.observability.errors import error_summary
from state_manager.queues.models import broker_outbox
from state_manager.queues.topology import Output

log = logging.getLogger(__name__)

KEEP_PUBLISHED = dt.timedelta(days=1)
PRUNE_EVERY_SECONDS = 600.0
BATCH = 500
_OUTBOX_IDS = uuid.UUID("0b5e1f0a-52b6-4d67-8a4f-3c1f6f7f2d11")


class _Sequence:
    """Nanoseconds since the epoch, bumped so that no two calls in a process return the same value or go
    back: rows of one customer, written one after another, are published in that order."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._last = max(time.time_ns(), self._last + 1)
            return self._last


_sequence = _Sequence()


def row_id(destination: Output, input_key: str) -> uuid.UUID:
    return uuid.uuid5(_OUTBOX_IDS, f"{destination.value}\n{input_key}")


async def add(
    conn: AsyncConnection, tenant_id: str, destination: Output, body: dict[str, Any], *, input_key: str
) -> None:
    """Queues `body` for `destination`, in the caller's transaction; once per (destination, input)."""
    await conn.execute(
        _insert_once(conn.dialect.name),
        {
            "tenant_id": tenant_id,
            "id": row_id(destination, input_key),
            "seq": _sequence.next(),
            "destination": destination.value,
            "body": orjson.dumps(body).decode(),
            "created_at": utcnow(),
            "published_at": None,
        },
    )


@functools.cache
def _insert_once(dialect_name: str) -> Any:
    # Built once: building the statement per message cost as much as running it.
    return dialect_insert(dialect_name)(broker_outbox).on_conflict_do_nothing()


@dataclass(frozen=True, slots=True)
class Outgoing:
    id: uuid.UUID
    destination: Output
    body: bytes


Publish = Callable[[Sequence[Outgoing]], Awaitable[None]]


async def _pending(conn: AsyncConnection, tenant_id: str, limit: int) -> list[Outgoing]:
    o = broker_outbox.c
    rows = await conn.execute(
        select(o.id, o.destination, o.body)
        .where(o.tenant_id == tenant_id, o.published_at.is_(None))
        .order_by(o.seq)
        .limit(limit)
    )
    return [Outgoing(row.id, Output(row.destination), row.body.encode()) for row in rows]


async def flush(db: Database, tenant_id: str, publish: Publish) -> int:
    """Publishes the tenant's committed, unpublished rows in order; returns how many.

    One flusher per tenant at a time (an advisory lock on PostgreSQL, the write lock on SQLite): two would
    publish the same rows, or interleave them out of order. If the lock is taken, the holder publishes.
    """
    o = broker_outbox.c
    async with db.transaction(tenant_id, write=False) as conn:
        waiting = select(o.id).where(o.tenant_id == tenant_id, o.published_at.is_(None)).limit(1)
        if (await conn.execute(waiting)).first() is None:
            return 0  # the common case of a sweep: no write transaction, no lock
    published = 0
    while True:
        async with db.transaction(tenant_id, write=True) as conn:
            if not await try_lock_name(conn, f"broker-outbox:{tenant_id}"):
                return published
            batch = await _pending(conn, tenant_id, BATCH)
            if not batch:
                return published
            await publish(batch)  # raises unless the broker confirmed every message
            await conn.execute(
                update(broker_outbox)
                .where(o.tenant_id == tenant_id, o.id.in_([item.id for item in batch]))
                .values(published_at=utcnow())
            )
        published += len(batch)
        if len(batch) < BATCH:
            return published


async def prune(db: Database, tenant_id: str) -> None:
    o = broker_outbox.c
    async with db.transaction(tenant_id, write=True) as conn:
        await conn.execute(
            delete(broker_outbox).where(o.tenant_id == tenant_id, o.published_at < utcnow() - KEEP_PUBLISHED)
        )


class OutboxRelay:
    """Publishes committed output: at once for tenants it is told about, and every `sweep_seconds` for
    every tenant (output a crashed process committed but did not publish, or a broker outage left)."""

    def __init__(self, db: Database, publish: Publish, *, sweep_seconds: float) -> None:
        self.db = db
        self.publish = publish
        self.sweep_seconds = sweep_seconds
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._sweep_now = False
        self.published = 0
        self.last_error: str | None = None

    def notify(self, tenant_id: str) -> None:
        self._dirty.add(tenant_id)
        self._wake.set()

    def notify_all(self) -> None:
        self._sweep_now = True
        self._wake.set()

    async def run(self) -> None:
        next_sweep = next_prune = time.monotonic()
        while True:
            timeout = max(0.0, next_sweep - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            sweeping = self._sweep_now or time.monotonic() >= next_sweep
            self._sweep_now = False
            due, self._dirty = self._dirty, set()
            to_prune: list[str] = []
            if sweeping:
                pruning = time.monotonic() >= next_prune
                if pruning:
                    next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
                found = await self._look(pruning=pruning)
                due |= {work.tenant_id for work in found if work.unpublished_output}
                to_prune = [work.tenant_id for work in found if work.output_to_prune]
            failed = await self._flush_all(sorted(due))
            await self._prune_all(to_prune)
            if sweeping:
                next_sweep = time.monotonic() + self.sweep_seconds
            if failed:
                # The broker or the database is away: try again at the next sweep, not in a tight loop.
                self._dirty |= failed

    async def _look(self, *, pruning: bool) -> list[PendingWork]:
        try:
            return await pending_work(
                self.db, output_published_before=utcnow() - KEEP_PUBLISHED if pruning else None
            )
        except Exception as exc:
            self.last_error = error_summary(exc)
            log.warning("outbox sweep failed", extra={"error": f"{type(exc).__name__}: {exc}"})
            return []

    async def _flush_all(self, due: Sequence[str]) -> set[str]:
        failed: set[str] = set()
        for tenant_id in due:
            try:
                self.published += await flush(self.db, tenant_id, self.publish)
            except Exception as exc:
                self.last_error = error_summary(exc)
                log.warning(
                    "queue output not published yet; it stays in the outbox",
                    extra={"tenant_id": tenant_id, "error": f"{type(exc).__name__}: {exc}"},
                )
                failed.add(tenant_id)
        return failed

    async def _prune_all(self, tenant_ids: Sequence[str]) -> None:
        for tenant_id in tenant_ids:
            try:
                await prune(self.db, tenant_id)
            except Exception as exc:  # the next prune takes them
                self.last_error = error_summary(exc)
                log.warning(
                    "published queue output not pruned yet",
                    extra={"tenant_id": tenant_id, "error": f"{type(exc).__name__}: {exc}"},
                )
