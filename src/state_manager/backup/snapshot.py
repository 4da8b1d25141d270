"""Writing backup and archive files: rows streamed from one transaction into one ZIP file, renamed into
place only once complete (format.py says what the file holds)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import os
import tempfile
import uuid
import zipfile
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import IO, Any

import orjson
from sqlalchemy import Select, Table, Text, func, select, text, type_coerce
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import NullType

from state_manager.backup.format import (
    FORMAT_VERSION,
    LONG_STATEMENT_SECONDS,
    MANIFEST_MEMBER,
    BackupError,
    ColumnKind,
    Kind,
    Manifest,
    TableEntry,
    backed_up_tables,
    canonical_datetime,
    column_kind,
    converter,
    encode_lines,
    member_name,
    see_every_tenant,
    stored_columns,
)
from state_manager.db import Database
from state_manager.db.types import utcnow
from state_manager.tenants.models import tenants

# Rows fetched, encoded and compressed at a time: large enough that per-chunk costs vanish, small enough
# that memory stays a few megabytes whatever the table's size.
CHUNK_ROWS = 5000
# Deflate level 1: 2.6 times faster than the default 6 here, for a file 11 % larger (docs/benchmarks.md).
COMPRESS_LEVEL = 1
COPY_TIMEOUT_SECONDS = 24 * 3600.0

AnySelect = Select[*tuple[Any, ...]]  # any select, whatever its columns
Progress = Callable[[str, int], None]  # (table, rows written of it so far)


async def write_snapshot(
    conn: AsyncConnection,
    path: Path,
    parts: Sequence[tuple[Table, AnySelect]],
    *,
    kind: Kind,
    tenant_id: str | None,
    progress: Progress | None = None,
) -> Manifest:
    """Writes the rows each select picks into a backup-format file at `path`, reading through `conn` in
    the transaction the caller holds (so the file is one consistent view if that transaction is), and
    returns its manifest (`manifest.tables[name].rows`: the rows written of a table). `state-manager
    restore FILE` restores it (an archive in the default mode, which puts back the rows that are missing).

    - `parts`: (table, select) pairs, at most one per table; each select returns the table's rows (`select
      (table).where(…)`: its columns by name). Rows are written in primary-key order, whatever the
      select's own order.
    - The file is written under a temporary name in the same directory (created if missing, mode 0700),
      fsynced, then renamed to `path`; a failure leaves no file at `path` (an existing one is replaced only
      on success). The file is readable by its owner only: it holds personal data.
    - `tenant_id`: the tenant the file is about (None: any); the manifest also lists every tenant it holds
      rows of.
    - On PostgreSQL the transaction must see the rows: with the app role, only the tenant set for it.

    Raises BackupError if a table cannot be written (unknown column type, a select without the table's
    columns, the database not migrated).
    """
    names = [table.name for table, _ in parts]
    if len(set(names)) != len(names):
        raise BackupError(f"a table is named twice in {names}")
    revision = await _schema_revision(conn)
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            with zipfile.ZipFile(file, "w", zipfile.ZIP_DEFLATED, compresslevel=COMPRESS_LEVEL) as archive:
                entries: dict[str, TableEntry] = {}
                held: set[str] = set()
                for table, selection in parts:
                    entries[table.name] = await _write_table(conn, archive, table, selection, held, progress)
                manifest = Manifest(
                    format_version=FORMAT_VERSION,
                    kind=kind,
                    schema_revision=revision,
                    created_at=canonical_datetime(utcnow()),
                    source_dialect=conn.dialect.name,
                    tenant=tenant_id,
                    tenants=tuple(sorted(held)),
                    tables=entries,
                )
                archive.writestr(MANIFEST_MEMBER, manifest.to_json())
            file.flush()
            await asyncio.to_thread(os.fsync, file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_directory(path.parent)
    return manifest


async def _schema_revision(conn: AsyncConnection) -> str:
    revision = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    if revision is None:
        raise BackupError("the database has no schema revision: it was never migrated")
    return str(revision)


def _fsync_directory(directory: Path) -> None:
    """Makes the rename durable: a crash after it must not bring back the old name."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class _Member:
    """One table's member: hashed and compressed in a worker thread (zlib and hashlib release the GIL),
    so that compressing a chunk overlaps with reading and encoding the next one."""

    def __init__(self, archive: zipfile.ZipFile, name: str) -> None:
        self._stream: IO[bytes] = archive.open(name, "w", force_zip64=True)
        self._sha = hashlib.sha256()
        self._pending: asyncio.Future[None] | None = None

    def _write(self, data: bytes) -> None:
        self._sha.update(data)
        self._stream.write(data)

    async def write(self, data: bytes) -> None:
        if self._pending is not None:
            await self._pending
        self._pending = asyncio.ensure_future(asyncio.to_thread(self._write, data))

    async def close(self) -> str:
        try:
            if self._pending is not None:
                await self._pending
        finally:
            await asyncio.to_thread(self._stream.close)
        return self._sha.hexdigest()


async def _write_table(
    conn: AsyncConnection,
    archive: zipfile.ZipFile,
    table: Table,
    selection: AnySelect,
    held: set[str],
    progress: Progress | None,
) -> TableEntry:
    columns = stored_columns(table)
    tenant_index = _tenant_column_index(table, [column.name for column in columns])
    member = _Member(archive, member_name(table.name))
    count = 0
    try:
        # Closed on error too: a COPY still running would make the rollback fail and hide the error.
        async with contextlib.aclosing(_canonical_rows(conn, table, selection)) as blocks:
            async for rows in blocks:
                if tenant_index is not None:
                    held.update(row[tenant_index] for row in rows if row[tenant_index] is not None)
                await member.write(encode_lines(rows))
                count += len(rows)
                if progress is not None:
                    progress(table.name, count)
    finally:
        digest = await member.close()
    return TableEntry(
        name=table.name,
        member=member_name(table.name),
        columns=tuple(column.name for column in columns),
        rows=count,
        sha256=digest,
    )


def _tenant_column_index(table: Table, names: list[str]) -> int | None:
    if table.name == "tenants":
        return names.index("id")
    return names.index("tenant_id") if "tenant_id" in names else None


# PostgreSQL writes each row as a JSON array itself, datetimes in their canonical text: in C, on its own
# core. What it cannot make canonical (the order of keys in JSON documents) is done by one orjson round trip.
_PG_CANONICAL_DATETIME = 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'


def ordered_select(table: Table, selection: AnySelect, dialect: str) -> AnySelect:
    """The select's rows in primary-key order, text compared byte by byte on both databases. PostgreSQL:
    one column, the row as a JSON array; SQLite: the stored values as the driver gives them (without
    SQLAlchemy's conversions: `_sqlite_rows` makes them canonical)."""
    subquery = selection.subquery()
    missing = [column.name for column in stored_columns(table) if column.name not in subquery.c]
    if missing:
        raise BackupError(f"the select for {table.name} lacks its columns {missing}")
    outputs: list[Any] = []
    for column in stored_columns(table):
        source = subquery.c[column.name]
        kind = column_kind(column)
        if dialect == "postgresql":
            if kind == "datetime":
                outputs.append(func.to_char(func.timezone("UTC", source), _PG_CANONICAL_DATETIME))
            else:
                outputs.append(source)
        else:
            outputs.append(type_coerce(source, Text if kind == "json" else NullType()).label(column.name))
    order = []
    for column in table.primary_key.columns:
        key = subquery.c[column.name]
        order.append(key.collate("C") if dialect == "postgresql" and column_kind(column) == "text" else key)
    if dialect == "postgresql":
        return select(func.json_build_array(*outputs)).order_by(*order)
    return select(*outputs).order_by(*order)


async def _canonical_rows(
    conn: AsyncConnection, table: Table, selection: AnySelect
) -> AsyncGenerator[list[list[Any]]]:
    """The rows in canonical values (format.py), in blocks of about CHUNK_ROWS."""
    statement = ordered_select(table, selection, conn.dialect.name)
    rows = (
        _postgres_rows(conn, statement)
        if conn.dialect.name == "postgresql"
        else _sqlite_rows(conn, table, statement)
    )
    async with contextlib.aclosing(rows):
        async for block in rows:
            yield block


async def _on_driver(conn: AsyncConnection, statement: AnySelect) -> tuple[str, Any]:
    """The statement as SQL with its values in it, and the connection's own asyncpg connection (in the
    same transaction) to run it on: COPY takes no parameters, and the driver takes a per-statement timeout
    longer than the service's. SQLAlchemy's literal rendering quotes the values."""
    sql = str(statement.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None
    return sql, driver


async def _postgres_rows(conn: AsyncConnection, statement: AnySelect) -> AsyncGenerator[list[list[Any]]]:
    """COPY (SELECT json_build_array(…) …) TO STDOUT on the connection's own asyncpg connection (in its
    transaction): PostgreSQL streams without a round trip per batch."""
    sql, driver = await _on_driver(conn, statement)
    received: asyncio.Queue[list[bytes] | None] = asyncio.Queue(maxsize=8)
    rest = b""

    async def sink(data: bytes) -> None:
        nonlocal rest
        lines = (rest + data).split(b"\n")
        rest = lines.pop()
        if lines:
            await received.put(lines)

    async def copy() -> None:
        try:
            # The timeout covers the whole table, waits for the disk included: a day, not an hour.
            await driver.copy_from_query(sql, output=sink, timeout=COPY_TIMEOUT_SECONDS)
        finally:
            await received.put(None)

    task = asyncio.ensure_future(copy())
    loads = orjson.loads
    try:
        block: list[list[Any]] = []
        while (lines := await received.get()) is not None:
            # COPY's text format doubles backslashes, the only escape it applies here: the JSON text of
            # a row holds no control character.
            block.extend([loads(line.replace(b"\\\\", b"\\")) for line in lines])
            if len(block) >= CHUNK_ROWS:
                yield block
                block = []
        await task  # its error, if it failed
        if block:
            yield block
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            # The driver cannot roll back while it thinks the COPY runs ("another operation is in
            # progress"), which would replace the error being raised: the connection is dropped instead,
            # and the server ends the transaction with it.
            await conn.invalidate()


def _sqlite_uuid(value: str) -> str:
    if len(value) == 32:
        return f"{value[:8]}-{value[8:12]}-{value[12:16]}-{value[16:20]}-{value[20:]}"
    return str(uuid.UUID(value))


def _sqlite_datetime(value: str) -> str:
    # Stored by SQLAlchemy as naive UTC "YYYY-MM-DD HH:MM:SS.ffffff".
    if len(value) == 26 and value[10] == " ":
        return f"{value[:10]}T{value[11:]}+00:00"
    return canonical_datetime(dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC))


def _sqlite_json(value: str | float) -> Any:
    # A column declared JSON has NUMERIC affinity in SQLite: a JSON number comes back as a number.
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _canonical_float(value: float) -> float | int:
    return int(value) if float(value).is_integer() else float(value)


# From what SQLite stores to the canonical values (format.py).
_FROM_SQLITE: dict[ColumnKind, Callable[[Any], Any]] = {
    "float": _canonical_float,
    "uuid": _sqlite_uuid,
    "datetime": _sqlite_datetime,
    "json": _sqlite_json,
    "bool": bool,
}


async def _sqlite_rows(
    conn: AsyncConnection, table: Table, statement: AnySelect
) -> AsyncGenerator[list[list[Any]]]:
    canonical = converter([column_kind(c) for c in stored_columns(table)], _FROM_SQLITE)
    result = await conn.stream(statement.execution_options(yield_per=CHUNK_ROWS))
    async for partition in result.partitions():
        rows = [list(row) for row in partition]
        for row in rows:
            canonical(row)
        yield rows


# --- Backups -------------------------------------------------------------------------------------------


def backup_parts(tenant_id: str | None) -> list[tuple[Table, AnySelect]]:
    """What a backup holds: every table (but the operational ones, format.EXCLUDED_TABLES); for one tenant,
    its row, its organization, its API keys (hashes only: keys are never stored) and its rows of every
    tenant table."""
    parts: list[tuple[Table, AnySelect]] = []
    for table in backed_up_tables():
        selection = select(table)
        if tenant_id is not None:
            if table.name == "organizations":
                organization = select(tenants.c.organization_id).where(tenants.c.id == tenant_id)
                selection = selection.where(table.c.id == organization.scalar_subquery())
            elif table.name == "tenants":
                selection = selection.where(table.c.id == tenant_id)
            elif "tenant_id" in table.c:
                selection = selection.where(table.c.tenant_id == tenant_id)
            else:
                raise BackupError(f"nothing says which rows of {table.name} belong to a tenant")
        parts.append((table, selection))
    return parts


async def count_rows(conn: AsyncConnection, parts: Sequence[tuple[Table, AnySelect]]) -> dict[str, int]:
    """How many rows each select picks (for a progress bar), in the caller's transaction."""
    counts = {}
    for table, selection in parts:
        query = select(func.count()).select_from(selection.subquery())
        if conn.dialect.name == "postgresql":
            # Past the service's 30 s statement timeout on a large table: through the driver, like COPY.
            sql, driver = await _on_driver(conn, query)
            counts[table.name] = int(await driver.fetchval(sql, timeout=LONG_STATEMENT_SECONDS))
        else:
            counts[table.name] = int((await conn.execute(query)).scalar_one())
    return counts


@contextlib.asynccontextmanager
async def snapshot(db: Database) -> AsyncIterator[AsyncConnection]:
    """One read-only transaction that sees every tenant as of one instant.

    PostgreSQL: REPEATABLE READ READ ONLY, as the login user (`see_every_tenant`: never an empty backup
    for want of rights). SQLite: one read transaction (a WAL snapshot; writers go on meanwhile).
    """
    if db.name == "postgresql":
        async with db.engine.connect() as conn:
            await conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            async with conn.begin():
                await see_every_tenant(conn)
                yield conn
    else:
        async with db.transaction(None, write=False) as conn:
            yield conn


async def take_backup(
    db: Database,
    path: Path,
    *,
    tenant_id: str | None,
    on_counts: Callable[[dict[str, int]], None] | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """`state-manager backup`: every table (or one tenant's rows) as of one instant, into `path`."""
    parts = backup_parts(tenant_id)
    async with snapshot(db) as conn:
        if tenant_id is not None:
            found = (await conn.execute(select(tenants.c.id).where(tenants.c.id == tenant_id))).first()
            if found is None:
                raise BackupError(f"tenant {tenant_id!r} not found")
        if on_counts is not None:
            on_counts(await count_rows(conn, parts))
        return await write_snapshot(conn, path, parts, kind="backup", tenant_id=tenant_id, progress=progress)
