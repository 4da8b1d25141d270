"""Projecting a conversation again writes only the rows that changed (analytics/projector.py,
`_replace_rows`): nothing when nothing changed, the one bucket a new message counts in when one came, and
whatever it takes to repair rows that differ from what the source tables say. On both backends."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from harness import add_tenants
from state_manager.analytics import projector
from state_manager.analytics.models import PROJECTION_TABLES, analytics_conversations, analytics_facts
from state_manager.cache.lookups import open_lookup_cache
from state_manager.db import Database, open_database
from state_manager.db.migrate import upgrade_to_head_async
from state_manager.db.types import utcnow
from state_manager.messages.inbound import inbound_recorder
from state_manager.messages.schemas import InboundMessage
from state_manager.settings import Settings

TENANT = "pw-writes"


async def rows_written(conn: AsyncConnection) -> int:
    """Rows inserted, updated or deleted so far by this transaction (PostgreSQL) or connection (SQLite)."""
    if conn.dialect.name == "postgresql":
        query = text(
            "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_xact_user_tables"
            " WHERE relname LIKE 'analytics%'"
        )
    else:
        query = text("SELECT total_changes()")
    return int((await conn.execute(query)).scalar_one())


async def project_counting(db: Database, ids: list[uuid.UUID]) -> int:
    """Projects these conversations again; the rows that took."""
    async with db.transaction(TENANT, write=True) as conn:
        before = await rows_written(conn)
        await projector.project(conn, TENANT, ids)
        return await rows_written(conn) - before


async def projection(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every projection row of the tenant, without the time it was written."""
    found = {}
    async with db.transaction(TENANT, write=False) as conn:
        for table in PROJECTION_TABLES:
            columns = [column for column in table.columns if column.name != "projected_at"]
            rows = (await conn.execute(select(*columns).where(table.c.tenant_id == TENANT))).all()
            found[table.name] = sorted(tuple(row) for row in rows)
    return found


def test_projecting_again_writes_only_what_changed(fresh_database_url: str) -> None:
    url = fresh_database_url

    async def scenario() -> None:
        await upgrade_to_head_async(url)
        settings = Settings(database_url=url)
        db = open_database(settings)
        recorder = inbound_recorder(db, open_lookup_cache(settings))
        now = utcnow()
        try:
            await add_tenants(db, "pw", TENANT)
            sent = 0

            async def message(wa_id: str, hours_ago: float) -> uuid.UUID:
                nonlocal sent
                sent += 1
                recorded = await recorder.record(
                    TENANT,
                    InboundMessage(
                        wa_id=wa_id,
                        business_number_id="100",
                        wamid=f"wamid.writes.{sent}",
                        text="hello",
                        occurred_at=now - dt.timedelta(hours=hours_ago),
                    ),
                )
                return recorded.conversation_id

            # Two conversations whose messages fall in three quarter hours each.
            ids = [
                await message(wa_id, hours)
                for wa_id in ("5511911110001", "5511911110002")
                for hours in (3, 2, 1)
            ]
            first, second = ids[0], ids[3]
            assert await project_counting(db, [first, second]) > 0
            async with db.transaction(TENANT, write=False) as conn:
                projected_at = (
                    (await conn.execute(select(analytics_conversations.c.projected_at))).scalars().all()
                )

            # Nothing changed: nothing is written, not even the time of projection.
            assert await project_counting(db, [first, second]) == 0
            async with db.transaction(TENANT, write=False) as conn:
                again = (await conn.execute(select(analytics_conversations.c.projected_at))).scalars().all()
            assert again == projected_at

            # A new message in the first, in a quarter hour of its own: a row for that bucket, and updates of
            # the conversation's total (on the row of its start) and of its reply window; the second
            # conversation's rows are left alone.
            await message("5511911110001", 0.5)
            assert await project_counting(db, [first, second]) == 3
            current = await projection(db)
            counted = [row for row in current["analytics_facts"] if row[1] == first]
            assert sum(row[FACT_INBOUND] for row in counted) == 4

            # Rows that disagree with the source tables are repaired: a count off, a summary missing, a
            # row for an actor the conversation never had.
            async with db.transaction(TENANT, write=True) as conn:
                f = analytics_facts.c
                await conn.execute(
                    update(analytics_facts).where(f.conversation_id == second).values(inbound=9)
                )
                await conn.execute(
                    delete(analytics_conversations).where(analytics_conversations.c.conversation_id == first)
                )
                stray = next(row for row in current["analytics_facts"] if row[1] == first)
                await conn.execute(
                    insert(analytics_facts).values(
                        tenant_id=TENANT,
                        conversation_id=first,
                        bucket=stray[2],
                        actor="agent:nobody",
                        business_number_id="100",
                        inbound=1,
                    )
                )
            assert await project_counting(db, [first, second]) == 3 + 1 + 1
            assert await projection(db) == current
            # ... and what the writes left is what projecting from nothing gives.
            async with db.transaction(TENANT, write=True) as conn:
                for table in PROJECTION_TABLES:
                    await conn.execute(delete(table).where(table.c.tenant_id == TENANT))
                await projector.project(conn, TENANT, [first, second], replace=False)
            assert await projection(db) == current
        finally:
            await db.dispose()

    asyncio.run(scenario())


# Position of `inbound` in a row of `projection()["analytics_facts"]`.
FACT_INBOUND = [column.name for column in analytics_facts.columns].index("inbound")
