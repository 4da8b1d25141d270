"""durability: redaction and erasure marks, their indexes, trimmed events, the audit log, job leases

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from state_manager.db.types import JSONDoc, UTCDateTime

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable columns: SQLite adds them in place, PostgreSQL without rewriting the table.
    op.add_column("messages", sa.Column("redacted_at", UTCDateTime(), nullable=True))
    op.add_column("customers", sa.Column("erased_at", UTCDateTime(), nullable=True))
    op.add_column("event_relay", sa.Column("trimmed_through", sa.BigInteger(), nullable=True))
    op.create_index(
        "ix_events_message_recorded",
        "events",
        ["tenant_id", "message_id"],
        postgresql_where=sa.text("type = 'message.recorded'"),
        sqlite_where=sa.text("type = 'message.recorded'"),
    )
    op.create_index(
        "ix_messages_unredacted",
        "messages",
        ["tenant_id", "occurred_at"],
        postgresql_where=sa.text("redacted_at IS NULL"),
        sqlite_where=sa.text("redacted_at IS NULL"),
    )
    op.create_table(
        "audit_log",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("subject_type", sa.String(length=32), nullable=False),
        sa.Column("subject_id", sa.String(length=128), nullable=True),
        sa.Column("details", JSONDoc, nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_audit_log_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_audit_log")),
    )
    op.create_index(op.f("ix_audit_log_tenant_id_occurred_at"), "audit_log", ["tenant_id", "occurred_at"])
    op.create_index(
        op.f("ix_audit_log_tenant_id_subject_type_subject_id"),
        "audit_log",
        ["tenant_id", "subject_type", "subject_id"],
    )
    op.create_table(
        "job_leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", UTCDateTime(), nullable=True),
        sa.Column("last_started_at", UTCDateTime(), nullable=True),
        sa.Column("last_finished_at", UTCDateTime(), nullable=True),
        sa.Column("last_outcome", JSONDoc, nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_job_leases")),
    )
    if op.get_bind().dialect.name == "postgresql":
        # The same wall as every tenant table (0001); the default privileges of 0001 granted the app role.
        op.execute("ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY")
        op.execute("ALTER TABLE audit_log FORCE ROW LEVEL SECURITY")
        op.execute(
            "CREATE POLICY tenant_isolation ON audit_log"
            " USING (tenant_id = current_setting('app.tenant_id', true))"
            " WITH CHECK (tenant_id = current_setting('app.tenant_id', true))"
        )


def downgrade() -> None:
    op.drop_table("job_leases")
    op.drop_index(op.f("ix_audit_log_tenant_id_subject_type_subject_id"), table_name="audit_log")
    op.drop_index(op.f("ix_audit_log_tenant_id_occurred_at"), table_name="audit_log")
    op.drop_table("audit_log")
    # Plain DROP COLUMN on both (SQLite >= 3.35): a batch copy of `messages` fails on its computed column.
    op.drop_index("ix_messages_unredacted", table_name="messages")
    op.drop_index("ix_events_message_recorded", table_name="events")
    op.execute("ALTER TABLE event_relay DROP COLUMN trimmed_through")
    op.execute("ALTER TABLE customers DROP COLUMN erased_at")
    op.execute("ALTER TABLE messages DROP COLUMN redacted_at")
