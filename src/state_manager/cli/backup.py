"""`state-manager backup`, `backup verify` and `restore`: logical backups in one file (backup/format.py)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from state_manager.cli.common import (
    EXIT_USAGE,
    JsonOption,
    cli_actor,
    err,
    fail,
    load_settings,
    note,
    print_table,
    safe_url,
)

if TYPE_CHECKING:
    from rich.progress import Progress

    from state_manager.backup.format import Manifest
    from state_manager.db import Database
    from state_manager.settings import Settings

T = TypeVar("T")

backup = typer.Typer(name="backup", invoke_without_command=True)


def _open(settings: Settings) -> Database:
    from state_manager.db import open_database

    if settings.is_embedded_database:
        return open_database(settings)
    from state_manager.db.postgres import PostgresDatabase

    # Backup and restore read and write every tenant: as the login user (the one that migrates), not as
    # the service's app role, which sees no tenant's rows without app.tenant_id (row-level security).
    return PostgresDatabase(settings, as_app_role=False)


def _database_errors() -> tuple[type[Exception], ...]:
    import asyncpg
    from sqlalchemy.exc import DBAPIError

    from state_manager.errors import StateManagerError

    return (DBAPIError, asyncpg.PostgresError, StateManagerError)


def _reason(exc: Exception) -> str:
    from state_manager.backup.restore import database_reason
    from state_manager.errors import StateManagerError

    return exc.detail if isinstance(exc, StateManagerError) else database_reason(exc)


def _run(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    """`work` against the database; a refused file, a database error or a file that cannot be written is
    one line and exit 1."""
    from state_manager.backup.format import BackupError

    async def run() -> T:
        db = _open(settings)
        try:
            return await work(db)
        except BackupError as exc:
            fail(str(exc))
        except _database_errors() as exc:
            fail(f"database error on {safe_url(settings.effective_database_url)}: {_reason(exc)}")
        except OSError as exc:
            fail(str(exc))
        finally:
            await db.dispose()

    return asyncio.run(run())


class _TableProgress:
    """A progress bar on stderr: rows done of all tables, naming the current table and its rank.

    `start` with the row count of each table, then call with (table, rows of it so far)."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._progress: Progress | None = None
        self._task: Any = None
        self._tables: list[str] = []
        self._before = 0  # rows of the tables done
        self._current: tuple[str, int] | None = None

    def __enter__(self) -> _TableProgress:
        return self

    def __exit__(self, *_: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def start(self, counts: dict[str, int]) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._tables = list(counts)
        self._progress = Progress(
            TextColumn(f"{self._what} [bold]{{task.description}}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err,
        )
        self._task = self._progress.add_task("", total=sum(counts.values()))
        self._progress.start()

    def __call__(self, table: str, rows: int) -> None:
        if self._progress is None:
            return
        if self._current is not None and self._current[0] != table:
            self._before += self._current[1]
        self._current = (table, rows)
        rank = self._tables.index(table) + 1 if table in self._tables else 0
        self._progress.update(
            self._task,
            completed=self._before + rows,
            description=f"{table} (table {rank}/{len(self._tables)})",
        )


def _size(path: Path) -> str:
    size = float(path.stat().st_size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    raise AssertionError


@backup.callback()
def take(
    ctx: typer.Context,
    out: Annotated[
        Path | None, typer.Option("--out", help="The file to write (replaced only once complete).")
    ] = None,
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="Only this tenant's data (default: everything).")
    ] = None,
    as_json: Annotated[bool, JsonOption] = False,
) -> None:
    """Write a consistent backup of every table, or of one tenant, to one compressed file; `backup verify
    FILE` checks one.

    One snapshot (PostgreSQL: one REPEATABLE READ READ ONLY transaction; SQLite: one read transaction)
    streamed table by table, as JSON lines, into a ZIP file with a manifest (schema revision, row count
    and SHA-256 per table). It is written under a temporary name, fsynced, then renamed. It holds
    personal data and webhook secrets (never API keys, only their hashes): it is created readable by its
    owner only. On PostgreSQL it needs a role that bypasses row-level security, as pg_dump does.
    """
    if ctx.invoked_subcommand is not None:
        return
    if out is None:
        fail("--out FILE is required (or: state-manager backup verify FILE)", EXIT_USAGE)
    if out.is_dir():
        fail(f"--out: {out} is a directory", EXIT_USAGE)
    if not out.parent.is_dir():
        fail(f"--out: no directory {out.parent}", EXIT_USAGE)
    settings = load_settings()
    if settings.is_embedded_database:
        from state_manager.db.sqlite import database_file

        found = database_file(settings.effective_database_url)
        if found is not None and not found.exists():
            fail(f"no database at {found} (DATABASE_URL or DATA_DIR)")
    started = time.monotonic()

    async def work(db: Database) -> Manifest:
        from state_manager.backup.snapshot import take_backup
        from state_manager.cli.common import ensure_schema

        await ensure_schema(settings, db)
        with _TableProgress("backup") as progress:
            return await take_backup(db, out, tenant_id=tenant, on_counts=progress.start, progress=progress)

    manifest = _run(settings, work)
    if as_json:
        typer.echo(manifest.to_json().decode())
        return
    rows = sum(entry.rows for entry in manifest.tables.values())
    typer.echo(
        f"wrote {out}: {rows} rows of {len(manifest.tables)} tables"
        f"{f' (tenant {tenant})' if tenant else ''}, {_size(out)}, in {time.monotonic() - started:.1f} s"
    )


@backup.command("verify")
def verify(
    file: Annotated[Path, typer.Argument(help="A backup or archive file.")],
    as_json: Annotated[bool, JsonOption] = False,
) -> None:
    """Read every table of a backup file and check its SHA-256 and row count against the manifest.

    Exit status 1 if any table differs, or the file is cut short or damaged.
    """
    from state_manager.backup.format import BackupError
    from state_manager.backup.reader import BackupFile
    from state_manager.backup.reader import verify as check

    try:
        with BackupFile(file) as opened:
            manifest = opened.manifest
            checks = check(opened)
    except BackupError as exc:
        fail(str(exc))
    failed = [c for c in checks if not c.ok]
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "file": str(file),
                    "ok": not failed,
                    "kind": manifest.kind,
                    "schema_revision": manifest.schema_revision,
                    "created_at": manifest.created_at,
                    "tenant": manifest.tenant,
                    "tables": [
                        {"name": c.name, "rows": c.rows, "ok": c.ok, "problem": c.problem} for c in checks
                    ],
                },
                indent=2,
            )
        )
    else:
        _describe(file, manifest)
        print_table(
            "Tables",
            ["Table", "Rows", "Check"],
            [(c.name, c.rows, "ok" if c.ok else c.problem) for c in checks],
            whole=("Table", "Rows"),
        )
    if failed:
        fail(f"{len(failed)} of {len(checks)} tables failed the check: {', '.join(c.name for c in failed)}")


