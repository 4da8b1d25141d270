"""Restoring a backup or archive file: every table in one transaction, nothing written unless every
member's checksum and count hold.

The default puts back the rows that are missing and leaves the others (ON CONFLICT DO NOTHING on the
primary key), so restoring a file twice is restoring it once. `replace` first removes the data of the
file's tenants, in the same transaction, so that they end as the file has them.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
from sqlalchemy import Table, func, literal, literal_column, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.analytics.projector import rebuild_after_restore
from state_manager.audit import service as audit
from state_manager.audit.models import audit_log
from state_manager.backup.format import (
    LONG_STATEMENT_SECONDS,
    BackupError,
    ColumnKind,
    Manifest,
    TableEntry,
    backed_up_tables,
    column_kind,
    load_order,
    see_every_tenant,
    stored_columns,
)
from state_manager.backup.reader import BackupFile
from state_manager.backup.snapshot import AnySelect
from state_manager.db import Database
from state_manager.db.database import dialect_insert
from state_manager.db.migrate import head_revision
from state_manager.db.types import UTCDateTime, utcnow
from state_manager.events.models import event_relay, events
from state_manager.settings import Settings
from state_manager.tenants.models import tenants
from state_manager.tenants.schemas import TENANT_ID_PATTERN

# Older schema revisions whose files this release restores, and why it can: rows are loaded by column
# name, so a file from before a migration that only added tables, or columns that are nullable or have a
# default, loads as it is (`check_restorable` still checks its columns). A migration that changes what a
# value means needs a rewrite of the rows instead, and its predecessors stay out. Every file so far was
# written at the current revision before 0010.
RESTORABLE_REVISIONS: dict[str, str] = {
    "0009": "0010 only added api_keys' nullable rate limit columns (NULL: the settings' default)",
    "0010": "0011 only added a function (sm_pending_work); no table changed",
    "0011": (
        "0012 only replaced an index of conversations, set the table's fillfactor and replaced"
        " sm_pending_work; no column changed"
    ),
}


Progress = Callable[[str, int], None]  # (table, rows of it read so far)


@dataclass
class TableRestored:
    name: str
    in_file: int
    inserted: int = 0
    inserted_by_tenant: Counter[str] = field(default_factory=Counter)

    @property
    def already_present(self) -> int:
        return self.in_file - self.inserted


@dataclass
class Restored:
    tables: list[TableRestored]
    tenants: list[str]  # the tenants of the file that exist after the restore
    last_seq: dict[str, int]  # their event_relay.last_seq after it


def check_restorable(manifest: Manifest, *, replace: bool) -> list[Table]:
    """Whether this release can restore the file, before anything is written; its tables in load order."""
    head = head_revision()
    if manifest.schema_revision != head and manifest.schema_revision not in RESTORABLE_REVISIONS:
        raise BackupError(
            f"the file was written at schema revision {manifest.schema_revision}; this release restores "
            f"revision {head}, and no upgrade of rows from {manifest.schema_revision} is known"
        )
    strange = [tenant for tenant in manifest.tenants if not re.fullmatch(TENANT_ID_PATTERN, tenant)]
    if strange:
        raise BackupError(f"the manifest names tenants that cannot exist: {strange[:5]}")
    if replace and manifest.kind == "archive":
        raise BackupError(
            "--replace removes every row of the file's tenants first; an archive holds only some of them: "
            "restore it without --replace"
        )
    tables = load_order(list(manifest.tables))
    for table in tables:
        entry = manifest.tables[table.name]
        known = {column.name for column in stored_columns(table)}
        unknown = [name for name in entry.columns if name not in known]
        if unknown:
            raise BackupError(f"{table.name}: the file has columns this release does not know: {unknown}")
        missing = [
            column.name
            for column in stored_columns(table)
            if column.name not in entry.columns and not column.nullable and column.server_default is None
        ]
        if missing:
            raise BackupError(f"{table.name}: the file lacks the required columns {missing}")
    return tables


async def restore(
    db: Database,
    file: BackupFile,
    *,
    replace: bool,
    actor: str,
    file_label: str,
    progress: Progress | None = None,
) -> Restored:
    """Loads the file into `db` (migrated to head) in one transaction, and records it in each restored
    tenant's audit log. Raises BackupError, having written nothing, if a check fails."""
    manifest = file.manifest
    tables = check_restorable(manifest, replace=replace)
    results: list[TableRestored] = []
    async with _write_transaction(db) as conn:
        if replace:
            await _keep_audit_log(conn, list(manifest.tenants))
            await _remove_tenants(conn, list(manifest.tenants))
        for table in tables:
            results.append(await _load_table(conn, file, table, manifest.tables[table.name], progress))
        if replace:
            await _put_back_audit_log(conn)
        if db.name == "postgresql":
            await _reset_identities(conn, tables)
        await _relay_after_restore(conn, list(manifest.tenants))
        await rebuild_after_restore(conn, list(manifest.tenants), replaced=replace)
        present = list(
            (await conn.execute(select(tenants.c.id).where(tenants.c.id.in_(manifest.tenants)))).scalars()
        )
        relay = event_relay.c
        numbered = select(relay.tenant_id, relay.last_seq).where(relay.tenant_id.in_(present))
        last_seq = dict.fromkeys(present, 0) | dict((await conn.execute(numbered)).all())
        for tenant_id in sorted(present):
            details = {
                "file": file_label,
                "kind": manifest.kind,
                "created_at": manifest.created_at,
                "mode": "replace" if replace else "merge",
                "inserted": {r.name: r.inserted_by_tenant[tenant_id] for r in results},
            }
            await audit.record(
                conn,
                tenant_id,
                actor=actor,
                action="backup.restored",
                subject_type="tenant",
                subject_id=tenant_id,
                details=details,
            )
    return Restored(results, sorted(present), last_seq)


