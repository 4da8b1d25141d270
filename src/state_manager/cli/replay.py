"""`state-manager replay`: process stored WhatsApp webhooks again."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import TYPE_CHECKING, Annotated

import typer

from state_manager.cli.common import fail, load_settings, print_table, when, with_database

if TYPE_CHECKING:
    from state_manager.db import Database
    from state_manager.webhooks.service import Replayed


def replay(
    tenant: Annotated[str, typer.Option(help="The tenant whose stored webhooks to process again.")],
    event: Annotated[
        list[str] | None,
        typer.Option(help="Only this stored webhook (its event_id); give it several times for several."),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only webhooks received at or after this time (ISO-8601 with a zone).")
    ] = None,
) -> None:
    """Process stored WhatsApp webhooks again, oldest first.

    Every accepted webhook body is kept per tenant. Replaying is safe: a message is recorded once and
    statuses merge, so only what was missed changes (say, after a bug fix or a restore). With REDIS_URL
    set, running servers drop what they cached about the customers a replay touches; on the embedded
    default a running server may answer a lookup from its cache for up to CACHE_LOCAL_SECONDS.
    """
    event_ids = []
    for given in event or []:
        try:
            event_ids.append(uuid.UUID(given))
        except ValueError:
            fail(f"--event: {given!r} is not an event ID", 2)
    start = None
    if since is not None:
        try:
            start = dt.datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError:
            fail(f"--since: {since!r} is not an ISO-8601 time", 2)
        if start.tzinfo is None:
            fail("--since needs a zone (e.g. 2026-01-01T00:00:00Z)", 2)
    settings = load_settings()

    async def work(db: Database) -> list[Replayed]:
        from state_manager.cache import open_lookup_cache
        from state_manager.messages.inbound import inbound_recorder
        from state_manager.tenants import service as tenants
        from state_manager.webhooks import service

        async with db.transaction(None, write=False) as conn:
            if not await tenants.tenant_exists(conn, tenant):
                fail(f"tenant {tenant!r} not found")
        cache = open_lookup_cache(settings)
        await cache.start()  # so that what the replay changes leaves the running servers' caches
        try:
            return await service.replay(
                db, cache, inbound_recorder(db, cache), tenant, event_ids=event_ids, since=start
            )
        finally:
            await cache.close()

    done = with_database(settings, work)
    print_table(
        "Replayed webhooks",
        ["Event", "Received", "Outcomes"],
        [
            (
                str(r.event_id),
                when(r.received_at),
                ", ".join(f"{k} {v}" for k, v in sorted(r.outcomes.items())),
            )
            for r in done
        ],
        whole=("Event",),
    )
