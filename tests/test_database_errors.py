"""Transient database refusals are 503s with Retry-After, never 500s (db/database.py, `_meaning`), on the real
PostgreSQL: a deadlock PostgreSQL broke, and a pool whose every connection stayed busy."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from state_manager.db import open_database
from state_manager.db.postgres import PostgresDatabase
from state_manager.errors import Unavailable
from state_manager.settings import Settings

pytestmark = pytest.mark.postgres


def test_the_transaction_postgresql_picks_to_break_a_deadlock_is_a_503(postgres_url: str) -> None:
    async def scenario() -> None:
        db = open_database(Settings(database_url=postgres_url))
        both_hold_one = asyncio.Barrier(2)

        async def take(first: int, second: int) -> None:
            async with db.transaction(None, write=True) as conn:
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": first})
                await both_hold_one.wait()
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": second})

        try:
            outcomes = await asyncio.gather(take(8_801, 8_802), take(8_802, 8_801), return_exceptions=True)
        finally:
            await db.dispose()
        refused = [outcome for outcome in outcomes if outcome is not None]
        assert len(refused) == 1, outcomes  # one ran; the other was given up, and says so
        assert isinstance(refused[0], Unavailable), repr(refused[0])
        assert refused[0].headers == {"Retry-After": "2"}

    asyncio.run(scenario())


def test_no_free_connection_within_the_pool_timeout_is_a_503(postgres_url: str) -> None:
    async def scenario() -> None:
        settings = Settings(
            database_url=postgres_url, db_pool_size=1, db_max_overflow=0, db_pool_timeout_seconds=0.3
        )
        db = open_database(settings)
        assert isinstance(db, PostgresDatabase)
        try:
            async with db.transaction(None, write=False):
                with pytest.raises(Unavailable, match="DB_POOL_TIMEOUT_SECONDS") as refused:
                    async with db.transaction(None, write=False):
                        pass
                # The inbound path's own way in (one statement on the driver's connection) says the same.
                with pytest.raises(Unavailable, match="DB_POOL_TIMEOUT_SECONDS"):
                    async with db.driver_connection():
                        pass
            assert refused.value.headers == {"Retry-After": "2"}
            async with db.transaction(None, write=False) as conn:  # the connection came back
                assert (await conn.execute(text("SELECT 1"))).scalar() == 1
        finally:
            await db.dispose()

    asyncio.run(scenario())


def test_a_pooled_connection_the_server_ended_is_a_503_on_the_inbound_path(postgres_url: str) -> None:
    """A session PostgreSQL ends (shutdown, pg_terminate_backend) while its connection sits in the pool fails
    the next statement in one of three ways, depending on how far asyncpg got with the server's goodbye;
    every one of them is a 503, never a 500, and the next request gets a working connection."""

    async def scenario() -> None:
        import asyncpg

        settings = Settings(database_url=postgres_url, db_pool_size=1, db_max_overflow=0)
        db = open_database(settings)
        assert isinstance(db, PostgresDatabase)
        admin = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            for _ in range(20):
                async with db.driver_connection() as driver:
                    pid = driver.get_server_pid()
                await admin.execute("SELECT pg_terminate_backend($1)", pid)
                with pytest.raises(Unavailable):
                    async with db.driver_connection() as driver:
                        await driver.fetchrow("SELECT 1")
            async with db.driver_connection() as driver:
                assert await driver.fetchval("SELECT 1") == 1
        finally:
            await admin.close()
            await db.dispose()

    asyncio.run(scenario())


def test_a_database_that_refuses_connections_is_a_503_on_both_ways_in(postgres_url: str) -> None:
    """Nothing listens where the database should be: the first connection fails, as a 503."""

    async def scenario() -> None:
        closed = make_url(postgres_url).set(port=1).render_as_string(hide_password=False)
        db = open_database(Settings(database_url=closed, db_pool_size=1, db_max_overflow=0))
        assert isinstance(db, PostgresDatabase)
        try:
            with pytest.raises(Unavailable, match="unavailable") as refused:
                async with db.driver_connection():
                    pass
            assert refused.value.headers == {"Retry-After": "2"}
            with pytest.raises(Unavailable, match="unavailable"):
                async with db.transaction(None, write=False):
                    pass
        finally:
            await db.dispose()

    asyncio.run(scenario())


def test_a_refused_login_is_the_same_error_on_both_ways_in(postgres_url: str) -> None:
    """A database that does not exist is no outage: not a 503, and the same SQLAlchemy error whichever way
    the connection was asked for (the inbound path takes it from the pool itself)."""

    async def scenario() -> tuple[BaseException, BaseException]:
        missing = make_url(postgres_url).set(database="sm_no_such_database").render_as_string(False)
        db = open_database(Settings(database_url=missing, db_pool_size=1, db_max_overflow=0))
        assert isinstance(db, PostgresDatabase)
        try:
            with pytest.raises(DBAPIError) as by_pool:
                async with db.driver_connection():
                    pass
            with pytest.raises(DBAPIError) as by_transaction:
                async with db.transaction(None, write=False):
                    pass
        finally:
            await db.dispose()
        return by_pool.value, by_transaction.value

    by_pool, by_transaction = asyncio.run(scenario())
    assert type(by_pool) is type(by_transaction)
    assert type(by_pool.orig) is type(by_transaction.orig)  # type: ignore[attr-defined]