@asynccontextmanager
async def _write_transaction(db: Database) -> AsyncIterator[AsyncConnection]:
    """PostgreSQL: as the login user, seeing every tenant (`see_every_tenant`); SQLite: BEGIN IMMEDIATE,
    the single writer."""
    if db.name == "postgresql":
        async with db.engine.connect() as conn, conn.begin():
            await see_every_tenant(conn)
            yield conn
    else:
        async with db.transaction(None, write=True) as conn:
            yield conn


async def _driver(conn: AsyncConnection) -> Any:
    return (await conn.get_raw_connection()).driver_connection


def _tenant_column(table: Table) -> str | None:
    if table.name == "tenants":
        return "id"
    return "tenant_id" if "tenant_id" in table.c else None


_KEPT_AUDIT = "sm_restore_kept_audit"


async def _keep_audit_log(conn: AsyncConnection, tenant_ids: Sequence[str]) -> None:
    """The audit log outlives a --replace: it is the record of what was done with the data since the
    backup (an erasure among it, to do again: `erased_since`). Kept aside in a temporary table."""
    kept = select(audit_log).where(audit_log.c.tenant_id.in_(tenant_ids))
    # Tenant IDs are checked against TENANT_ID_PATTERN: safe as literals (DDL takes no parameters).
    compiled = kept.compile(conn, compile_kwargs={"literal_binds": True})
    await conn.execute(text(f"CREATE TEMPORARY TABLE {_KEPT_AUDIT} AS {compiled}"))


async def _put_back_audit_log(conn: AsyncConnection) -> None:
    insert = dialect_insert(conn.dialect.name)
    columns = [column.name for column in audit_log.c]
    # WHERE true: SQLite cannot parse INSERT … SELECT … ON CONFLICT without a WHERE in the SELECT.
    kept: AnySelect = (
        select(*(literal_column(name) for name in columns)).select_from(text(_KEPT_AUDIT)).where(text("true"))
    )
    statement = insert(audit_log).from_select(columns, kept).on_conflict_do_nothing()
    await conn.execute(statement)
    await conn.execute(text(f"DROP TABLE {_KEPT_AUDIT}"))


