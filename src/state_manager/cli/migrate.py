"""`state-manager migrate`: bring the database schema to the newest revision."""

from __future__ import annotations

import asyncio
import logging

from state_manager.cli.common import fail, load_settings, note, out, safe_url


def migrate() -> None:
    """Upgrade the schema of DATABASE_URL to the newest revision (Alembic), and print from/to.

    Needed once per release on PostgreSQL before `serve` (which refuses an old schema); the embedded SQLite
    default migrates itself on start. On PostgreSQL it also creates the role the service works as, so run it
    as the database owner. Running it again at the newest revision changes nothing.
    """
    from alembic.util import CommandError
    from sqlalchemy.exc import DBAPIError

    from state_manager.db.migrate import head_revision, upgrade_to_head

    settings = load_settings()
    url = settings.effective_database_url
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("alembic.runtime.migration").setLevel(logging.INFO)
    head = head_revision()
    note(f"database: {safe_url(url)}")
    try:
        before = asyncio.run(current_revision(url))
        if before == head:
            out.print(f"already at the newest revision {head}")
            return
        upgrade_to_head(url)
        after = asyncio.run(current_revision(url))
    except (DBAPIError, OSError, CommandError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        fail(f"migration of {safe_url(url)} failed: {reason[0] if reason else type(exc).__name__}")
    out.print(f"migrated from {before or 'none'} to {after}")


async def current_revision(url: str) -> str | None:
    """The revision stamped in the database, read as the login role (the service's role may not exist)."""
    from sqlalchemy import pool, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.ext.asyncio import create_async_engine

    from state_manager.db.sqlite import create_private_file, database_file

    if make_url(url).get_backend_name() == "sqlite" and (path := database_file(url)) is not None:
        create_private_file(path)
    engine = create_async_engine(url, poolclass=pool.NullPool, hide_parameters=True)
    try:
        async with engine.connect() as conn:
            try:
                row = (await conn.execute(text("SELECT version_num FROM alembic_version"))).first()
            except DBAPIError:
                return None
    finally:
        await engine.dispose()
    return None if row is None else str(row[0])
