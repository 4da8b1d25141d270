"""Statements run on a harness server's database as its owner, around the service: to age rows (time
travel for jobs that act on old data), or to look at what no API shows. On PostgreSQL the owner bypasses
row-level security, so a test can see every tenant's rows."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Executable
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from harness import Server, _in_thread


def owner_execute(server: Server | str, *statements: Executable) -> list[list[Any]]:
    """Runs the statements in one transaction on the server's database (or this database URL); returns
    each one's rows (empty for writes)."""
    url = server if isinstance(server, str) else server.env["DATABASE_URL"]

    async def run() -> list[list[Any]]:
        engine = create_async_engine(
            url, poolclass=NullPool, connect_args={"timeout": 30} if url.startswith("sqlite") else {}
        )
        try:
            async with engine.begin() as conn:
                found = []
                for statement in statements:
                    result = await conn.execute(statement)
                    found.append(list(result.mappings()) if result.returns_rows else [])
                return found
        finally:
            await engine.dispose()

    return _in_thread(run())
