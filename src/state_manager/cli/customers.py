"""`state-manager customers export|erase`: a customer's data rights from the command line, through the same
service functions as the API (customers/export.py, customers/erasure.py), audited as "cli:<user>"."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from state_manager.cli.common import (
    EXIT_USAGE,
    JsonOption,
    cli_actor,
    fail,
    load_settings,
    note,
    print_table,
    with_database,
)

if TYPE_CHECKING:
    from state_manager.customers.schemas import ErasureRead
    from state_manager.db import Database

customers = typer.Typer(name="customers", help="A customer's data rights: export everything, erase.")

TenantOption = Annotated[str, typer.Option("--tenant", help="The tenant the customer belongs to.")]
CustomerArgument = Annotated[str, typer.Argument(help="The customer's ID.", show_default=False)]


def _customer_id(given: str) -> uuid.UUID:
    try:
        return uuid.UUID(given)
    except ValueError:
        fail(f"{given!r} is not a customer ID", EXIT_USAGE)


async def _require_tenant(db: Database, tenant: str) -> None:
    from state_manager.tenants import service as tenants

    async with db.transaction(None, write=False) as conn:
        if not await tenants.tenant_exists(conn, tenant):
            fail(f"tenant {tenant!r} not found")


@customers.command("export")
def export_customer(
    tenant: TenantOption,
    customer: CustomerArgument,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the document here (default: standard output).")
    ] = None,
) -> None:
    """Write everything held about the customer as one JSON document (the shape of
    `GET /v1/customers/{id}/export`, docs/data-rights.md). The export is audited before it is written."""
    customer_id = _customer_id(customer)
    settings = load_settings()

    async def work(db: Database) -> None:
        from state_manager.customers import export

        await _require_tenant(db, tenant)
        async with db.transaction(tenant, write=True) as conn:
            await export.record_export(conn, tenant, customer_id, actor=cli_actor())
        document = export.export_document(db, tenant, customer_id)
        if out is None:
            async for piece in document:
                sys.stdout.buffer.write(piece)
            sys.stdout.buffer.write(b"\n")
            sys.stdout.buffer.flush()
            return
        partial = out.with_name(f".{out.name}.partial")
        try:
            # Readable by its owner only, like backups: it is all of one person's data.
            descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "wb") as file:
                async for piece in document:
                    file.write(piece)
            os.replace(partial, out)  # complete or absent, never half-written
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        note(f"exported customer {customer_id} to {out}")

    with_database(settings, work)


@customers.command("erase")
def erase_customer(
    tenant: TenantOption,
    customer: CustomerArgument,
    reason: Annotated[
        str | None, typer.Option(help="Why (e.g. the request's ticket); kept in the audit log as written.")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    as_json: Annotated[bool, JsonOption] = False,
) -> None:
    """Erase the customer's personal data; its conversations, messages and events stay, without it, for
    anonymous counts (docs/data-rights.md). Erasing an erased customer changes nothing. With REDIS_URL
    set, running servers drop what they cached about the customer at once; on the embedded default a
    running server may answer a lookup from its cache for up to CACHE_LOCAL_SECONDS."""
    customer_id = _customer_id(customer)
    if reason is not None and len(reason) > 500:
        fail("--reason: at most 500 characters", EXIT_USAGE)
    question = f"Erase customer {customer_id} of tenant {tenant}? This cannot be undone"
    if not yes and not typer.confirm(question):
        fail("nothing erased")
    settings = load_settings()

    async def work(db: Database) -> ErasureRead:
        from state_manager.cache import open_lookup_cache
        from state_manager.customers import erasure

        await _require_tenant(db, tenant)
        cache = open_lookup_cache(settings)
        await cache.start()  # so that running servers drop the customer's cached lookups
        try:
            async with cache.publishing_changes(), db.transaction(tenant, write=True) as conn:
                return await erasure.erase(conn, tenant, customer_id, actor=cli_actor(), reason=reason)
        finally:
            await cache.close()

    done = with_database(settings, work)
    if as_json:
        typer.echo(done.model_dump_json(indent=2))
    elif done.counts is None:
        typer.echo(f"customer {customer_id} was already erased; nothing changed")
    else:
        print_table(
            f"Erased customer {customer_id}", ["What", "Count"], sorted(done.counts.model_dump().items())
        )
