"""What leaves the database after a commit: events (numbered by the relay), queue output (published by the
outbox relay) and webhook deliveries (sent by the dispatcher). Nothing may stay behind for long.

Each is normally handled within seconds by any running server (EVENTS_SWEEP_SECONDS, OUTBOX_SWEEP_SECONDS,
WEBHOOK_SWEEP_SECONDS); what is older than `--stuck-after` was left behind.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.consistency.core import Check, Context, Finding, Outcome, Result, listed, moment
from state_manager.db.locks import lock_names
from state_manager.events import repository as events_repo
from state_manager.events.models import events
from state_manager.events.relay import LEASE_WAIT_SECONDS, relay_lease
from state_manager.queues.models import broker_outbox
from state_manager.subscriptions import repository as subscriptions_repo
from state_manager.subscriptions.dispatcher import LEASE_MARGIN_SECONDS
from state_manager.subscriptions.models import webhook_deliveries, webhook_subscriptions

ev, o, d, s = events.c, broker_outbox.c, webhook_deliveries.c, webhook_subscriptions.c
SHOWN = 5  # IDs listed per finding of a group


class EventNumbering(Check):
    name = "event-numbering"
    invariant = (
        "No event carries a number above the relay's last number (event_relay.last_seq): the relay numbers "
        "on from there, and a number already taken would stop it for good (the unique index refuses it)."
    )

    async def find(self, ctx: Context, tenant_id: str) -> AsyncIterator[list[Finding]]:
        async with ctx.read(tenant_id) as conn:
            last, highest = await _numbers(conn, tenant_id)
            if highest <= last:
                return
            above = (
                await conn.execute(
                    select(ev.id)
                    .where(ev.tenant_id == tenant_id, ev.seq > last)
                    .order_by(ev.seq)
                    .limit(SHOWN)
                )
            ).scalars()
            shown = listed(list(above), SHOWN)
        yield [
            Finding(
                self.name,
                tenant_id,
                shown,
                f"events numbered up to {highest}, but the relay's last number is {last}: its next numbering "
                "would collide",
            )
        ]

    async def repair_one(self, ctx: Context, tenant_id: str, finding: Finding) -> Result:
        async with ctx.db.transaction(tenant_id, write=True, lock_timeout=LEASE_WAIT_SECONDS) as conn:
            await lock_names(conn, [relay_lease(tenant_id)])
            last, highest = await _numbers(conn, tenant_id)
            if highest <= last:
                return Result(finding, Outcome.RESOLVED)
            await events_repo.save_last_numbered(conn, tenant_id, highest)
        return Result(finding, Outcome.REPAIRED, f"the relay numbers on from {highest}")


async def _numbers(conn: AsyncConnection, tenant_id: str) -> tuple[int, int]:
    """The relay's last number and the highest number an event carries."""
    return await events_repo.last_numbered(conn, tenant_id), await events_repo.head(conn, tenant_id)


class UnnumberedEvents(Check):
    name = "unnumbered-events"
    invariant = (
        "Committed events are numbered (and published, and turned into webhook deliveries) within seconds "
        "by a running server's event relay."
    )

    async def find(self, ctx: Context, tenant_id: str) -> AsyncIterator[list[Finding]]:
        async with ctx.read(tenant_id) as conn:
            count, oldest, ids = await _group(conn, ev.id, ev.occurred_at, _stuck_events(ctx, tenant_id))
        if count:
            yield [
                Finding(
                    self.name,
                    tenant_id,
                    ids,
                    f"{count} event(s) written but not numbered for more than {ctx.stuck_after}; the "
                    f"oldest written {moment(oldest)}",
                )
            ]

    async def repair_one(self, ctx: Context, tenant_id: str, finding: Finding) -> Result:
        await number_events(ctx, tenant_id)
        async with ctx.read(tenant_id) as conn:
            count, _, _ = await _group(conn, ev.id, ev.occurred_at, _stuck_events(ctx, tenant_id))
        if count:
            return Result(finding, Outcome.LEFT, f"{count} event(s) still not numbered")
        return Result(finding, Outcome.REPAIRED, "numbered by the relay's code")


async def number_events(ctx: Context, tenant_id: str) -> None:
    """Numbers the tenant's unnumbered events with the relay's own code, under its lease, with a server's
    hooks (webhook deliveries written in the numbering transaction), then publishes what the bus lacks.
    A server relaying at the same moment simply takes turns with it."""
    while await ctx.relay.relay_once(tenant_id):
        pass
    # The bus away is no reason to stop: the events are numbered, and servers publish them when it is back.
    with contextlib.suppress(Exception):
        await ctx.relay.catch_up_bus(tenant_id)


def _stuck_events(ctx: Context, tenant_id: str) -> list[ColumnElement[bool]]:
    return [ev.tenant_id == tenant_id, ev.seq.is_(None), ev.occurred_at < ctx.now - ctx.stuck_after]