def _describe(file: Path, manifest: Manifest) -> None:
    scope = f"tenant {manifest.tenant}" if manifest.tenant else f"{len(manifest.tenants)} tenants"
    err.print(
        f"{file}: {manifest.kind} of {scope}, taken {manifest.created_at} from {manifest.source_dialect}"
        f" at schema revision {manifest.schema_revision}"
    )


def restore(
    file: Annotated[Path, typer.Argument(help="A backup or archive file.")],
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="First remove every row of the file's tenants, so that they end as the file has them.",
        ),
    ] = False,
    as_json: Annotated[bool, JsonOption] = False,
) -> None:
    """Restore a backup or archive file into DATABASE_URL, in one transaction.

    An empty database is migrated first. By default the rows that are missing are inserted and existing
    ones are left as they are, so restoring twice is restoring once (and an archive puts back what was
    archived). With --replace the data of the file's tenants is removed first. Every table's checksum is
    checked as it is read: if one differs nothing is written. With REDIS_URL set, running servers drop
    what they cached; restore into the embedded default with its server stopped. Each restored tenant's
    audit log records the restore.
    """
    from state_manager.backup.format import BackupError
    from state_manager.backup.reader import BackupFile
    from state_manager.backup.restore import (
        RedisRefreshed,
        Restored,
        check_restorable,
        erased_since,
        refresh_redis,
    )
    from state_manager.backup.restore import restore as load

    settings = load_settings()
    try:
        opened = BackupFile(file)
        order = check_restorable(opened.manifest, replace=replace)
    except BackupError as exc:
        fail(f"{exc}; nothing was written")
    manifest = opened.manifest

    async def work(db: Database) -> tuple[Restored, RedisRefreshed | None, list[tuple[str, str]]]:
        await _ready_for_restore(settings, db)
        try:
            with _TableProgress("restore") as progress:
                progress.start({table.name: manifest.tables[table.name].rows for table in order})
                done = await load(
                    db,
                    opened,
                    replace=replace,
                    actor=cli_actor(),
                    file_label=str(file.resolve()),
                    progress=progress,
                )
        except BackupError as exc:
            raise BackupError(f"{exc}; nothing was written") from exc
        except _database_errors() as exc:
            # One transaction: a row the database refuses (a constraint) undoes everything.
            raise BackupError(f"the database refused a row: {_reason(exc)}; nothing was written") from exc
        erased = await erased_since(db, done.tenants, manifest.created_at)
        return done, await refresh_redis(settings, done.last_seq), erased

    if not as_json:
        _describe(file, manifest)
    try:
        done, redis, erased = _run(settings, work)
    finally:
        opened.close()
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "file": str(file),
                    "kind": manifest.kind,
                    "mode": "replace" if replace else "merge",
                    "tenants": done.tenants,
                    "last_seq": done.last_seq,
                    "cache_cleared": redis is not None,
                    "event_streams_cut": {} if redis is None else redis.streams_cut,
                    "erased_since_file": [{"tenant": t, "customer": c} for t, c in erased],
                    "tables": [
                        {
                            "name": t.name,
                            "in_file": t.in_file,
                            "inserted": t.inserted,
                            "already_present": t.already_present,
                        }
                        for t in done.tables
                    ],
                },
                indent=2,
            )
        )
        return
    print_table(
        "Restored",
        ["Table", "In file", "Inserted", "Already present"],
        [(t.name, t.in_file, t.inserted, t.already_present) for t in done.tables],
        whole=("Table",),
    )
    inserted = sum(t.inserted for t in done.tables)
    note(
        f"{inserted} rows inserted"
        + (f" after removing the data of {', '.join(done.tenants)}" if replace else "")
        + ("; running servers told to drop their caches" if redis is not None else "")
    )
    for tenant_id, customer_id in erased:
        err.print(
            f"[yellow]tenant {tenant_id}: customer {customer_id} was erased after this file was written;"
            f" erase it again: state-manager customers erase --tenant {tenant_id} {customer_id} --yes[/]"
        )
    for tenant_id, (before, after) in (redis.streams_cut if redis is not None else {}).items():
        err.print(
            f"[yellow]tenant {tenant_id}: its event stream went back from {before} to {after}; events are"
            f" numbered from {after + 1} again: consumers past it must resume from {after}[/]"
        )


async def _ready_for_restore(settings: Settings, db: Database) -> None:
    """An empty database is migrated to head; one at another revision must be migrated by its operator."""
    from state_manager.cli.common import ensure_schema
    from state_manager.db.migrate import upgrade_to_head_async

    if not settings.is_embedded_database and await db.schema_revision() is None:
        note(f"migrating the empty database {safe_url(settings.effective_database_url)}")
        await upgrade_to_head_async(settings.effective_database_url)
    await ensure_schema(settings, db)
