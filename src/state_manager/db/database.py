"""The Database interface. Services receive a connection inside a transaction; they never commit.

`open_database(settings)` is the one place that looks at the URL scheme.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import ColumnElement, any_, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from state_manager.errors import LockTimeout, StateManagerError, Unavailable
from state_manager.settings import Settings

RETRY_AFTER_SECONDS = "2"
LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock_timeout
# serialization_failure and deadlock_detected: PostgreSQL gave up the transaction for concurrent work on
# the same rows; it did nothing, and the same request again normally succeeds.
TRY_AGAIN = frozenset({"40001", "40P01"})
# A server shutting down, restarting after a crash, or still starting: admin_shutdown, crash_shutdown,
# cannot_connect_now. asyncpg raises them as plain PostgresErrors (not connection errors), and SQLAlchemy
# as a bare DBAPIError; class 08 is a connection exception.
SERVER_GOING_AWAY = frozenset({"57P01", "57P02", "57P03"})
_HOOKS = "state_manager_transaction_hooks"


class TransactionHooks:
    """Work a transaction defers to its end: `before_commit` runs inside it, last (so that what it writes
    comes after every lock the transaction took); `committed` names the tenants whose new events the
    commit made visible, for `Database.commit_listeners`; `held` keeps what deferred work collects, and
    goes with the transaction (conn.info outlives it, in the pool)."""

    __slots__ = ("before_commit", "committed", "held")

    def __init__(self) -> None:
        self.before_commit: list[Callable[[AsyncConnection], Awaitable[None]]] = []
        self.committed: set[str] = set()
        self.held: dict[str, Any] = {}


def hooks_of(conn: AsyncConnection) -> TransactionHooks:
    """The hooks of the transaction `conn` is in (opened by `Database.transaction`)."""
    hooks: TransactionHooks = conn.info[_HOOKS]
    return hooks


class Database(abc.ABC):
    """What services need from a database, whatever the dialect."""

    name: str
    engine: AsyncEngine
    # Called with a tenant after a commit that wrote events for it (the event relay listens).
    commit_listeners: list[Callable[[str], None]]

    def committed(self, tenant_id: str) -> None:
        """Tells the listeners that a commit made new events of the tenant visible."""
        for listener in self.commit_listeners:
            listener(tenant_id)

    @abc.abstractmethod
    def _begin(
        self, tenant_id: str | None, write: bool, lock_timeout: float | None
    ) -> Any:  # an async context manager yielding an AsyncConnection
        ...

    @asynccontextmanager
    async def transaction(
        self, tenant_id: str | None, *, write: bool = True, lock_timeout: float | None = None
    ) -> AsyncIterator[AsyncConnection]:
        """One transaction scoped to a tenant: commits when the block ends, rolls back on error.

        Losing the database (refused connection, server restart, SQLite busy) becomes a 503 with
        Retry-After; nothing is reported as done unless the commit returned. With `lock_timeout`, waiting
        longer than that for a row lock raises LockTimeout (PostgreSQL; SQLite waits its busy timeout).
        """
        hooks = TransactionHooks()
        try:
            async with self._begin(tenant_id, write, lock_timeout) as conn:
                # conn.info lives as long as the pooled connection: the hooks leave it with the block.
                # Taken once: a connection the database dropped refuses `conn.info` until it is rolled
                # back (PendingRollbackError), which would hide the loss, a 503, behind a 500.
                info = conn.info
                info[_HOOKS] = hooks
                try:
                    yield conn
                    for work in hooks.before_commit:
                        await work(conn)
                finally:
                    info.pop(_HOOKS, None)
        except Exception as exc:
            # A task cancelled inside a transaction can see SQLAlchemy's rollback fail instead
            # (PendingRollbackError, seen on SQLite): a loop catching Exception would then miss its
            # cancellation and never stop (a server that did not shut down).
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from exc
            meaning = None if isinstance(exc, StateManagerError | IntegrityError) else self._meaning(exc)
            if meaning is None:
                raise
            raise meaning from exc
        for committed_tenant in hooks.committed:
            self.committed(committed_tenant)

    @staticmethod
    def _meaning(exc: Exception) -> StateManagerError | None:
        """What a database error means to callers; None for errors that mean nothing special."""
        if isinstance(exc, OperationalError | InterfaceError | OSError | ConnectionError):
            return Unavailable(
                "the database is unavailable; retry later", headers={"Retry-After": RETRY_AFTER_SECONDS}
            )
        if isinstance(exc, PoolTimeout):
            return Unavailable(
                "every database connection stayed busy (DB_POOL_TIMEOUT_SECONDS); retry later",
                headers={"Retry-After": RETRY_AFTER_SECONDS},
            )
        if isinstance(exc, DBAPIError):
            sqlstate = getattr(exc.orig, "sqlstate", None)
            if sqlstate in SERVER_GOING_AWAY or (isinstance(sqlstate, str) and sqlstate.startswith("08")):
                return Unavailable(
                    "the database is unavailable; retry later", headers={"Retry-After": RETRY_AFTER_SECONDS}
                )
            if sqlstate in TRY_AGAIN:
                return Unavailable(
                    "concurrent work on the same rows made the database give this up, undone; retry",
                    headers={"Retry-After": RETRY_AFTER_SECONDS},
                )
            if sqlstate == LOCK_NOT_AVAILABLE:
                return LockTimeout(
                    "a row this needs stayed locked by other work; retry",
                    headers={"Retry-After": RETRY_AFTER_SECONDS},
                )
            if exc.connection_invalidated:
                return Unavailable(
                    "the database connection was lost; retry later",
                    headers={"Retry-After": RETRY_AFTER_SECONDS},
                )
        return None

    async def ping(self) -> float:
        """Round-trip time of `SELECT 1` in seconds."""
        started = time.perf_counter()
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return time.perf_counter() - started

    async def schema_revision(self) -> str | None:
        async with self.engine.connect() as conn:
            try:
                row = (await conn.execute(text("SELECT version_num FROM alembic_version"))).first()
            except DBAPIError:
                return None
        return None if row is None else str(row[0])

    async def configuration_warnings(self) -> list[str]:
        """What in the database server's configuration will hurt the service, for the start-up log."""
        return []

    async def dispose(self) -> None:
        await self.engine.dispose()


def _postgres(settings: Settings) -> Database:
    from state_manager.db.postgres import PostgresDatabase

    return PostgresDatabase(settings)


def _sqlite(settings: Settings) -> Database:
    from state_manager.db.sqlite import SqliteDatabase

    return SqliteDatabase(settings)


_BY_SCHEME = {"postgresql+asyncpg": _postgres, "sqlite+aiosqlite": _sqlite}


def open_database(settings: Settings) -> Database:
    scheme = settings.effective_database_url.split("://", 1)[0]
    return _BY_SCHEME[scheme](settings)


def dialect_insert(dialect_name: str) -> Any:
    return pg_insert if dialect_name == "postgresql" else sqlite_insert


def one_of(conn: AsyncConnection, column: ColumnElement[Any], values: Iterable[Any]) -> ColumnElement[bool]:
    """`column IN (values)`. On PostgreSQL as `column = ANY(array)`, one parameter: the statement is then
    the same for any number of values, compiled once and prepared once per connection (an IN list is a new
    statement, parsed and planned again, for every length)."""
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(list(values))