async def erased_since(db: Database, tenant_ids: Sequence[str], since: str) -> list[tuple[str, str]]:
    """(tenant, customer) of the erasures recorded after `since` (a backup's created_at): a restore of an
    older file brought their data back, and they must be erased again."""
    moment = dt.datetime.fromisoformat(since)
    a = audit_log.c
    query = (
        select(a.tenant_id, a.subject_id)
        .where(a.tenant_id.in_(tenant_ids), a.action == "customer.erased", a.occurred_at > moment)
        .order_by(a.tenant_id, a.occurred_at)
    )
    async with _write_transaction(db) as conn:
        return [(tenant, str(customer)) for tenant, customer in (await conn.execute(query))]


async def _remove_tenants(conn: AsyncConnection, tenant_ids: Sequence[str]) -> None:
    """Every row of these tenants, children first (conversations do not cascade from customers)."""
    if not tenant_ids:
        return
    for table in reversed(backed_up_tables()):
        column = _tenant_column(table)
        if column is None:
            continue
        if conn.dialect.name == "postgresql":
            driver = await _driver(conn)
            await driver.execute(
                f"DELETE FROM {_quote(conn, table.name)} WHERE {column} = ANY($1::text[])",
                list(tenant_ids),
                timeout=LONG_STATEMENT_SECONDS,
            )
        else:
            await conn.execute(table.delete().where(table.c[column].in_(tenant_ids)))


def _quote(conn: AsyncConnection, name: str) -> str:
    quoted: str = conn.dialect.identifier_preparer.quote(name)
    return quoted


async def _load_table(
    conn: AsyncConnection, file: BackupFile, table: Table, entry: TableEntry, progress: Progress | None
) -> TableRestored:
    result = TableRestored(table.name, entry.rows)
    load = _load_postgres if conn.dialect.name == "postgresql" else _load_sqlite
    try:
        await load(conn, file, table, entry, result, progress)
    except (DBAPIError, asyncpg.PostgresError) as exc:
        raise BackupError(f"{table.name}: the database refused a row ({database_reason(exc)})") from exc
    return result


