"""`state-manager check`: validate the data's invariants per tenant; with --repair, repair what is safe."""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from state_manager.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    JsonOption,
    cli_actor,
    err,
    fail,
    load_settings,
    out,
    with_database,
)

if TYPE_CHECKING:
    from state_manager.consistency.runner import Report
    from state_manager.db import Database


def check(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant (default: every tenant).")] = None,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Repair what can be repaired safely (each repair in its own transaction, with its events, "
            "audited); report the rest with the reason.",
        ),
    ] = False,
    stuck_after: Annotated[
        float,
        typer.Option(
            min=1.0,
            help="Seconds after which an unnumbered event, unpublished queue output or unclaimed webhook "
            "delivery counts as stuck.",
        ),
    ] = 600.0,
    as_json: Annotated[bool, JsonOption] = False,
) -> None:
    """Check the data's invariants, tenant by tenant; with --repair, repair what is safe to repair.

    Checks: one open conversation per customer and number, no orphan rows, lifecycle and participant
    times, activity times against the messages, message failures, held receipts, event numbering,
    stuck events, queue output and webhook deliveries, and (with REDIS_URL) the shared cache against
    the database. Exit status: 0 when nothing is left wrong, 1 when findings remain (or the check could
    not run), 2 for a usage error. docs/consistency.md describes each check and its repair.
    """
    settings = load_settings()

    async def work(db: Database) -> Report:
        from state_manager.consistency.runner import run_checks
        from state_manager.tenants import service as tenants

        if tenant is not None:
            async with db.transaction(None, write=False) as conn:
                if not await tenants.tenant_exists(conn, tenant):
                    fail(f"tenant {tenant!r} not found", EXIT_USAGE)
        return await run_checks(
            settings,
            db,
            tenant_id=tenant,
            repair=repair,
            stuck_after=dt.timedelta(seconds=stuck_after),
            actor=cli_actor(),
        )

    report = with_database(settings, work)
    if as_json:
        typer.echo(json.dumps(_as_json(report), indent=2))
    else:
        _print(report)
    if not report.clean:
        raise typer.Exit(EXIT_FAILED)


def _as_json(report: Report) -> dict[str, Any]:
    from state_manager.consistency.core import Outcome

    return {
        "repair": report.repair,
        "tenants": report.tenants,
        "clean": report.clean,
        "summary": {outcome.value: report.total(outcome) for outcome in Outcome}
        | {"unlisted": report.unlisted},
        "not_applicable": [
            {"check": name, "reason": reason} for name, reason in report.not_applicable.items()
        ],
        "findings": [
            {
                "check": result.finding.check,
                "tenant": result.finding.tenant_id,
                "subjects": list(result.finding.subjects),
                "detail": result.finding.detail,
                "outcome": result.outcome.value,
                "note": result.note,
            }
            for result in report.results
        ],
        "notes": report.notes,
    }


def _print(report: Report) -> None:
    from state_manager.consistency.core import Outcome

    tenants = f"{len(report.tenants)} tenant{'s' if len(report.tenants) != 1 else ''}"
    if report.results:
        out.print(_table(report))
    else:
        out.print(f"No findings in {tenants}.")
    counts = ", ".join(
        f"{report.total(outcome)} {outcome.value}" for outcome in Outcome if report.total(outcome)
    )
    if counts:
        err.print(
            f"{tenants} checked: {counts}" + (f" ({report.unlisted} not listed)" if report.unlisted else "")
        )
    for name, reason in report.not_applicable.items():
        err.print(f"[dim]{name}: not applicable: {reason}[/]")
    for text in report.notes:
        err.print(f"[yellow]note:[/] {text}")


def _table(report: Report) -> Any:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="Consistency findings", title_justify="left")
    # IDs whole, one per line; the prose folds into what width is left.
    table.add_column("Check", no_wrap=True)
    table.add_column("Tenant", no_wrap=True)
    table.add_column("Subjects", no_wrap=True)
    table.add_column("Detail", overflow="fold", ratio=3)
    table.add_column("Outcome", overflow="fold", ratio=2)
    for result in report.results:
        finding = result.finding
        outcome = result.outcome.value + (f": {result.note}" if result.note else "")
        table.add_row(
            *(escape(text) for text in (finding.check, finding.tenant_id, "\n".join(finding.subjects))),
            escape(finding.detail),
            escape(outcome),
        )
    return table
