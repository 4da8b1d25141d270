"""The migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from harness import clean_env, run_cli
from state_manager.db import tables  # noqa: F401  (fills the metadata)
from state_manager.db.metadata import metadata


def _differences(url: str) -> list[Any]:
    async def compare() -> list[Any]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(
                    lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
                )
        finally:
            await engine.dispose()

    return asyncio.run(compare())


def test_migrated_schema_matches_the_models(fresh_database_url: str, tmp_path: Path) -> None:
    done = run_cli("migrate", env=clean_env(DATABASE_URL=fresh_database_url), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert _differences(fresh_database_url) == []
