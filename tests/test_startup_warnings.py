"""Start-up names what in PostgreSQL's configuration will hurt the service: autovacuum off leaves the hot
paths with plans made for empty tables and rows that are never cleaned up."""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy import text

from state_manager import startup
from state_manager.db import open_database
from state_manager.settings import Settings

pytestmark = pytest.mark.postgres


def test_start_up_warns_when_autovacuum_is_off_and_only_then(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> str:
        settings = Settings(database_url=postgres_url)
        db = open_database(settings)
        try:
            async with db.transaction(None, write=False) as conn:
                autovacuum = (await conn.execute(text("SHOW autovacuum"))).scalar_one()
            with caplog.at_level(logging.WARNING, logger="state_manager.startup"):
                await startup.prepare_schema(settings, db)
        finally:
            await db.dispose()
        return str(autovacuum)

    autovacuum = asyncio.run(scenario())
    warned = [record.getMessage() for record in caplog.records if "autovacuum off" in record.getMessage()]
    # The server's setting is not this test's to change (it needs a reload of the whole cluster): whichever
    # it is, the warning must match it.
    assert len(warned) == (1 if autovacuum == "off" else 0), (autovacuum, warned)
