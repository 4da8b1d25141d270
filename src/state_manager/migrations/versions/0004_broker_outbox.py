"""queue output outbox, per tenant

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from state_manager.db.types import UTCDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "broker_outbox",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("destination", sa.String(length=64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("published_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_broker_outbox")),
    )
    with op.batch_alter_table("broker_outbox", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_broker_outbox_tenant_id_published_at_seq"),
            ["tenant_id", "published_at", "seq"],
            unique=False,
        )
    if op.get_bind().dialect.name == "postgresql":
        # The same wall as every tenant table (0001); the default privileges of 0001 granted the app role.
        op.execute("ALTER TABLE broker_outbox ENABLE ROW LEVEL SECURITY")
        op.execute("ALTER TABLE broker_outbox FORCE ROW LEVEL SECURITY")
        op.execute(
            "CREATE POLICY tenant_isolation ON broker_outbox"
            " USING (tenant_id = current_setting('app.tenant_id', true))"
            " WITH CHECK (tenant_id = current_setting('app.tenant_id', true))"
        )


def downgrade() -> None:
    with op.batch_alter_table("broker_outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_broker_outbox_tenant_id_published_at_seq"))
    op.drop_table("broker_outbox")
