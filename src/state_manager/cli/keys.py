"""`state-manager keys …`: API keys. The whole key is shown once, when it is made; only a hash is kept."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Annotated

import typer

from state_manager.cli.common import (
    JsonOption,
    build,
    day,
    load_settings,
    note,
    print_json,
    print_table,
    with_database,
)
from state_manager.tenants.keys import KEY_PREFIX
from state_manager.tenants.schemas import KeyKind

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from state_manager.db import Database
    from state_manager.tenants.schemas import ApiKeyCreated, ApiKeyRead

keys = typer.Typer(
    name="keys",
    help="API keys: tenant keys act for one tenant, service keys name the tenant per request "
    "(X-Tenant-ID), admin keys also manage organizations, tenants and keys.",
    no_args_is_help=True,
)


def _key_table(items: list[ApiKeyRead], *, hint: bool = False) -> None:
    print_table(
        "API keys",
        ["Key", "Kind", "Name", "Tenant", "Created", "Revoked"],
        [
            (
                f"{KEY_PREFIX}{k.prefix}_…",
                k.kind.value,
                k.name,
                k.tenant_id,
                day(k.created_at),
                day(k.revoked_at),
            )
            for k in items
        ],
        whole=("Key",),
    )
    if hint:
        note("the IDs are in --json; `keys revoke` takes an ID or the smk_<prefix> shown here")


async def _key_id(conn: AsyncConnection, given: str) -> uuid.UUID:
    """An ID from what the user gave: the ID, the `smk_<prefix>` from `keys list`, or the whole key."""
    from state_manager.errors import NotFound
    from state_manager.tenants import repository

    try:
        return uuid.UUID(given)
    except ValueError:
        pass
    prefix = given.removeprefix(KEY_PREFIX).split("_", 1)[0].rstrip("…")
    row = await repository.find_key_by_prefix(conn, prefix) if prefix else None
    if row is None:
        raise NotFound(f"no key with the ID or prefix {given!r}")
    found: uuid.UUID = row["id"]
    return found


@keys.command("create")
def key_create(
    kind: Annotated[KeyKind, typer.Option("--kind", help="What the key may do.", case_sensitive=False)],
    name: Annotated[str, typer.Option("--name", help="What the key is for (shown in `keys list`).")],
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="The tenant a tenant key acts for (tenant keys only).")
    ] = None,
    rate_limit: Annotated[
        float | None,
        typer.Option(
            "--rate-limit",
            help="The key's own requests a second over all instances (0: none); "
            "default RATE_LIMIT_PER_SECOND.",
        ),
    ] = None,
    burst: Annotated[
        int | None,
        typer.Option("--burst", help="Requests at once above the rate; default two seconds' worth."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the key and its details as one JSON object.")
    ] = False,
) -> None:
    """Create an API key and print it once, to stdout.

    Without --json stdout holds only the key, so `KEY=$(state-manager keys create …)` works; the details go
    to stderr. The key cannot be shown again: only its hash is stored.
    """
    from state_manager.tenants import service
    from state_manager.tenants.schemas import ApiKeyCreate

    data = build(
        ApiKeyCreate,
        kind=kind,
        name=name,
        tenant_id=tenant,
        rate_limit_per_second=rate_limit,
        rate_limit_burst=burst,
    )
    settings = load_settings()

    async def work(db: Database) -> ApiKeyCreated:
        async with db.transaction(None) as conn:
            return await service.create_key(conn, data)

    created = with_database(settings, work)
    bound = f" for tenant {created.tenant_id}" if created.tenant_id else ""
    note(
        f"created {created.kind.value} key {created.id} ({created.name}){bound}. "
        "This is the only time the key is shown: it is not stored, only its hash is."
    )
    if as_json:
        print_json(created)
    else:
        typer.echo(created.key)


@keys.command("list")
def key_list(
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only the keys of this tenant.")] = None,
    as_json: Annotated[bool, JsonOption] = False,
) -> None:
    """List API keys (never their secrets), revoked ones included."""
    from state_manager.tenants import service

    settings = load_settings()

    async def work(db: Database) -> list[ApiKeyRead]:
        async with db.transaction(None, write=False) as conn:
            return await service.list_keys(conn, tenant)

    items = with_database(settings, work)
    if as_json:
        print_json(items)
    else:
        _key_table(items, hint=True)


@keys.command("revoke")
def key_revoke(
    key: Annotated[
        str,
        typer.Argument(
            metavar="KEY_ID",
            help="The key's ID (`keys list --json`), its smk_<prefix> as `keys list` shows it, "
            "or the whole key.",
        ),
    ],
    as_json: Annotated[bool, JsonOption] = False,
) -> None:
    """Revoke an API key. Running servers stop accepting it within API_KEY_CACHE_SECONDS."""
    from state_manager.tenants import service

    settings = load_settings()

    async def work(db: Database) -> ApiKeyRead:
        async with db.transaction(None) as conn:
            return await service.revoke_key(conn, await _key_id(conn, key))

    revoked = with_database(settings, work)
    if as_json:
        print_json(revoked)
    else:
        _key_table([revoked])
    note(
        f"key {revoked.id} is revoked; running servers refuse it within "
        f"{settings.api_key_cache_seconds:g} s (API_KEY_CACHE_SECONDS)"
    )


@keys.command("set-limit")
def key_set_limit(
    key: Annotated[
        str,
        typer.Argument(
            metavar="KEY_ID", help="The key's ID, its smk_<prefix> as `keys list` shows it, or the key."
        ),
    ],
    rate_limit: Annotated[
        float | None,
        typer.Option("--rate-limit", help="Requests a second over all instances; 0: no limit."),
    ] = None,
    burst: Annotated[
        int | None,
        typer.Option("--burst", help="Requests at once above the rate; default two seconds' worth."),
    ] = None,
    default: Annotated[
        bool, typer.Option("--default", help="Back to RATE_LIMIT_PER_SECOND and RATE_LIMIT_BURST.")
    ] = False,
    as_json: Annotated[bool, JsonOption] = False,
) -> None:
    """Set a key's own rate limit. Running servers apply it within API_KEY_CACHE_SECONDS."""
    from state_manager.tenants import service
    from state_manager.tenants.schemas import ApiKeyUpdate

    if default == (rate_limit is not None or burst is not None):
        raise typer.BadParameter("give --rate-limit (and --burst), or --default")
    data = build(ApiKeyUpdate, rate_limit_per_second=rate_limit, rate_limit_burst=burst)
    settings = load_settings()

    async def work(db: Database) -> ApiKeyRead:
        async with db.transaction(None) as conn:
            return await service.update_key(conn, await _key_id(conn, key), data)

    updated = with_database(settings, work)
    if as_json:
        print_json(updated)
    else:
        _key_table([updated])
    note(
        f"key {updated.id}: running servers apply the new limit within "
        f"{settings.api_key_cache_seconds:g} s (API_KEY_CACHE_SECONDS)"
    )