async def _group(
    conn: AsyncConnection, key: Any, time: Any, conditions: Sequence[ColumnElement[bool]]
) -> tuple[int, dt.datetime | None, tuple[str, ...]]:
    """How many rows match, the earliest time among them and the first IDs."""
    count, oldest = (await conn.execute(select(func.count(), func.min(time)).where(*conditions))).one()
    if not count:
        return 0, None, ()
    ids = (await conn.execute(select(key).where(*conditions).order_by(time, key).limit(SHOWN))).scalars()
    return int(count), oldest, listed(list(ids), SHOWN)


class QueueOutbox(Check):
    name = "queue-outbox"
    invariant = (
        "Queue output (broker_outbox) is published within seconds of its commit by a server with "
        "RABBITMQ_URL (queues/outbox.py)."
    )

    async def find(self, ctx: Context, tenant_id: str) -> AsyncIterator[list[Finding]]:
        stuck = [o.tenant_id == tenant_id, o.published_at.is_(None), o.created_at < ctx.now - ctx.stuck_after]
        async with ctx.read(tenant_id) as conn:
            count, oldest, ids = await _group(conn, o.id, o.created_at, stuck)
        if count:
            yield [
                Finding(
                    self.name,
                    tenant_id,
                    ids,
                    f"{count} queue message(s) not published for more than {ctx.stuck_after}; the oldest "
                    f"written {moment(oldest)}",
                    left_because="publishing needs the broker: a server with RABBITMQ_URL publishes them "
                    "at its next sweep (OUTBOX_SWEEP_SECONDS) once it reaches RabbitMQ; none has. Check that "
                    "one runs and what its log says",
                )
            ]


class WebhookDeliveries(Check):
    name = "webhook-deliveries"
    invariant = (
        "A pending webhook delivery has a due time, a lease no longer than an attempt can take, and is "
        "claimed by a running server's dispatcher soon after it is due (unless an earlier one of its "
        "conversation is waiting out a backoff, or its subscription is paused)."
    )

    async def find(self, ctx: Context, tenant_id: str) -> AsyncIterator[list[Finding]]:
        pending = [d.tenant_id == tenant_id, d.status == subscriptions_repo.PENDING]
        groups = (
            (
                "no_due_time",
                [*pending, d.next_attempt_at.is_(None)],
                "pending delivery(ies) without a due time: the dispatcher never claims them",
                None,
            ),
            (
                "lease_too_long",
                [*pending, d.locked_until > _longest_lease(ctx)],
                "pending delivery(ies) leased for longer than an attempt can take (WEBHOOK_TIMEOUT_SECONDS "
                f"+ {LEASE_MARGIN_SECONDS:g} s): no dispatcher claims them until the lease ends",
                None,
            ),
            (
                "not_claimed",
                [
                    *pending,
                    d.next_attempt_at < ctx.now - ctx.stuck_after,
                    or_(d.locked_until.is_(None), d.locked_until < ctx.now),
                    s.active.is_(True),
                    ~subscriptions_repo.BLOCKED,  # the claim's own rule: the head of its line
                ],
                f"pending delivery(ies) due for more than {ctx.stuck_after} and free to claim, not claimed",
                "sending needs a running server's dispatcher; none has claimed them. Check that one runs "
                "and what its log says",
            ),
        )
        found = []
        async with ctx.read(tenant_id) as conn:
            for kind, conditions, what, left_because in groups:
                query_conditions = [*conditions, s.tenant_id == d.tenant_id, s.id == d.subscription_id]
                count, oldest, ids = await _group(conn, d.id, d.created_at, query_conditions)
                if count:
                    found.append(
                        Finding(
                            self.name,
                            tenant_id,
                            ids,
                            f"{count} {what}; the oldest written {moment(oldest)}",
                            left_because=left_because,
                            data=kind,
                        )
                    )
        if found:
            yield found

    async def repair_one(self, ctx: Context, tenant_id: str, finding: Finding) -> Result:
        pending = [d.tenant_id == tenant_id, d.status == subscriptions_repo.PENDING]
        if finding.data == "no_due_time":
            # Due now, as a delivery retried by hand is (subscriptions/repository.py, `retry_dead`).
            statement = update(webhook_deliveries).where(*pending, d.next_attempt_at.is_(None))
            values: dict[str, Any] = {"next_attempt_at": ctx.now}
            note = "due now"
        else:
            # Whoever held such a lease cannot be attempting still; a lost lease is the dispatcher's own
            # case (the attempt's outcome is then not recorded, and the delivery is sent again).
            statement = update(webhook_deliveries).where(*pending, d.locked_until > _longest_lease(ctx))
            values = {"locked_until": None}
            note = "lease released"
        async with ctx.db.transaction(tenant_id, write=True) as conn:
            statement = statement.values({**values, "updated_at": ctx.now}).returning(d.id)
            changed = len((await conn.execute(statement)).all())
        if not changed:
            return Result(finding, Outcome.RESOLVED)
        return Result(finding, Outcome.REPAIRED, f"{changed} {note}")


def _longest_lease(ctx: Context) -> dt.datetime:
    return ctx.now + dt.timedelta(seconds=ctx.settings.webhook_timeout_seconds + LEASE_MARGIN_SECONDS)
