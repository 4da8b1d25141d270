"""Running Alembic from code: `state-manager migrate`, the embedded start, and the tests."""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported only where a migration runs: with its script machinery it is about 7 MB of every
# serving worker (issue 8's memory budget, docs/benchmarks.md "Memory"), which needs only the head's name.
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_REVISION = re.compile(r"^revision(?:: str)? = [\"']([^\"']+)[\"']", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision(?:: [^=]+)? = (?:None|[\"']([^\"']+)[\"'])", re.MULTILINE)


def alembic_config(database_url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest revision, read from the version files' `revision` and `down_revision` lines (the one
    no other revision follows; tests/test_head_revision.py checks it against Alembic's own answer)."""
    revisions: set[str] = set()
    followed: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        text = path.read_text()
        revision, down = _REVISION.search(text), _DOWN_REVISION.search(text)
        if revision is None or down is None:
            raise RuntimeError(f"{path.name}: no revision / down_revision line")
        revisions.add(revision.group(1))
        if down.group(1):
            followed.add(down.group(1))
    heads = revisions - followed
    if len(heads) != 1:
        raise RuntimeError(f"the migrations have {len(heads)} heads: {sorted(heads)}")
    return heads.pop()


def upgrade_to_head(database_url: str) -> None:
    """Migrate to the newest revision. Runs Alembic's own event loop, so call it from a thread."""
    from alembic import command

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
