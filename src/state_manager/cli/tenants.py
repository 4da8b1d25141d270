"""`state-manager organizations …` and `state-manager tenants …`: the directory of who uses the service."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from state_manager.cli.common import (
    JsonOption,
    build,
    load_settings,
    print_json,
    print_table,
    when,
    with_database,
)

if TYPE_CHECKING:
    from state_manager.db import Database
    from state_manager.tenants.schemas import OrganizationRead, TenantRead

organizations = typer.Typer(
    name="organizations",
    help="Organizations: the customers of the service; each owns one or more tenants.",
    no_args_is_help=True,
)
tenants = typer.Typer(
    name="tenants",
    help="Tenants: the walled-off spaces that hold customers, conversations and messages.",
    no_args_is_help=True,
)


def _organization_table(items: list[OrganizationRead]) -> None:
    print_table(
        "Organizations",
        ["ID", "Name", "Created"],
        [(o.id, o.name, when(o.created_at)) for o in items],
        whole=("ID", "Created"),
    )


def _tenant_table(items: list[TenantRead]) -> None:
    print_table(
        "Tenants",
        ["ID", "Organization", "Name", "Inactivity timeout", "Time zone", "Created"],
        [
            (
                t.id,
                t.organization_id,
                t.name,
                f"{t.settings.inactivity_timeout_seconds} s",
                t.settings.timezone,
                when(t.created_at),
            )
            for t in items
        ],
        whole=("ID", "Organization", "Created"),
    )


@organizations.command("create")
def organization_create(
    id: Annotated[str, typer.Argument(help="Organization ID: 1-64 letters, digits and ._-")],
    name: Annotated[str, typer.Option("--name", help="Display name.")],
    as_json: Annotated[bool, JsonOption] = False,
) -> None:
    """Create an organization."""
    from state_manager.tenants import service
    from state_manager.tenants.schemas import OrganizationCreate

    data = build(OrganizationCreate, id=id, name=name)
    settings = load_settings()

    async def work(db: Database) -> OrganizationRead:
        async with db.transaction(None) as conn:
            return await service.create_organization(conn, data)

    created = with_database(settings, work)
    if as_json:
        print_json(created)
    else:
        _organization_table([created])


@organizations.command("list")
def organization_list(as_json: Annotated[bool, JsonOption] = False) -> None:
    """List every organization."""
    from state_manager.tenants import service

    settings = load_settings()

    async def work(db: Database) -> list[OrganizationRead]:
        async with db.transaction(None, write=False) as conn:
            return await service.list_organizations(conn)

    items = with_database(settings, work)
    if as_json:
        print_json(items)
    else:
        _organization_table(items)


@tenants.command("create")
def tenant_create(
    id: Annotated[str, typer.Argument(help="Tenant ID: 1-64 letters, digits and ._-")],
    organization: Annotated[str, typer.Option("--organization", "-o", help="The owning organization's ID.")],
    name: Annotated[str, typer.Option("--name", help="Display name.")],
    create_organization: Annotated[
        bool,
        typer.Option(
            "--create-organization",
            help="Create the organization too if it does not exist (named after its ID).",
        ),
    ] = False,
    as_json: Annotated[bool, JsonOption] = False,
) -> None:
    """Create a tenant in an organization, with the default tenant settings."""
    from state_manager.tenants import repository, service
    from state_manager.tenants.schemas import OrganizationCreate, TenantCreate

    data = build(TenantCreate, id=id, organization_id=organization, name=name)
    settings = load_settings()

    async def work(db: Database) -> TenantRead:
        async with db.transaction(None) as conn:
            if create_organization and await repository.get_organization(conn, organization) is None:
                await service.create_organization(
                    conn, OrganizationCreate(id=organization, name=organization)
                )
            return await service.create_tenant(conn, data)

    created = with_database(settings, work)
    if as_json:
        print_json(created)
    else:
        _tenant_table([created])


@tenants.command("list")
def tenant_list(
    organization: Annotated[
        str | None, typer.Option("--organization", "-o", help="Only this organization's tenants.")
    ] = None,
    as_json: Annotated[bool, JsonOption] = False,
) -> None:
    """List tenants."""
    from state_manager.tenants import service

    settings = load_settings()

    async def work(db: Database) -> list[TenantRead]:
        async with db.transaction(None, write=False) as conn:
            return await service.list_tenants(conn, organization)

    items = with_database(settings, work)
    if as_json:
        print_json(items)
    else:
        _tenant_table(items)


@tenants.command("show")
def tenant_show(
    id: Annotated[str, typer.Argument(help="Tenant ID.")],
    as_json: Annotated[bool, JsonOption] = False,
) -> None:
    """Show one tenant with its settings (exit code 1 if there is no such tenant)."""
    from state_manager.tenants import service

    settings = load_settings()

    async def work(db: Database) -> TenantRead:
        async with db.transaction(None, write=False) as conn:
            return await service.get_tenant(conn, id)

    found = with_database(settings, work)
    if as_json:
        print_json(found)
        return
    _tenant_table([found])
    retention = found.settings.retention
    print_table(
        "Retention (days; — keeps data until deleted)",
        ["Message content", "Closed conversations", "Raw webhooks", "Events"],
        [
            (
                retention.message_content_days,
                retention.closed_conversation_days,
                retention.raw_webhook_days,
                retention.event_days,
            )
        ],
    )
