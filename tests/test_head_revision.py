"""`head_revision` reads the newest migration without Alembic (kept out of serving workers for memory);
it must name the head Alembic itself finds."""

from __future__ import annotations

from alembic.script import ScriptDirectory

from state_manager.db.migrate import alembic_config, head_revision


def test_head_revision_is_alembics_head() -> None:
    expected = ScriptDirectory.from_config(alembic_config("sqlite+aiosqlite://")).get_current_head()
    assert expected is not None
    assert head_revision() == expected
