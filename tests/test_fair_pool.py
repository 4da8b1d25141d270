"""The connection pool serves waiting requests in the order they came (db/fair_pool.py), on both backends'
real drivers: a request that has waited is never passed by one that just arrived, a wait that runs out is
the pool's timeout (a 503 in `Database._meaning`), and a connection handed to a request that was cancelled
at that moment goes to the next one in line."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.util import greenlet_spawn

from state_manager.db import open_database
from state_manager.db.fair_pool import FairAsyncAdaptedQueuePool, HandOffQueue
from state_manager.settings import Settings

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'pool.db'}"
    found: str = request.getfixturevalue("postgres_url")
    return found


def one_connection_pool(url: str, timeout: float = 5.0, **options: object) -> AsyncEngine:
    options = {"max_overflow": 0, **options}
    return create_async_engine(
        url, poolclass=FairAsyncAdaptedQueuePool, pool_size=1, pool_timeout=timeout, **options
    )


async def until_waiting(engine: AsyncEngine, count: int) -> None:
    """Until `count` requests wait for a connection (they are served in the order they started waiting)."""
    for _ in range(1000):
        if len(engine.pool._pool._waiters) >= count:  # type: ignore[attr-defined]
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{count} requests did not start waiting")


async def request(engine: AsyncEngine, served: list[str], name: str) -> None:
    """Takes a connection, notes who got it, uses it and gives it back."""
    async with engine.connect() as conn:
        served.append(name)
        await conn.execute(text("SELECT 1"))


def test_both_backends_use_the_fair_pool(url: str) -> None:
    db = open_database(Settings(database_url=url))
    try:
        assert isinstance(db.engine.pool, FairAsyncAdaptedQueuePool)
    finally:
        asyncio.run(db.dispose())


def test_waiting_requests_are_served_in_order_and_a_newcomer_waits_behind_them(url: str) -> None:
    async def scenario() -> None:
        engine = one_connection_pool(url)
        served: list[str] = []

        try:
            holder = await engine.connect()
            waiting = []
            for n, name in enumerate(("first", "second", "third"), start=1):
                waiting.append(asyncio.create_task(request(engine, served, name)))
                await until_waiting(engine, n)
            await holder.close()
            # The holder asks again at once, before any waiter has run: the stock pool gave it the
            # connection it had just returned, ahead of every waiter.
            await request(engine, served, "newcomer")
            await asyncio.gather(*waiting)
            assert served == ["first", "second", "third", "newcomer"]
        finally:
            await engine.dispose()

    asyncio.run(scenario())


def test_a_wait_that_runs_out_is_the_pools_timeout_and_leaves_nothing_behind(url: str) -> None:
    async def scenario() -> None:
        engine = one_connection_pool(url, timeout=0.2)
        try:
            holder = await engine.connect()
            with pytest.raises(PoolTimeout):
                await engine.connect()
            await holder.close()
            assert not engine.pool._pool._waiters  # type: ignore[attr-defined]  # it left the line
            # ... so the returned connection is free at once.
            async with asyncio.timeout(1), engine.connect() as conn:
                assert (await conn.execute(text("SELECT 1"))).scalar() == 1
            assert engine.pool.checkedin() == 1  # type: ignore[attr-defined]
        finally:
            await engine.dispose()

    asyncio.run(scenario())


def test_a_connection_handed_to_a_request_cancelled_at_that_moment_goes_to_the_next(url: str) -> None:
    async def scenario() -> None:
        engine = one_connection_pool(url)
        served: list[str] = []

        try:
            holder = await engine.connect()
            cancelled = asyncio.create_task(request(engine, served, "cancelled"))
            await until_waiting(engine, 1)
            next_in_line = asyncio.create_task(request(engine, served, "next"))
            await until_waiting(engine, 2)
            await holder.close()  # handed to the first waiter, which has not run since
            cancelled.cancel()
            async with asyncio.timeout(2):
                await next_in_line
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            assert served == ["next"]
            assert engine.pool.checkedin() == 1  # type: ignore[attr-defined]
        finally:
            await engine.dispose()

    asyncio.run(scenario())


def test_a_connection_handed_to_a_cancelled_request_when_the_shelf_is_full_is_closed(url: str) -> None:
    """With overflow connections the shelf can fill up between the hand-over and the cancelled request's
    turn: the connection it was handed is then closed, as the pool closes any connection beyond its
    size, and the pool's count goes down with it (it was lost, and the pool one connection smaller)."""

    async def scenario() -> None:
        # No rollback on return: on SQLite it waits for the driver's thread, and the waiting request would
        # run in between the two returns.
        engine = one_connection_pool(url, max_overflow=1, pool_reset_on_return=None)
        try:
            first, second = await engine.connect(), await engine.connect()
            cancelled = asyncio.create_task(engine.connect().start())
            await until_waiting(engine, 1)
            await first.close()  # handed to the waiting request, which has not run since
            await second.close()  # nobody waits now: onto the shelf, which is then full
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            pool = engine.pool
            assert (pool.checkedout(), pool.checkedin(), pool.overflow()) == (0, 1, 0)  # type: ignore[attr-defined]
            async with asyncio.timeout(2), engine.connect() as one, engine.connect() as two:
                for conn in (one, two):
                    assert (await conn.execute(text("SELECT 1"))).scalar() == 1
        finally:
            await engine.dispose()

    asyncio.run(scenario())


def test_a_connection_handed_over_as_the_wait_runs_out_is_taken() -> None:
    """The hand-over and the end of the wait in the same turn of the loop: the request keeps what it was
    handed (a timeout there would lose the connection, or refuse a request that was served)."""

    async def scenario() -> None:
        queue: HandOffQueue[str] = HandOffQueue(maxsize=1)
        waiting = asyncio.create_task(greenlet_spawn(queue.get, True, 0.05))
        await asyncio.sleep(0.01)
        assert len(queue._waiters) == 1
        time.sleep(0.1)  # noqa: ASYNC251  # past the deadline, the loop held: its timer is now due ...
        await asyncio.sleep(0)  # ... and runs right after this turn, which hands the connection over
        queue.put_nowait("connection")
        assert await waiting == "connection"
        assert queue.empty()

    asyncio.run(scenario())


def test_a_waiter_whose_event_loop_is_gone_is_skipped() -> None:
    queue: HandOffQueue[str] = HandOffQueue(maxsize=1)
    gone = asyncio.new_event_loop()
    stranded = gone.create_task(greenlet_spawn(queue.get, True, None))
    gone.run_until_complete(asyncio.sleep(0.01))
    assert len(queue._waiters) == 1
    gone.close()  # with the request still waiting, never cancelled
    assert not stranded.done()

    queue.put_nowait("connection")
    assert queue.get_nowait() == "connection"
