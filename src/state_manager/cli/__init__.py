"""The `state-manager` command: serve, migrate, the directory of organizations, tenants and keys, replay,
the cache, the scheduled jobs (retention, expiry) and the analytics projection."""

from __future__ import annotations

import typer

from state_manager.cli import (
    analytics,
    backup,
    cache,
    check,
    customers,
    jobs,
    keys,
    migrate,
    replay,
    serve,
    tenants,
)

app = typer.Typer(
    name="state-manager",
    help="Conversation state for WhatsApp <-> Genesys Cloud. Settings come from the environment "
    "(and a .env file): DATABASE_URL, REDIS_URL, PORT, AUTH_MODE, … — see the README.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_show_locals=False,  # locals may hold keys and passwords
)
app.command("serve")(serve.serve)
app.command("migrate")(migrate.migrate)
app.add_typer(tenants.organizations)
app.add_typer(tenants.tenants)
app.add_typer(keys.keys)
app.command("replay")(replay.replay)
app.add_typer(cache.cache)
app.command("check")(check.check)
app.add_typer(backup.backup)
app.command("restore")(backup.restore)
app.add_typer(jobs.retention)
app.add_typer(jobs.expiry)
app.add_typer(jobs.jobs)
app.add_typer(customers.customers)
app.add_typer(analytics.analytics)

__all__ = ["app"]
