"""The backup file: what it holds and how a row is written, the same on PostgreSQL and SQLite.

One ZIP file: `tables/<table>.jsonl` per table, then `manifest.json`. ZIP rather than tar+gzip/zstd because
a member can be streamed without knowing its size first (tar's header needs it, so each table would have
to be spooled to disk), the manifest written last is still found at once through the central directory,
a file cut short has no central directory and is refused as a whole, and `unzip -p FILE tables/x.jsonl`
reads it anywhere. Members are deflated (the standard library; zstd in ZIP is not) and always ZIP64, so
a table may exceed 4 GiB.

A table's member holds one JSON array per row, values in the manifest's column order, rows in primary-key
order (text compared byte by byte, as COLLATE "C"). Values are canonical, so that the SHA-256 of a table's
JSON lines is equal for equal data whichever database it came from or went through:
- UUIDs as lowercase hyphenated strings; datetimes as ISO-8601 UTC with microseconds
  (`2026-11-25T04:42:20.185805+00:00`); JSON documents with sorted keys; booleans, numbers, text as JSON.
- Computed columns (messages.status) are left out: the database derives them again.
- Identity columns (events.id) are kept: events are ordered by them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import orjson
from sqlalchemy import JSON, Boolean, Column, Float, Integer, String, Table, Uuid, text
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.db.metadata import metadata
from state_manager.db.types import UTCDateTime

FORMAT_NAME = "state-manager-backup"
FORMAT_VERSION = 1
MANIFEST_MEMBER = "manifest.json"
UTC = dt.UTC
# A whole table streamed by one COPY, a block of rows inserted, a large tenant removed: far beyond the
# service's 30 s statement timeout.
LONG_STATEMENT_SECONDS = 3600.0

Kind = Literal["backup", "archive"]
ColumnKind = Literal["text", "int", "float", "bool", "uuid", "datetime", "json"]

# Operational state of the running installation, not data: job_leases says which instance runs a job
# until when; restored elsewhere it would keep a job from running until a dead holder's lease expired.
# The analytics projection is derived from the other tables: a restore has it rebuilt
# (analytics/projector.py).
EXCLUDED_TABLES = frozenset(
    {
        "job_leases",
        "analytics_facts",
        "analytics_failures",
        "analytics_conversations",
        "analytics_agent_sessions",
        "analytics_agent_involvement",
        "analytics_progress",
    }
)


class BackupError(Exception):
    """A file that cannot be written, verified or restored; the message says why."""


async def see_every_tenant(conn: AsyncConnection) -> None:
    """On PostgreSQL, in the transaction just begun: every tenant's rows, or a clear refusal. The login
    user (not the service's app role, which sees no tenant's rows without app.tenant_id) must bypass
    row-level security, as pg_dump's must; row_security = off makes any statement a policy would still
    filter fail instead of silently seeing nothing."""
    bypasses = await conn.scalar(
        text("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user")
    )
    if not bypasses:
        user = await conn.scalar(text("SELECT current_user"))
        raise BackupError(
            f"the database user {user} cannot see every tenant's rows (row-level security): back up and "
            f"restore as a superuser, or give it BYPASSRLS (ALTER ROLE {user} BYPASSRLS)"
        )
    await conn.execute(text("SET LOCAL row_security = off"))


def member_name(table_name: str) -> str:
    return f"tables/{table_name}.jsonl"


def stored_columns(table: Table) -> list[Column[Any]]:
    """The columns a file holds: all but the computed ones."""
    return [column for column in table.columns if column.computed is None]


def column_kind(column: Column[Any]) -> ColumnKind:
    """How a column's values are written. An unknown type stops the backup: its canonical form must be
    decided (and tested on both databases) before it can be written."""
    kind = column.type
    if isinstance(kind, UTCDateTime):
        return "datetime"
    if isinstance(kind, Uuid):
        return "uuid"
    if isinstance(kind, JSON):
        return "json"
    if isinstance(kind, Boolean):
        return "bool"
    if isinstance(kind, Integer):
        return "int"
    if isinstance(kind, Float):
        # A JSON number as PostgreSQL's json writes a double: integral ones without a fraction ("5", not
        # "5.0"), others in the shortest form that reads back the same, as Python's and orjson's do.
        return "float"
    if isinstance(kind, String):
        return "text"
    raise BackupError(f"{column.table.name}.{column.name}: no canonical form for the type {kind!r}")


def backed_up_tables() -> list[Table]:
    """Every table of the schema a backup holds, parents before children (the order of a restore)."""
    import state_manager.db.tables  # noqa: F401  (fills the metadata)

    return [table for table in metadata.sorted_tables if table.name not in EXCLUDED_TABLES]


def table_named(name: str) -> Table:
    for table in backed_up_tables():
        if table.name == name:
            return table
    raise BackupError(f"the file holds a table this release does not know: {name!r}")


def load_order(names: Sequence[str]) -> list[Table]:
    """The named tables in the order they can be loaded in (parents first)."""
    wanted = set(names)
    unknown = wanted - {table.name for table in backed_up_tables()}
    if unknown:
        raise BackupError(f"the file holds tables this release does not know: {', '.join(sorted(unknown))}")
    return [table for table in backed_up_tables() if table.name in wanted]


# --- Canonical values ----------------------------------------------------------------------------------


def canonical_datetime(moment: dt.datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def encode_lines(rows: Sequence[list[Any]]) -> bytes:
    """Rows already in canonical values (strings for UUIDs and datetimes), as JSON lines."""
    dumps, sort = orjson.dumps, orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE
    return b"".join([dumps(row, option=sort) for row in rows])


Converter = Callable[[list[Any]], None]


def converter(kinds: Sequence[ColumnKind], convert: dict[ColumnKind, Callable[[Any], Any]]) -> Converter:
    """A function turning one row (a list, changed in place) into canonical values: `convert` gives the
    conversion of each kind that needs one; None stays None."""
    steps = [(index, convert[kind]) for index, kind in enumerate(kinds) if kind in convert]

    def apply(values: list[Any]) -> None:
        for index, step in steps:
            value = values[index]
            if value is not None:
                values[index] = step(value)

    return apply


# --- Manifest ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableEntry:
    name: str
    member: str
    columns: tuple[str, ...]
    rows: int
    sha256: str  # of the member's uncompressed bytes


@dataclass(frozen=True)
class Manifest:
    format_version: int
    kind: Kind
    schema_revision: str  # the Alembic revision of the database it was taken from
    created_at: str
    source_dialect: str
    tenant: str | None  # the one tenant it was taken for; None: every tenant
    tenants: tuple[str, ...]  # the tenants it holds rows of
    tables: dict[str, TableEntry]  # by name, in the order of the file

    def to_json(self) -> bytes:
        document = {"format": FORMAT_NAME, **asdict(self)}
        document["tables"] = list(document["tables"].values())
        return orjson.dumps(document, option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            document = orjson.loads(data)
            if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
                raise BackupError("not a state-manager backup (its manifest names no known format)")
            version = document["format_version"]
            if not isinstance(version, int) or version > FORMAT_VERSION:
                raise BackupError(
                    f"the file is in format version {version}; this release reads up to {FORMAT_VERSION}: "
                    "restore it with a newer state-manager"
                )
            entries = [
                TableEntry(
                    name=str(entry["name"]),
                    member=str(entry["member"]),
                    columns=tuple(str(name) for name in entry["columns"]),
                    rows=int(entry["rows"]),
                    sha256=str(entry["sha256"]),
                )
                for entry in document["tables"]
            ]
            tables = {entry.name: entry for entry in entries}
            if len(tables) != len(entries):
                raise BackupError("the manifest names a table twice")
            kind = document["kind"]
            if kind not in ("backup", "archive"):
                raise BackupError(f"unknown kind of file {kind!r}")
            return cls(
                format_version=version,
                kind=kind,
                schema_revision=str(document["schema_revision"]),
                created_at=str(document["created_at"]),
                source_dialect=str(document["source_dialect"]),
                tenant=None if document["tenant"] is None else str(document["tenant"]),
                tenants=tuple(str(tenant) for tenant in document["tenants"]),
                tables=tables,
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise BackupError(f"the manifest is damaged ({type(exc).__name__}: {exc})") from exc
