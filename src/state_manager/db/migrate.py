"""Running Alembic from code: `state-manager migrate`, the embedded start, and the tests."""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite+aiosqlite://")).get_current_head()
    assert head is not None
    return head


def upgrade_to_head(database_url: str) -> None:
    """Migrate to the newest revision. Runs Alembic's own event loop, so call it from a thread."""
    config = alembic_config(database_url)
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        command.upgrade(config, "head")  # PostgreSQL: the migrations lock what they change
        return
    # Workers of one embedded service start together; one migrates, the others wait and find it done.
    lock = os.open(f"{url.database}.migrate-lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        command.upgrade(config, "head")
    finally:
        os.close(lock)  # releases the lock


async def upgrade_to_head_async(database_url: str) -> None:
    await asyncio.to_thread(upgrade_to_head, database_url)
