"""A connection pool that serves waiting requests first come, first served.

SQLAlchemy's asyncio pool lets a newcomer take a connection that was just returned before the request
that has waited longest gets to run, and the loser goes to the back of the line again (sqlalchemy#7679,
asyncpg#1247 for asyncpg's own pool). Under sustained load one request can then lose that race for the
whole pool timeout, a 503 while others are served in milliseconds (seen in the two-instance load test).

Here a returned connection is handed straight to the longest waiter; it goes back on the shelf only when
nobody waits, and a request waits only when the shelf is empty, so nobody can pass a waiting request.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import Any, TypeVar

from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.util import await_only
from sqlalchemy.util.queue import AsyncAdaptedQueue, Empty

_T = TypeVar("_T")


class HandOffQueue(AsyncAdaptedQueue[_T]):
    def __init__(self, maxsize: int = 0, use_lifo: bool = False) -> None:
        super().__init__(maxsize, use_lifo)
        self._waiters: deque[asyncio.Future[_T]] = deque()
        # How a connection handed to a request that gave up at that moment goes back: the pool sets its
        # own return, which closes the connection when the shelf is full (overflow connections).
        self.give_back: Callable[[_T], None] = self.put_nowait

    def put_nowait(self, item: _T) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            # Skipped: a waiter that timed out or was cancelled, or whose event loop is gone.
            if not waiter.done() and not waiter.get_loop().is_closed():
                waiter.set_result(item)
                return
        super().put_nowait(item)

    def put(self, item: _T, block: bool = True, timeout: float | None = None) -> None:
        if any(not waiter.done() for waiter in self._waiters):
            self.put_nowait(item)
        else:
            super().put(item, block, timeout)

    def get(self, block: bool = True, timeout: float | None = None) -> _T:
        # A connection on the shelf means nobody was waiting when it came back.
        with suppress(Empty):
            return self.get_nowait()
        if not block:
            raise Empty()
        waiter: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            result: _T = await_only(self._wait(waiter, timeout))
            return result
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.give_back(waiter.result())  # handed over just as this request was cancelled
            raise
        finally:
            with suppress(ValueError):
                self._waiters.remove(waiter)

    @staticmethod
    async def _wait(waiter: asyncio.Future[_T], seconds: float | None) -> _T:
        try:
            async with asyncio.timeout(seconds):
                return await waiter
        except TimeoutError as exc:
            if waiter.done() and not waiter.cancelled():
                return waiter.result()  # handed over as the time ran out: it is this request's
            raise Empty() from exc


class FairAsyncAdaptedQueuePool(AsyncAdaptedQueuePool):
    """AsyncAdaptedQueuePool, with waiting requests served in the order they came."""

    _queue_class: Any = HandOffQueue

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pool.give_back = self._do_return_conn  # type: ignore[attr-defined]
