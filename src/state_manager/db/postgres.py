"""PostgreSQL: asyncpg pool, the tenant set per transaction for row-level security, a non-bypassing role."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.util import greenlet_spawn

from state_manager.db.database import RETRY_AFTER_SECONDS, Database
from state_manager.db.fair_pool import FairAsyncAdaptedQueuePool
from state_manager.errors import Unavailable
from state_manager.settings import Settings

# Created by the first migration; the service switches to it on every connection.
APP_ROLE = "state_manager_app"
SET_TENANT = text("SELECT set_config('app.tenant_id', :tenant_id, true)")
# One round trip for both; no tenant ('') sees no tenant's rows, as an unset one.
SET_TENANT_AND_LOCK_TIMEOUT = text(
    "SELECT set_config('app.tenant_id', coalesce(:tenant_id, ''), true),"
    " set_config('lock_timeout', :timeout, true)"
)


# Autovacuum runs only with both on.
MAINTENANCE_SETTINGS = ("autovacuum", "track_counts")


def maintenance_warnings(settings: dict[str, str]) -> list[str]:
    """Seen on a test machine: with autovacuum off no table is ever analyzed and no dead row is ever
    removed, so the hot paths keep plans made for empty tables and slow down as the tables grow."""
    off = [name for name in MAINTENANCE_SETTINGS if settings.get(name) != "on"]
    if not off:
        return []
    return [
        f"PostgreSQL runs with {' and '.join(off)} off, so autovacuum never runs: tables are never analyzed "
        "or vacuumed, and the service slows down as they grow. Turn it on, or run VACUUM ANALYZE on a "
        "schedule."
    ]


class PostgresDatabase(Database):
    name = "postgresql"

    def __init__(self, settings: Settings, *, as_app_role: bool = True) -> None:
        self.commit_listeners = []
        self.engine = create_async_engine(
            settings.effective_database_url,
            poolclass=FairAsyncAdaptedQueuePool,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_recycle=1800,
            pool_timeout=settings.db_pool_timeout_seconds,
            # Errors (logged, kept as `last_error`) never carry the statement's values: messages, phone
            # numbers, a subscription's signing secret.
            hide_parameters=True,
            connect_args={
                "server_settings": {"application_name": "state-manager", "jit": "off"},
                "command_timeout": 30,
            },
        )
        if as_app_role:
            # Row-level security is bypassed by superusers and table owners; the service therefore works
            # as a role that owns nothing, so the policies hold even when it logs in as the owner.
            @event.listens_for(self.engine.sync_engine, "connect")
            def _set_role(dbapi_connection: Any, _record: Any) -> None:
                cursor = dbapi_connection.cursor()
                cursor.execute(f"SET ROLE {APP_ROLE}")
                cursor.close()
                # The driver adapter opened a transaction for that statement. Committed here, or the
                # first user of the connection inherits it: `driver_connection` runs outside SQLAlchemy's
                # transactions, so its writes, and the role itself, were rolled back when the connection
                # went back to the pool (seen as lost inbound messages on a freshly grown pool).
                dbapi_connection.commit()

    async def configuration_warnings(self) -> list[str]:
        async with self.engine.connect() as conn:
            found = await conn.execute(
                text("SELECT name, setting FROM pg_settings WHERE name = ANY(:names)"),
                {"names": list(MAINTENANCE_SETTINGS)},
            )
            return maintenance_warnings({str(name): str(value) for name, value in found})

    @asynccontextmanager
    async def _begin(
        self, tenant_id: str | None, write: bool, lock_timeout: float | None
    ) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as conn:
            if lock_timeout is not None:
                timeout = f"{max(1, round(lock_timeout * 1000))}ms"
                await conn.execute(SET_TENANT_AND_LOCK_TIMEOUT, {"tenant_id": tenant_id, "timeout": timeout})
            elif tenant_id is not None:
                await conn.execute(SET_TENANT, {"tenant_id": tenant_id})
            yield conn

    @asynccontextmanager
    async def driver_connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection as asyncpg's own, outside any transaction, for a hot path that runs one
        statement setting its own tenant (a stored function): no BEGIN, no COMMIT, no SQLAlchemy layer.
        Taken from the pool itself: SQLAlchemy's Connection around it would cost more than the statement's
        own round trip (docs/benchmarks.md, "One worker on a core of its own").

        Losing the database is a 503 with Retry-After, as in `transaction`.
        """
        try:
            proxied = await greenlet_spawn(self.engine.pool.connect)
        except Exception as exc:
            # Wrapped as Engine.connect would wrap it, for the same 503s as a transaction's: lost,
            # restarting, pool busy.
            driver_error = self.engine.dialect.loaded_dbapi.Error
            wrapped = (
                DBAPIError.instance(None, None, exc, driver_error, dialect=self.engine.dialect)
                if isinstance(exc, driver_error)
                else exc
            )
            meaning = self._meaning(wrapped)
            if meaning is not None:
                raise meaning from exc
            if wrapped is exc:
                raise
            raise wrapped from exc
        broken = False
        try:
            driver = proxied.driver_connection
            assert isinstance(driver, asyncpg.Connection)
            yield driver
        except (
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,
            OSError,
            # The server ended the session (a fast or immediate shutdown, a crash of another backend).
            asyncpg.AdminShutdownError,
            asyncpg.CrashShutdownError,
            asyncpg.CannotConnectNowError,
            # The server ended the session while the connection sat in the pool, and asyncpg was still
            # reading its last words when the statement came: "cannot switch to state …" (seen under a
            # fast shutdown, as a 500).
            asyncpg.InternalClientError,
        ) as exc:
            broken = True
            await greenlet_spawn(proxied.invalidate)  # closed, never handed to the next request
            raise Unavailable(
                "the database is unavailable; retry later", headers={"Retry-After": RETRY_AFTER_SECONDS}
            ) from exc
        finally:
            if not broken:
                await greenlet_spawn(proxied.close)
