"""An inbound message moves its conversation's clocks without writing a new index entry (migration 0012):
PostgreSQL updates the row in place on its page (a HOT update), so a busy conversation leaves no trail of
versions that every later lookup of it walks through until VACUUM."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from harness import add_tenants
from state_manager.cache.lookups import open_lookup_cache
from state_manager.db import open_database
from state_manager.db.migrate import upgrade_to_head_async
from state_manager.messages.inbound import inbound_recorder
from state_manager.messages.schemas import InboundMessage
from state_manager.settings import Settings

pytestmark = pytest.mark.postgres

# This transaction's own counts, before they are flushed to the statistics views.
UPDATES = text(
    "SELECT pg_stat_get_xact_tuples_updated('conversations'::regclass),"
    " pg_stat_get_xact_tuples_hot_updated('conversations'::regclass)"
)


def test_messages_of_an_open_conversation_update_it_in_place(fresh_postgres_url: str) -> None:
    async def scenario() -> None:
        await upgrade_to_head_async(fresh_postgres_url)
        settings = Settings(database_url=fresh_postgres_url)
        db = open_database(settings)
        recorder = inbound_recorder(db, open_lookup_cache(settings))
        try:
            await add_tenants(db, "hot", "hot-a")

            def message(n: int) -> InboundMessage:
                return InboundMessage(
                    wa_id="5511987654321", business_number_id="100", wamid=f"wamid.hot.{n}", text=f"hi {n}"
                )

            await recorder.record("hot-a", message(0))  # customer and conversation created
            async with db.transaction("hot-a", write=True) as conn:
                for n in range(1, 21):
                    recorded = await recorder.record_in(conn, "hot-a", message(n))
                    assert not recorded.conversation_created
                    assert not recorded.duplicate
                updated, hot = (await conn.execute(UPDATES)).one()
            # Every update of the row was HOT (at least one per message; before 0012, 1 of the 21 was).
            assert updated >= 20
            assert hot == updated
            async with db.transaction(None, write=False) as conn:
                options = (
                    await conn.execute(
                        text("SELECT reloptions FROM pg_class WHERE relname = 'conversations'")
                    )
                ).scalar_one()
            assert options == ["fillfactor=80"]  # the room on each page that lets the update stay on it
        finally:
            await db.dispose()

    asyncio.run(scenario())
