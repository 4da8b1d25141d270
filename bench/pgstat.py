"""PostgreSQL's own counters for the benchmark's database over a window (pg_stat_database).

They show what a request costs the database: transactions committed and rolled back, rows written and
read, and new sessions (connections opened: a pool that keeps opening connections under load shows up
here). PostgreSQL flushes these counters about once a second, so they are approximate at the edges.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

COUNTERS = (
    "sessions",
    "xact_commit",
    "xact_rollback",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
    "tup_fetched",
    "tup_returned",
    "deadlocks",
    "conflicts",
)


async def _read(dsn: str, databases: list[str]) -> dict[str, int]:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        row = await conn.fetchrow(
            "SELECT "
            + ", ".join(f"sum({c})::bigint AS {c}" for c in COUNTERS)
            + " FROM pg_stat_database WHERE datname = ANY($1::text[])",
            databases,
        )
    finally:
        await conn.close()
    assert row is not None  # an aggregate always answers one row
    return {c: int(row[c] or 0) for c in COUNTERS}


def read(dsn: str | None, databases: set[str] | None) -> dict[str, int] | None:
    """The counters now, or None when there is no database to ask about or it cannot be reached."""
    if not dsn or not databases:
        return None
    try:
        return asyncio.run(_read(dsn, sorted(databases)))
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return None


def delta(first: dict[str, int] | None, second: dict[str, int] | None) -> dict[str, Any]:
    if first is None or second is None:
        return {}
    return {c: second[c] - first[c] for c in COUNTERS}
