"""A job's lease: renewed while its holder works, exclusive, released with the outcome (on SQLite: the
rule is one upsert, the same on PostgreSQL, where the scheduler test runs two instances)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from state_manager.db import open_database
from state_manager.db.migrate import upgrade_to_head_async
from state_manager.jobs import lease
from state_manager.settings import Settings


def test_a_held_lease_is_renewed_exclusive_and_released(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'sm.db'}"

    async def scenario() -> None:
        await upgrade_to_head_async(url)
        db = open_database(Settings(database_url=url))
        try:
            async with lease.holding(db, "demo", "first", seconds=0.6) as held:
                await asyncio.sleep(1.5)  # well past the lease's life: only renewals keep it
                assert not held.should_stop()
                assert not await lease.acquire(db, "demo", "second", seconds=0.6)
                held.outcome = {"changed": 3}
            [row] = await lease.leases(db)
            assert (row["holder"], row["lease_expires_at"]) == (None, None)
            assert row["last_outcome"] == {"status": "done", "changed": 3}
            assert await lease.acquire(db, "demo", "second", seconds=0.6)
            # A job that ran moments ago is not run again by another instance's schedule.
            await lease.release(db, "demo", "second", {"status": "done"})
            assert not await lease.acquire(db, "demo", "third", seconds=0.6, not_run_within=60)
        finally:
            await db.dispose()

    asyncio.run(scenario())
