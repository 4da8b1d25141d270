"""Start-up names what in PostgreSQL's configuration will hurt the service: autovacuum off (or the
statistics it needs off) leaves the hot paths with plans made for empty tables and rows never cleaned up."""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy import text

from state_manager import startup
from state_manager.db import open_database
from state_manager.db.postgres import maintenance_warnings
from state_manager.settings import Settings


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"autovacuum": "on", "track_counts": "on"}, None),
        ({"autovacuum": "off", "track_counts": "on"}, "autovacuum off"),
        ({"autovacuum": "on", "track_counts": "off"}, "track_counts off"),
        ({"autovacuum": "off", "track_counts": "off"}, "autovacuum and track_counts off"),
    ],
)
def test_a_warning_names_each_setting_that_stops_autovacuum(
    settings: dict[str, str], named: str | None
) -> None:
    warnings = maintenance_warnings(settings)
    if named is None:
        assert warnings == []
    else:
        assert len(warnings) == 1
        assert named in warnings[0]


@pytest.mark.postgres
def test_start_up_logs_the_warning_for_the_servers_own_settings(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> dict[str, str]:
        settings = Settings(database_url=postgres_url)
        db = open_database(settings)
        try:
            async with db.transaction(None, write=False) as conn:
                found = await conn.execute(
                    text("SELECT name, setting FROM pg_settings WHERE name IN ('autovacuum', 'track_counts')")
                )
                server = {str(name): str(value) for name, value in found}
            with caplog.at_level(logging.WARNING, logger="state_manager.startup"):
                await startup.prepare_schema(settings, db)
        finally:
            await db.dispose()
        return server

    server = asyncio.run(scenario())
    logged = [
        record.getMessage() for record in caplog.records if "autovacuum never runs" in record.getMessage()
    ]
    # The server's settings are not this test's to change (a reload of the whole cluster): whatever they
    # are, start-up must log what maintenance_warnings says of them.
    assert logged == maintenance_warnings(server)
