"""`state-manager analytics status | refresh | rebuild`: the analytics projection, by hand.

The servers keep it current by themselves (as their relays number events, and before each report);
`rebuild` is for after a change in how facts are computed, or to check that the projection agrees with
the tables. Both take the same per-tenant lock as the servers, so they can run beside them.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated

import typer

from state_manager.cli.common import JsonOption, fail, load_settings, print_table, with_database

if TYPE_CHECKING:
    from state_manager.db import Database

analytics = typer.Typer(
    name="analytics", help="The analytics projection: how current it is; refresh or rebuild it."
)
TenantOption = typer.Option("--tenant", help="Only this tenant (default: every tenant).", show_default=False)


async def _tenants(db: Database, tenant: str | None) -> list[str]:
    from sqlalchemy import select

    from state_manager.tenants.models import tenants

    async with db.transaction(None, write=False) as conn:
        every = list((await conn.execute(select(tenants.c.id).order_by(tenants.c.id))).scalars())
    if tenant is None:
        return every
    if tenant not in every:
        fail(f"tenant {tenant!r} not found")
    return [tenant]


@analytics.command("status")
def status(
    tenant: Annotated[str | None, TenantOption] = None, as_json: Annotated[bool, JsonOption] = False
) -> None:
    """How far each tenant's projection is behind its events."""
    settings = load_settings()

    async def work(db: Database) -> list[dict[str, object]]:
        from state_manager.analytics import projector

        found = []
        for tenant_id in await _tenants(db, tenant):
            fresh = await projector.freshness(db, tenant_id)
            found.append(
                {
                    "tenant": tenant_id,
                    "complete": fresh.complete,
                    "rebuilding": fresh.rebuilding,
                    "events_behind": fresh.events_behind,
                }
            )
        return found

    rows = with_database(settings, work)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    print_table(
        "Analytics projection",
        ["Tenant", "Complete", "Rebuilding", "Events behind"],
        [[row["tenant"], row["complete"], row["rebuilding"], row["events_behind"]] for row in rows],
        whole=("Tenant",),
    )


@analytics.command("refresh")
def refresh(tenant: Annotated[str | None, TenantOption] = None) -> None:
    """Bring the projection up to date now (what the servers do as events are numbered)."""
    _each_tenant(tenant, rebuild=False)


@analytics.command("rebuild")
def rebuild(tenant: Annotated[str | None, TenantOption] = None) -> None:
    """Project every conversation again from the tables, then the events since. Reports stay available
    meanwhile (they say `rebuilding` until it ends)."""
    _each_tenant(tenant, rebuild=True)


def _each_tenant(tenant: str | None, *, rebuild: bool) -> None:
    settings = load_settings()

    async def work(db: Database) -> None:
        from rich.progress import Progress

        from state_manager.analytics import projector

        chosen = await _tenants(db, tenant)
        with Progress(transient=False) as progress:
            bar = progress.add_task("rebuilding" if rebuild else "refreshing", total=len(chosen))
            for tenant_id in chosen:
                started = time.monotonic()
                if rebuild:
                    steps = await projector.rebuild(db, tenant_id)
                else:
                    steps = 0
                    while await projector.step(db, tenant_id):
                        steps += 1
                progress.console.print(
                    f"{tenant_id}: {steps} batches in {time.monotonic() - started:.1f} s", highlight=False
                )
                progress.advance(bar)

    with_database(settings, work)
