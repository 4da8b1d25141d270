"""Every tenant's background work in one statement (db/pending.py; on PostgreSQL `sm_pending_work`,
migrations 0011 and 0012): the same answers on both backends, and on PostgreSQL under each tenant's own
row-level security."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest
from sqlalchemy import insert, select, text

from harness import add_tenants
from state_manager.analytics.models import analytics_progress
from state_manager.conversations.models import conversations
from state_manager.customers.models import customers
from state_manager.db import Database, open_database
from state_manager.db.migrate import upgrade_to_head_async
from state_manager.db.pending import PendingWork, pending_work
from state_manager.db.types import utcnow
from state_manager.events.models import event_relay, events
from state_manager.queues.models import broker_outbox
from state_manager.settings import Settings
from state_manager.subscriptions.models import webhook_deliveries, webhook_subscriptions

SETTING = text("SELECT current_setting('app.tenant_id', true)")


async def _seed(db: Database) -> None:
    now = utcnow()
    await add_tenants(db, "pw", *(f"pw-{name}" for name in "abcd"))

    def outbox(published_at: dt.datetime | None) -> dict[str, object]:
        return {
            "tenant_id": "pw-a",
            "id": uuid.uuid4(),
            "seq": 1,
            "destination": "enriched",
            "body": "{}",
        } | {
            "created_at": now - dt.timedelta(days=3),
            "published_at": published_at,
        }

    def event(event_id: int, seq: int | None) -> dict[str, object]:
        return {
            "tenant_id": "pw-a",
            "id": event_id,
            "seq": seq,
            "type": "message.recorded",
            "payload": {},
            "occurred_at": now,
        }

    async with db.transaction("pw-a", write=True) as conn:
        await conn.execute(insert(broker_outbox), [outbox(None), outbox(now - dt.timedelta(days=2))])
        await conn.execute(insert(events), [event(1, 7), event(2, None)])
        await conn.execute(insert(event_relay).values(tenant_id="pw-a", last_seq=7, updated_at=now))
        await conn.execute(
            insert(analytics_progress).values(tenant_id="pw-a", last_seq=7, rebuilding=False, updated_at=now)
        )

    subscription = uuid.uuid4()

    def delivery(status: str, age: dt.timedelta) -> dict[str, object]:
        return {
            "tenant_id": "pw-b",
            "id": uuid.uuid4(),
            "subscription_id": subscription,
            "event_seq": 1,
            "event_type": "message.recorded",
            "ordering_key": "k",
            "body": "{}",
            "status": status,
            "attempts": 1,
            "round_attempts": 1,
            "created_at": now - age,
            "updated_at": now - age,
            "delivered_at": now - age if status == "delivered" else None,
        }

    async with db.transaction("pw-b", write=True) as conn:
        await conn.execute(
            insert(webhook_subscriptions).values(
                tenant_id="pw-b",
                id=subscription,
                url="https://example.com/hook",
                event_types=[],
                secret="s",
                active=True,
                version=1,
                created_at=now,
                updated_at=now,
            )
        )
        await conn.execute(
            insert(webhook_deliveries),
            [delivery("pending", dt.timedelta(0)), delivery("delivered", dt.timedelta(days=10))],
        )
        # Retention trimmed events up to 5 that the projection never read: it is behind.
        await conn.execute(
            insert(event_relay).values(tenant_id="pw-b", last_seq=5, trimmed_through=5, updated_at=now)
        )
        await conn.execute(
            insert(analytics_progress).values(tenant_id="pw-b", last_seq=0, rebuilding=False, updated_at=now)
        )

    # pw-d: numbers far above pw-a's, projected up to date. Each tenant is compared with its own numbers
    # only: against pw-d's, pw-a would look behind.
    async with db.transaction("pw-d", write=True) as conn:
        await conn.execute(
            insert(events),
            [
                {"tenant_id": "pw-d", "id": n, "seq": 37 + n, "type": "message.recorded", "payload": {}}
                | {"occurred_at": now}
                for n in (1, 2, 3)
            ],
        )
        await conn.execute(insert(event_relay).values(tenant_id="pw-d", last_seq=40, updated_at=now))
        await conn.execute(
            insert(analytics_progress).values(tenant_id="pw-d", last_seq=40, rebuilding=False, updated_at=now)
        )


async def _seed_conversations(db: Database, now: dt.datetime) -> None:
    """pw-c: one open conversation quiet for 3 hours, one active 1 hour ago, one closed quiet for 9."""
    customer = uuid.uuid4()

    def conversation(state: str, quiet: dt.timedelta, number: str) -> dict[str, object]:
        at = now - quiet
        return {"tenant_id": "pw-c", "id": uuid.uuid4(), "customer_id": customer, "channel": "whatsapp"} | {
            "business_number_id": number,
            "state": state,
            "state_changed_at": at,
            "started_at": at,
            "last_activity_at": at,
            "metadata": {},
            "version": 1,
            "created_at": at,
            "updated_at": at,
        }

    async with db.transaction("pw-c", write=True) as conn:
        await conn.execute(
            insert(customers).values(
                tenant_id="pw-c",
                id=customer,
                preferences={},
                consent={},
                attributes={},
                version=1,
                created_at=now,
                updated_at=now,
            )
        )
        await conn.execute(
            insert(conversations),
            [
                conversation("waiting", dt.timedelta(hours=3), "1"),
                conversation("active", dt.timedelta(hours=1), "2"),
                conversation("closed", dt.timedelta(hours=9), "3"),
            ],
        )


def _work(tenant: str, **found: object) -> PendingWork:
    nothing: dict[str, object] = {
        "unpublished_output": False,
        "output_to_prune": False,
        "unnumbered_events": False,
        "last_numbered": 0,
        "pending_deliveries": False,
        "deliveries_to_prune": False,
        "analytics_behind": False,
        "oldest_open_activity": None,
    }
    return PendingWork(tenant_id=tenant, **(nothing | found))  # type: ignore[arg-type]


def test_each_tenants_pending_work_in_one_statement(fresh_database_url: str) -> None:

    async def scenario() -> None:
        await upgrade_to_head_async(fresh_database_url)
        db = open_database(Settings(database_url=fresh_database_url))
        try:
            await _seed(db)
            now = utcnow()
            await _seed_conversations(db, now)
            found = await pending_work(
                db,
                output_published_before=now - dt.timedelta(days=1),
                delivered_before=now - dt.timedelta(days=7),
                oldest_open_activity=True,
            )
            assert found == [
                _work(
                    "pw-a",
                    unpublished_output=True,
                    output_to_prune=True,
                    unnumbered_events=True,
                    last_numbered=7,
                ),
                _work(
                    "pw-b",
                    pending_deliveries=True,
                    deliveries_to_prune=True,
                    last_numbered=5,
                    analytics_behind=True,
                ),
                # never projected; the closed conversation does not count
                _work("pw-c", analytics_behind=True, oldest_open_activity=now - dt.timedelta(hours=3)),
                _work("pw-d", last_numbered=40),
            ]
            # Cutoffs older than everything, or none: nothing to prune.
            later = await pending_work(
                db,
                output_published_before=now - dt.timedelta(days=5),
                delivered_before=now - dt.timedelta(days=30),
            )
            assert not any(work.output_to_prune or work.deliveries_to_prune for work in later)
            # The oldest open activity reads every open conversation: only when asked.
            assert [work.oldest_open_activity for work in later] == [None] * 4
            assert [(w.output_to_prune, w.deliveries_to_prune) for w in await pending_work(db)] == [
                (False, False)
            ] * 4
        finally:
            await db.dispose()

    asyncio.run(scenario())


@pytest.mark.postgres
def test_the_function_reads_each_tenant_under_its_policy_and_gives_the_caller_its_tenant_back(
    fresh_postgres_url: str,
) -> None:
    async def scenario() -> None:
        await upgrade_to_head_async(fresh_postgres_url)
        db = open_database(Settings(database_url=fresh_postgres_url))
        try:
            await _seed(db)
            async with db.transaction("pw-b", write=False) as conn:
                await conn.execute(text("SELECT * FROM sm_pending_work(NULL, NULL, true)"))
                # Still pw-b's transaction: pw-a's output stays invisible.
                assert (await conn.execute(select(broker_outbox.c.tenant_id))).all() == []
                assert set((await conn.execute(select(webhook_deliveries.c.tenant_id))).scalars()) == {"pw-b"}
                assert (await conn.execute(SETTING)).scalar() == "pw-b"
            async with db.transaction(None, write=False) as conn:
                await conn.execute(text("SELECT * FROM sm_pending_work(NULL, NULL, true)"))
                assert (await conn.execute(SETTING)).scalar() == ""  # no tenant: no rows
                assert (await conn.execute(select(broker_outbox.c.tenant_id))).all() == []
        finally:
            await db.dispose()

    asyncio.run(scenario())
