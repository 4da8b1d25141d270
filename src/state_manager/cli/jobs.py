"""`state-manager retention run`, `expiry run` and `jobs`: the scheduled jobs, by hand.

A run by hand takes the same lease as the servers' scheduler, so it never overlaps a scheduled run
(it says which instance holds the job, and exits 1). A dry run takes no lease and changes nothing.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from state_manager.cli.common import (
    EXIT_FAILED,
    JsonOption,
    cli_actor,
    err,
    fail,
    load_settings,
    print_table,
    when,
    with_database,
)

if TYPE_CHECKING:
    from state_manager.db import Database
    from state_manager.jobs.report import JobReport

TenantOption = typer.Option("--tenant", help="Only this tenant (default: every tenant).", show_default=False)
DryRunOption = typer.Option("--dry-run", help="Show what would change; change nothing.")

retention = typer.Typer(
    name="retention",
    help="Each tenant's retention policy: redact old content, archive old conversations, trim old data.",
    no_args_is_help=True,
)
expiry = typer.Typer(
    name="expiry",
    help="Expire conversations inactive for longer than their tenant's timeout.",
    no_args_is_help=True,
)
jobs = typer.Typer(name="jobs", help="The scheduled jobs: who runs them, and what they last did.")


@retention.command("run")
def run_retention(
    tenant: Annotated[str | None, TenantOption] = None,
    dry_run: Annotated[bool, DryRunOption] = False,
    as_json: Annotated[bool, JsonOption] = False,
) -> None:
    """Apply the retention policy in the tenants' settings now (the servers do it every
    RETENTION_INTERVAL_SECONDS). Archives go to ARCHIVE_DIR; `state-manager restore FILE` brings
    one back."""
    _run("retention", tenant, dry_run, as_json)


@expiry.command("run")
def run_expiry(
    tenant: Annotated[str | None, TenantOption] = None,
    dry_run: Annotated[bool, DryRunOption] = False,
    as_json: Annotated[bool, JsonOption] = False,
) -> None:
    """Expire inactive conversations now (the servers do it every EXPIRY_INTERVAL_SECONDS)."""
    _run("expiry", tenant, dry_run, as_json)


def _run(job: str, tenant: str | None, dry_run: bool, as_json: bool) -> None:
    settings = load_settings()

    async def work(db: Database) -> JobReport:
        from state_manager.cache import open_lookup_cache
        from state_manager.jobs import lease
        from state_manager.jobs.scheduler import JOBS, JobContext, run_held
        from state_manager.tenants import service as tenants

        if tenant is not None:
            async with db.transaction(None, write=False) as conn:
                if not await tenants.tenant_exists(conn, tenant):
                    fail(f"tenant {tenant!r} not found")
        cache = open_lookup_cache(settings)
        await cache.start()  # so that what the run changes leaves the running servers' caches
        try:
            if dry_run:
                context = JobContext(settings, db, cache, lambda: False, tenant_id=tenant, dry_run=True)
                return await JOBS[job](context)
            try:
                return await run_held(
                    job,
                    settings,
                    db,
                    cache,
                    holder=f"cli:{lease.holder_name()}",
                    tenant_id=tenant,
                    actor=cli_actor(),
                )
            except lease.LeaseHeld:
                holders = {row["name"]: row["holder"] for row in await lease.leases(db)}
                fail(f"{job} is running on {holders.get(job) or 'another instance'}; try again when it ends")
        finally:
            await cache.close()

    report = with_database(settings, work)
    _show(job, report, dry_run, as_json)
    for failed_tenant, reason in sorted(report.failed.items()):
        err.print(f"[bold red]error:[/] {job} failed for tenant {escape(failed_tenant)}: {escape(reason)}")
    if report.failed:
        raise typer.Exit(EXIT_FAILED)


def _show(job: str, report: JobReport, dry_run: bool, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"job": job, **report.as_outcome()}, indent=2))
        return
    verb = "would change" if dry_run else "changed"
    kinds = sorted(report.totals())
    rows = [[t, *(counts.get(k, 0) for k in kinds)] for t, counts in sorted(report.tenants.items())]
    if not rows:
        typer.echo(f"{job}: nothing to do" + (" (dry run)" if dry_run else ""))
        return
    print_table(f"{job}: what it {verb}", ["Tenant", *kinds], rows, whole=("Tenant",))
    if report.stopped_early:
        typer.echo(f"{job} stopped before the end (its lease was lost); the next run carries on")


@jobs.callback(invoke_without_command=True)
def status(as_json: Annotated[bool, JsonOption] = False) -> None:
    """Each job's lease (which instance runs it, until when) and what its last run did."""
    settings = load_settings()

    async def work(db: Database) -> list[dict[str, object]]:
        from state_manager.jobs import lease

        return [dict(row) for row in await lease.leases(db)]

    found = with_database(settings, work)
    if as_json:
        typer.echo(json.dumps(found, indent=2, default=str))
        return
    rows = [
        [
            row["name"],
            row["holder"],
            when(row["lease_expires_at"]),
            when(row["last_started_at"]),
            when(row["last_finished_at"]),
            _outcome(row["last_outcome"]),
        ]
        for row in found
    ]
    print_table(
        "Scheduled jobs",
        ["Job", "Running on", "Lease until", "Last started", "Last finished", "Last outcome"],
        rows,
        whole=("Job", "Lease until", "Last started", "Last finished"),
    )


def _outcome(outcome: object) -> str | None:
    if not isinstance(outcome, dict):
        return None
    totals = outcome.get("totals") or {}
    changed = ", ".join(f"{what} {count}" for what, count in sorted(totals.items())) or "nothing changed"
    return f"{outcome.get('status', '?')}: {changed}"
