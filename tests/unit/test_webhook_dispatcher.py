"""The webhook dispatcher's loop, on a stand-in database: when it claims a tenant's deliveries again."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from state_manager.db import Database
from state_manager.db.pending import PendingWork
from state_manager.settings import Settings
from state_manager.subscriptions import dispatcher as dispatcher_module
from state_manager.subscriptions import repository as repo
from state_manager.subscriptions.dispatcher import WebhookDispatcher

TENANT = "t-dispatcher"


class _Conn:
    async def execute(self, *_: Any, **__: Any) -> None:  # the lock the claim takes
        return None


async def _nothing_pending(*_: Any, **__: Any) -> list[PendingWork]:
    return []  # the sweep finds no tenants: only notify and backoffs wake the dispatcher


class _Database:
    @contextlib.asynccontextmanager
    async def transaction(self, tenant_id: str | None, **_: Any) -> AsyncIterator[_Conn]:
        yield _Conn()


@pytest.mark.parametrize("pending_seen", [False, True], ids=["nothing-pending-seen", "pending-seen"])
async def test_a_notify_during_a_claim_is_not_lost(
    monkeypatch: pytest.MonkeyPatch, pending_seen: bool
) -> None:
    """A retry (or a send ending) committed and notified while a claim for the tenant was running, after
    the claim had looked: the dispatcher claims again at once, not at the next poll or sweep (30 s)."""
    claims: list[dt.datetime] = []
    claimed_again = asyncio.Event()
    dispatcher = WebhookDispatcher(
        Settings(webhook_poll_seconds=30, webhook_sweep_seconds=30), cast(Database, _Database())
    )

    async def claim(conn: Any, tenant_id: str, *, now: dt.datetime, **_: Any) -> list[dict[str, Any]]:
        claims.append(now)
        if len(claims) == 1:
            dispatcher.notify(tenant_id)  # the API's retry, committed after this claim's query
        else:
            claimed_again.set()
        return []

    async def next_retry_at(*_: Any) -> None:
        return None

    async def has_pending(*_: Any) -> bool:
        return pending_seen and len(claims) == 1  # the retried delivery, seen by a later statement

    monkeypatch.setattr(dispatcher_module, "pending_work", _nothing_pending)
    monkeypatch.setattr(repo, "claim", claim)
    monkeypatch.setattr(repo, "next_retry_at", next_retry_at)
    monkeypatch.setattr(repo, "has_pending", has_pending)
    dispatcher.start()
    try:
        dispatcher.notify(TENANT)
        await asyncio.wait_for(claimed_again.wait(), timeout=5)
    finally:
        await dispatcher.close()
    assert len(claims) == 2