def database_reason(exc: Exception) -> str:
    """The database's message, with PostgreSQL's detail (which key, which row) when it gives one."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip()
    reason = text.splitlines()[0] if text else type(cause).__name__
    detail = getattr(cause, "detail", None)
    return f"{reason}: {detail}" if isinstance(detail, str) and detail else reason


async def _load_postgres(
    conn: AsyncConnection,
    file: BackupFile,
    table: Table,
    entry: TableEntry,
    result: TableRestored,
    progress: Progress | None,
) -> None:
    """Each block of lines goes as one jsonb array into one INSERT … SELECT: PostgreSQL parses and casts
    the values (on its own core), Python only reads and checks the file."""
    driver = await _driver(conn)
    statement = _postgres_insert(conn, table, entry.columns)
    read = 0
    async for block in file.blocks_async(entry):
        payload = b"[" + b",".join(block) + b"]"
        for tenant_id, count in await driver.fetch(
            statement, payload.decode(), timeout=LONG_STATEMENT_SECONDS
        ):
            result.inserted += count
            if tenant_id is not None:
                result.inserted_by_tenant[tenant_id] += count
        read += len(block)
        if progress is not None:
            progress(table.name, read)


def _postgres_insert(conn: AsyncConnection, table: Table, columns: Sequence[str]) -> str:
    values = []
    for index, name in enumerate(columns):
        column = table.c[name]
        kind = column_kind(column)
        if kind == "text":
            values.append(f"r->>{index}")
        elif kind == "json":
            values.append(f"r->{index}")
        else:
            values.append(f"(r->>{index})::{column.type.compile(conn.dialect)}")
    names = ", ".join(_quote(conn, name) for name in columns)
    keys = ", ".join(_quote(conn, column.name) for column in table.primary_key.columns)
    tenant = _tenant_column(table)
    returned = _quote(conn, tenant) if tenant is not None and tenant in columns else "NULL::text"
    return (
        f"WITH inserted AS (INSERT INTO {_quote(conn, table.name)} ({names})"
        f" SELECT {', '.join(values)} FROM jsonb_array_elements($1::jsonb) AS r"
        f" ON CONFLICT ({keys}) DO NOTHING RETURNING {returned} AS tenant_id)"
        " SELECT tenant_id, count(*) FROM inserted GROUP BY tenant_id"
    )


def _sqlite_datetime(value: str) -> str:
    """A canonical datetime as SQLAlchemy stores it on SQLite: naive UTC with microseconds."""
    if len(value) == 32 and value.endswith("+00:00"):
        return f"{value[:10]} {value[11:26]}"
    moment = dt.datetime.fromisoformat(value).astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


# From canonical values to what SQLAlchemy's types store on SQLite (UUIDs as 32 hex digits).
_TO_SQLITE: dict[ColumnKind, Callable[[Any], Any]] = {
    "uuid": lambda value: value.replace("-", ""),
    "datetime": _sqlite_datetime,
}


async def _load_sqlite(
    conn: AsyncConnection,
    file: BackupFile,
    table: Table,
    entry: TableEntry,
    result: TableRestored,
    progress: Progress | None,
) -> None:
    kinds = [column_kind(table.c[name]) for name in entry.columns]
    conversions = [(i, _TO_SQLITE[kind]) for i, kind in enumerate(kinds) if kind in _TO_SQLITE]
    # JSON documents as JSON text, null included (what SQLAlchemy's JSON type stores for None).
    documents = [i for i, kind in enumerate(kinds) if kind == "json"]
    names = ", ".join(_quote(conn, name) for name in entry.columns)
    keys = ", ".join(_quote(conn, column.name) for column in table.primary_key.columns)
    statement = (
        f"INSERT INTO {_quote(conn, table.name)} ({names}) VALUES ({', '.join('?' * len(entry.columns))})"
        f" ON CONFLICT ({keys}) DO NOTHING"
    )
    tenant = _tenant_column(table)
    tenant_index = entry.columns.index(tenant) if tenant is not None and tenant in entry.columns else None
    read = 0
    async for block in file.blocks_async(entry):
        rows = []
        for line in block:
            values = orjson.loads(line)
            for index, convert in conversions:
                if values[index] is not None:
                    values[index] = convert(values[index])
            for index in documents:
                values[index] = orjson.dumps(values[index]).decode()
            rows.append(tuple(values))
        # Rows come in primary-key order, tenant first: one statement per run of one tenant's rows.
        for tenant_id, run in itertools.groupby(
            rows, key=(lambda row: row[tenant_index]) if tenant_index is not None else (lambda row: None)
        ):
            inserted = (await conn.exec_driver_sql(statement, list(run))).rowcount
            result.inserted += inserted
            if tenant_id is not None:
                result.inserted_by_tenant[tenant_id] += inserted
        read += len(block)
        if progress is not None:
            progress(table.name, read)


async def _reset_identities(conn: AsyncConnection, tables: Sequence[Table]) -> None:
    """Identity sequences (events.id) moved past the restored numbers, or the next insert would collide."""
    driver = await _driver(conn)
    for table in tables:
        for column in table.columns:
            if column.identity is None:
                continue
            sequence = await driver.fetchval("SELECT pg_get_serial_sequence($1, $2)", table.name, column.name)
            await driver.execute(
                f"SELECT setval($1::regclass, s.top) FROM (SELECT max({_quote(conn, column.name)}) AS top"
                f" FROM {_quote(conn, table.name)}) AS s"
                " WHERE s.top > coalesce(pg_sequence_last_value($1::regclass), 0)",
                sequence,
            )


async def _relay_after_restore(conn: AsyncConnection, tenant_ids: Sequence[str]) -> None:
    """The relay numbers a tenant's events after event_relay.last_seq: it must not be below a restored
    event's number (an archive or a tenant's file restored where the relay had not got that far)."""
    if not tenant_ids:
        return
    e = events.c
    top = (
        select(e.tenant_id, func.max(e.seq), literal(utcnow(), UTCDateTime()))
        .where(e.tenant_id.in_(tenant_ids), e.seq.is_not(None))
        .group_by(e.tenant_id)
    )
    insert = dialect_insert(conn.dialect.name)(event_relay).from_select(
        ["tenant_id", "last_seq", "updated_at"], top
    )
    await conn.execute(
        insert.on_conflict_do_update(
            index_elements=["tenant_id"],
            set_={"last_seq": insert.excluded.last_seq, "updated_at": insert.excluded.updated_at},
            where=event_relay.c.last_seq < insert.excluded.last_seq,
        )
    )


@dataclass
class RedisRefreshed:
    cache_generation: int
    streams_cut: dict[str, tuple[int, int]]  # tenant: (the stream's last event before, after)


async def refresh_redis(settings: Settings, last_seq: dict[str, int]) -> RedisRefreshed | None:
    """After a restore, what Redis holds must not contradict the database (None without Redis: nothing
    shared to reach; restart an embedded server instead).

    - The cache: the restored tenants' entries are deleted, so that no process reads them from Redis
      after this returns; and a new generation (as after a Redis outage, cache/shared.py) makes every
      process clear its local tier as it hears of it (within the bound other writes have, docs/design.md).
    - The tenants' event streams: entries numbered past the restored event_relay.last_seq (a tenant brought
      back to an earlier point) are removed, or the relay's next events, numbered from there, would be
      refused as already there (events/bus.py). Those numbers are given again to other events: consumer
      groups past them are moved back to last_seq; consumers that keep their own position must do so.
    """
    if not settings.redis_url:
        return None
    from redis.asyncio import Redis

    from state_manager.cache.shared import GENERATION_CHANNEL, GENERATION_KEY, tenant_prefix
    from state_manager.events.bus import stream_key

    client = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        for tenant_id in last_seq:
            # Entries are `<tenant prefix>:g<generation>:…`; tenant IDs hold no glob character.
            async for found in client.scan_iter(match=f"{tenant_prefix(tenant_id)}:g*", count=1000):
                await client.delete(found)
        # INCR and PUBLISH in one script: a process must hear of the generation it will read.
        generation = await client.eval(
            "local g = redis.call('INCR', KEYS[1]) redis.call('PUBLISH', ARGV[1], g) return g",
            1,
            GENERATION_KEY,
            GENERATION_CHANNEL,
        )
        cut = {}
        for tenant_id, last in last_seq.items():
            key = stream_key(tenant_id)
            top = await client.xrevrange(key, count=1)
            if not top or _entry_seq(top[0][0]) <= last:
                continue
            while beyond := await client.xrange(key, min=f"{last + 1}-0", count=1000):
                await client.xdel(key, *[entry_id for entry_id, _ in beyond])
            # XADD refuses IDs at or below the last one ever added, deleted or not: set it back, and the
            # consumer groups' positions with it, so that they read the events numbered next.
            position = f"{last}-1" if last else "0-1"
            await client.execute_command("XSETID", key, position)
            for group in await client.xinfo_groups(key):
                if _entry_seq(group["last-delivered-id"]) > last:
                    await client.xgroup_setid(key, group["name"], position)
            cut[tenant_id] = (_entry_seq(top[0][0]), last)
    finally:
        await client.aclose()
    return RedisRefreshed(int(generation), cut)


def _entry_seq(entry_id: bytes | str) -> int:
    """The event number of a stream entry ID (`<seq>-1`, events/bus.py)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])
