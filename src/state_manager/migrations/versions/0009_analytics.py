"""analytics: the per-conversation facts projection, agent sessions and the projection's progress

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 05:00:00
"""

from collections.abc import Sequence

from alembic import op

from state_manager.analytics.models import ANALYTICS_TABLES

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    bind = op.get_bind()
    # The tables as the models define them (this release's shape); a later change gets its own revision.
    for table in ANALYTICS_TABLES:
        table.create(bind)
    if bind.dialect.name == "postgresql":
        # The same wall as every tenant table (0001); the default privileges of 0001 granted the app role.
        for table in ANALYTICS_TABLES:
            op.execute(f"ALTER TABLE {table.name} ENABLE ROW LEVEL SECURITY")
            op.execute(f"ALTER TABLE {table.name} FORCE ROW LEVEL SECURITY")
            op.execute(
                f"CREATE POLICY tenant_isolation ON {table.name}"
                " USING (tenant_id = current_setting('app.tenant_id', true))"
                " WITH CHECK (tenant_id = current_setting('app.tenant_id', true))"
            )


def downgrade() -> None:
    for table in reversed(ANALYTICS_TABLES):
        op.drop_table(table.name)
