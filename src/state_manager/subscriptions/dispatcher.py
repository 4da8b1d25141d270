"""The dispatcher: sends pending deliveries, signed, and records each attempt and its outcome.

Every instance runs one. It claims due deliveries per tenant under a lease (subscriptions/repository.py,
`claim`), each the first pending one of its (subscription, ordering key), so a conversation's deliveries
go out one at a time in event order while different conversations go concurrently, up to
WEBHOOK_CONCURRENCY per process. The POST happens outside any transaction; its outcome is recorded only
while the lease is still this process's. A 2xx is delivered; anything else is retried with exponential
backoff and jitter until WEBHOOK_MAX_ATTEMPTS, then the delivery is dead.

It learns of work from the relay's hook (deliveries just written: it claims once the relay's transaction
has ended, see `_claim`), from its own sends ending and from the API (retries, a subscription made active),
when a backoff ends, every WEBHOOK_POLL_SECONDS for the tenants it knows to have pending deliveries (a
lease lost by a crashed process), and every WEBHOOK_SWEEP_SECONDS from every tenant (deliveries another
instance's relay wrote and did not send).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.db import Database
from state_manager.db.locks import lock_names
from state_manager.db.pending import pending_work
from state_manager.db.types import utcnow
from state_manager.observability import metrics
from state_manager.observability.errors import error_summary
from state_manager.settings import Settings
from state_manager.subscriptions import repository as repo
from state_manager.subscriptions.enqueue import enqueue
from state_manager.subscriptions.http import httpx
from state_manager.subscriptions.signing import (
    DELIVERY_ID_HEADER,
    EVENT_SEQ_HEADER,
    EVENT_TYPE_HEADER,
    SIGNATURE_HEADER,
    signature_header,
)
from state_manager.subscriptions.urls import resolves_to_private

log = logging.getLogger("state_manager.webhooks")

EXCERPT_CHARS = 1024
ERROR_CHARS = 500
LEASE_MARGIN_SECONDS = 30.0  # beyond the attempt's timeout: time to record its outcome
PRUNE_EVERY_SECONDS = 600.0
STOP_WAIT_SECONDS = 10.0  # how long shutdown lets the loop finish the statement it is in
USER_AGENT = "state-manager-webhooks/1"


def backoff_seconds(round_attempts: int, base: float, ceiling: float) -> float:
    """The wait after the `round_attempts`-th failed attempt: base doubled per attempt, capped, with
    jitter (between half and all of it) so that deliveries that failed together do not return together."""
    delay = min(ceiling, base * 2.0 ** min(round_attempts - 1, 62))
    return delay * (0.5 + random.random() / 2)  # jitter, not a secret


def _enqueue_lock(tenant_id: str) -> str:
    return f"webhook-enqueue:{tenant_id}"


@dataclass(frozen=True, slots=True)
class Outcome:
    status_code: int | None
    error: str | None
    excerpt: str | None
    seconds: float

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class WebhookDispatcher:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self._due: dict[str, float] = {}  # tenant -> when to claim next (monotonic clock)
        self._after_enqueue: set[str] = set()  # tenants whose relay transaction may not have ended yet
        self._wake = asyncio.Event()
        self._sending: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False
        self._client: httpx.AsyncClient | None = None
        self.last_error: str | None = None

    def start(self) -> None:
        self._client = httpx.AsyncClient(
            timeout=self.settings.webhook_timeout_seconds,
            follow_redirects=False,  # a redirect is a failed attempt: the receiver's URL is the one given
            limits=httpx.Limits(max_connections=self.settings.webhook_concurrency),
            headers={"User-Agent": USER_AGENT},
        )
        self._runner = asyncio.create_task(self._run(), name="webhook-dispatcher")

    async def close(self) -> None:
        """Sends in flight are cancelled; the loop is told to stop and finishes the statement it is in.
        A task cancelled while it opens a database connection was seen to hold shutdown for a minute
        (asyncpg's connect timeout), and a sweep of many tenants is usually opening one."""
        self._stopping = True
        self._wake.set()
        if self._runner is not None:
            await asyncio.wait({self._runner}, timeout=STOP_WAIT_SECONDS)
        tasks = [*self._sending, *([self._runner] if self._runner else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            await self._client.aclose()

    def notify(self, tenant_id: str) -> None:
        """The tenant may have deliveries to send now."""
        self._due[tenant_id] = 0.0
        self._wake.set()

    async def on_numbered(self, conn: AsyncConnection, tenant_id: str, events: Sequence[RowMapping]) -> None:
        """The relay's hook, inside its numbering transaction: writes the deliveries, then wakes the
        dispatcher, whose next claim for the tenant waits for this transaction to end (`_claim`)."""
        if await enqueue(conn, tenant_id, events):
            await lock_names(conn, [_enqueue_lock(tenant_id)])
            self._after_enqueue.add(tenant_id)
            self.notify(tenant_id)

    def report(self) -> dict[str, Any]:
        return {"sending": len(self._sending), "tenants": len(self._due), "last_error": self.last_error}

    # --- The loop ---------------------------------------------------------------------------------

    def _free(self) -> int:
        return self.settings.webhook_concurrency - len(self._sending)

    async def _run(self) -> None:
        next_sweep = next_prune = time.monotonic()
        while not self._stopping:
            self._wake.clear()
            try:
                if time.monotonic() >= next_sweep:
                    pruning = time.monotonic() >= next_prune
                    await self._sweep(prune=pruning)
                    next_sweep = time.monotonic() + self.settings.webhook_sweep_seconds
                    if pruning:
                        next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
                now = time.monotonic()
                for tenant_id in sorted(t for t, at in self._due.items() if at <= now):
                    if self._free() <= 0 or self._stopping:
                        break
                    await self._poll(tenant_id)
            except Exception as exc:
                self._failed("webhook dispatch failed; trying again", exc)
                next_sweep = min(next_sweep, time.monotonic() + self.settings.webhook_poll_seconds)
            wake_at = next_sweep
            if self._free() > 0 and self._due:
                wake_at = min(wake_at, *self._due.values())  # else a finished send wakes it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, wake_at - time.monotonic()))

    async def _poll(self, tenant_id: str) -> None:
        free = self._free()
        # Off the list while claiming. A `notify` meanwhile (a retry committed, a send ended) puts the
        # tenant back, due now, and that stands: the claim may have looked before that work was there.
        self._due.pop(tenant_id, None)
        try:
            claimed, pending = await self._claim(tenant_id, free)
        except Exception as exc:
            self._look_again(tenant_id, self.settings.webhook_poll_seconds)
            self._failed("webhook deliveries not claimed; trying again", exc, tenant_id)
            return
        for item in claimed:
            task = asyncio.create_task(self._send(tenant_id, item), name=f"webhook:{item['id']}")
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        if len(claimed) == free:
            self._look_again(tenant_id, 0.0)  # there may be more: claim again when a slot frees
        elif pending is not None:
            self._look_again(tenant_id, min(pending, self.settings.webhook_poll_seconds))
        # else nothing left: until an enqueue, a retry or the sweep (or a notify during the claim)

    def _look_again(self, tenant_id: str, after: float) -> None:
        """Claims for the tenant again in `after` seconds, or sooner if it was notified meanwhile."""
        at = time.monotonic() + after
        self._due[tenant_id] = min(at, self._due.get(tenant_id, at))

    async def _claim(self, tenant_id: str, limit: int) -> tuple[list[dict[str, Any]], float | None]:
        """The deliveries claimed, and when to look again: in WEBHOOK_POLL_SECONDS at the latest, sooner
        if a backoff ends before; None when nothing is pending."""
        now = utcnow()
        lease_until = now + dt.timedelta(seconds=self.settings.webhook_timeout_seconds + LEASE_MARGIN_SECONDS)
        async with self.db.transaction(tenant_id, write=True) as conn:
            if tenant_id in self._after_enqueue:
                # The relay's transaction that wrote deliveries holds this lock until it ends: waiting
                # for it means they are visible now (SQLite: this write transaction already waited).
                self._after_enqueue.discard(tenant_id)
                await lock_names(conn, [_enqueue_lock(tenant_id)])
            claimed = await repo.claim(conn, tenant_id, now=now, lease_until=lease_until, limit=limit)
            # What is pending but was not claimed waits for a backoff to end, or for something this
            # process is told of (a send ending, a subscription reactivated) or polls for (a lost lease).
            retry_at = await repo.next_retry_at(conn, tenant_id, now)
            pending = bool(claimed) or retry_at is not None or await repo.has_pending(conn, tenant_id)
        for item in claimed:
            item["lease_until"] = lease_until
        if not pending:
            return claimed, None
        wait = self.settings.webhook_poll_seconds
        if retry_at is not None:
            wait = min(wait, max(0.0, (retry_at - now).total_seconds()))
        return claimed, wait

    async def _sweep(self, *, prune: bool) -> None:
        keep_until = utcnow() - dt.timedelta(days=self.settings.webhook_keep_delivered_days)
        found = await pending_work(self.db, delivered_before=keep_until if prune else None)
        for work in found:
            if work.pending_deliveries:
                self._due.setdefault(work.tenant_id, 0.0)
        for tenant_id in [work.tenant_id for work in found if work.deliveries_to_prune]:
            if self._stopping:
                return
            try:
                async with self.db.transaction(tenant_id, write=True) as conn:
                    await repo.prune_delivered(conn, tenant_id, keep_until)
            except Exception as exc:
                self._failed("webhook sweep failed for a tenant", exc, tenant_id)

    # --- One attempt ------------------------------------------------------------------------------

    async def _send(self, tenant_id: str, item: dict[str, Any]) -> None:
        try:
            outcome = await self._post(item)
            metrics.WEBHOOK_ATTEMPT_SECONDS.observe(outcome.seconds)
            await self._record(tenant_id, item, outcome)
        except Exception as exc:
            # The lease runs out and the delivery is sent again: at least once, never lost.
            self._failed("webhook attempt not recorded; it will be sent again", exc, tenant_id)
        finally:
            self.notify(tenant_id)  # the next delivery of its ordering key may go now

    async def _post(self, item: dict[str, Any]) -> Outcome:
        assert self._client is not None
        url: str = item["url"]
        body: bytes = item["body"].encode()
        started = time.perf_counter()
        if self.settings.webhook_refuse_private_addresses and await resolves_to_private(url):
            return Outcome(None, "refused: the host resolves to a private or reserved address", None, 0.0)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature_header(item["secret"], int(time.time()), body),
            EVENT_TYPE_HEADER: item["event_type"],
            EVENT_SEQ_HEADER: str(item["event_seq"]),
            DELIVERY_ID_HEADER: str(item["id"]),
        }
        try:
            async with (
                asyncio.timeout(self.settings.webhook_timeout_seconds),
                self._client.stream("POST", url, content=body, headers=headers) as response,
            ):
                excerpt = await _excerpt(response)
        except TimeoutError:
            error = f"timed out after {self.settings.webhook_timeout_seconds:g} s"
            return Outcome(None, error, None, time.perf_counter() - started)
        except (httpx.HTTPError, OSError) as exc:
            error = _storable(f"{type(exc).__name__}: {exc}")[:ERROR_CHARS]
            return Outcome(None, error, None, time.perf_counter() - started)
        seconds = time.perf_counter() - started
        if 200 <= response.status_code < 300:
            return Outcome(response.status_code, None, excerpt, seconds)
        return Outcome(response.status_code, f"HTTP {response.status_code}", excerpt, seconds)

    async def _record(self, tenant_id: str, item: dict[str, Any], outcome: Outcome) -> None:
        now = utcnow()
        values: dict[str, Any] = {
            "last_status_code": outcome.status_code,
            "last_error": outcome.error,
            "updated_at": now,
        }
        if outcome.delivered:
            result = "delivered"
            values |= {"status": repo.DELIVERED, "delivered_at": now, "next_attempt_at": None}
        elif item["round_attempts"] >= self.settings.webhook_max_attempts:
            result = "dead"
            values |= {"status": repo.DEAD, "next_attempt_at": None}
        else:
            result = "retry"
            wait = backoff_seconds(
                item["round_attempts"],
                self.settings.webhook_retry_base_seconds,
                self.settings.webhook_retry_max_seconds,
            )
            values["next_attempt_at"] = now + dt.timedelta(seconds=wait)
        async with self.db.transaction(tenant_id, write=True) as conn:
            kept = await repo.finish(
                conn, tenant_id, item["id"], lease_until=item["lease_until"], values=values
            )
            if kept or await repo.delivery_exists(conn, tenant_id, item["id"]):
                await repo.insert_attempt(
                    conn,
                    tenant_id,
                    delivery_id=item["id"],
                    attempt=item["attempts"],
                    attempted_at=now - dt.timedelta(seconds=outcome.seconds),
                    duration_ms=round(outcome.seconds * 1000),
                    status_code=outcome.status_code,
                    error=outcome.error,
                    response_excerpt=outcome.excerpt,
                )
        metrics.WEBHOOK_DELIVERIES.labels(result if kept else "lost_lease").inc()
        if result == "dead" and kept:
            log.warning(
                "webhook delivery dead after its last attempt",
                extra={"tenant_id": tenant_id, "delivery_id": str(item["id"]), "error": outcome.error},
            )

    def _failed(self, message: str, exc: Exception, tenant_id: str | None = None) -> None:
        self.last_error = error_summary(exc)
        log.warning(message, extra={"tenant_id": tenant_id, "error": f"{type(exc).__name__}: {exc}"})


async def _excerpt(response: httpx.Response) -> str | None:
    """The start of the response body (the rest is not read)."""
    taken = bytearray()
    async for chunk in response.aiter_bytes():
        taken += chunk
        if len(taken) >= EXCERPT_CHARS * 4:
            break
    if not taken:
        return None
    return _storable(taken.decode("utf-8", errors="replace"))[:EXCERPT_CHARS]


def _storable(text: str) -> str:
    """PostgreSQL's text cannot hold NUL: a receiver's answer must not make its attempt unrecordable."""
    return text.replace("\x00", "\ufffd")
