"""SQLite, the embedded default: WAL, foreign keys, and BEGIN IMMEDIATE for writes.

SQLite has no row-level security; the application's tenant scoping is the wall here.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from state_manager.db.database import Database
from state_manager.db.fair_pool import FairAsyncAdaptedQueuePool
from state_manager.settings import Settings

BEGIN_MODE = "state_manager_begin"


def database_file(url: str) -> Path | None:
    """The file behind a SQLite URL (None for an in-memory database)."""
    database = make_url(url).database
    return None if database in (None, "", ":memory:") else Path(database)


def create_private_file(path: Path) -> None:
    """Creates the database file, and its folder, for the service's user only (SQLite gives the -wal
    and -shm files the database file's mode). An existing file or folder keeps its mode."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))


class SqliteDatabase(Database):
    name = "sqlite"

    def __init__(self, settings: Settings) -> None:
        self.commit_listeners = []
        url = settings.effective_database_url
        if (path := database_file(url)) is not None:
            create_private_file(path)
        self.engine = create_async_engine(
            url,
            poolclass=FairAsyncAdaptedQueuePool,
            pool_size=5,
            max_overflow=5,
            hide_parameters=True,  # errors never carry the statement's values (as on PostgreSQL)
            connect_args={"timeout": 30},
        )

        @event.listens_for(self.engine.sync_engine, "connect")
        def _configure(dbapi_connection: Any, _record: Any) -> None:
            # Take BEGIN out of the driver's hands so that writers can ask for BEGIN IMMEDIATE:
            # a deferred writer that upgrades its lock late is what makes SQLite report "locked".
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            for pragma in (
                "PRAGMA journal_mode=WAL",
                "PRAGMA synchronous=NORMAL",
                "PRAGMA foreign_keys=ON",
                "PRAGMA busy_timeout=30000",
            ):
                cursor.execute(pragma)
            cursor.close()

        @event.listens_for(self.engine.sync_engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql(conn.get_execution_options().get(BEGIN_MODE, "BEGIN"))

    @asynccontextmanager
    async def _begin(
        self, tenant_id: str | None, write: bool, lock_timeout: float | None
    ) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            await conn.execution_options(**{BEGIN_MODE: "BEGIN IMMEDIATE" if write else "BEGIN"})
            async with conn.begin():
                yield conn
