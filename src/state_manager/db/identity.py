"""Identity columns: PostgreSQL numbers rows itself; under SQLite's single writer the next free number is
given here (SQLite has no identity column besides a rowid that cannot share a composite primary key)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, func, select
from sqlalchemy.ext.asyncio import AsyncConnection


async def numbered(
    conn: AsyncConnection, column: Column[int], rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """`rows` ready to insert in their order: unchanged on PostgreSQL (the identity numbers them in the
    order of the statement's rows), given the next numbers on SQLite (whose write lock the caller holds)."""
    if conn.dialect.name == "postgresql":
        return rows
    last = (await conn.execute(select(func.coalesce(func.max(column), 0)))).scalar_one()
    return [{**row, column.name: last + offset} for offset, row in enumerate(rows, 1)]
