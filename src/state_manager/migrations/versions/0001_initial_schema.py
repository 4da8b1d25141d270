"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-24 18:47:00.052582
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from state_manager.db.types import JSONDoc, UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TENANT_TABLES = (
    "customers",
    "customer_identities",
    "conversations",
    "conversation_participants",
    "conversation_state_changes",
    "messages",
    "pending_receipts",
    "context_entries",
)
APP_ROLE = "state_manager_app"


def _enable_row_level_security() -> None:
    """The second wall: a tenant's rows are visible only inside a transaction that names that tenant.

    The service switches to APP_ROLE on every connection; the role owns nothing and cannot bypass
    row-level security, so FORCE applies to it even when the login user owns the tables.
    """
    op.execute(
        f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                CREATE ROLE {APP_ROLE} NOLOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT;
            END IF;
        END
        $$
        """
    )
    op.execute(f"GRANT {APP_ROLE} TO CURRENT_USER")
    op.execute(f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_ROLE}")
    op.execute(f"REVOKE INSERT, UPDATE, DELETE ON alembic_version FROM {APP_ROLE}")
    op.execute(
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {APP_ROLE}"
    )
    for table in TENANT_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table}"
            " USING (tenant_id = current_setting('app.tenant_id', true))"
            " WITH CHECK (tenant_id = current_setting('app.tenant_id', true))"
        )


def upgrade() -> None:
    op.create_table(
        "context_entries",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("scope_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("value", JSONDoc, nullable=True),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "scope", "scope_id", "key", name=op.f("pk_context_entries")),
    )
    with op.batch_alter_table("context_entries", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_context_entries_tenant_id_scope_scope_id"),
            ["tenant_id", "scope", "scope_id"],
            unique=False,
        )

    op.create_table(
        "organizations",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_organizations")),
    )
    op.create_table(
        "pending_receipts",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("id_kind", sa.String(length=8), nullable=False),
        sa.Column("external_id", sa.String(length=256), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("failure_code", sa.String(length=64), nullable=True),
        sa.Column("failure_title", sa.String(length=512), nullable=True),
        sa.Column("failure_details", sa.Text(), nullable=True),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_pending_receipts")),
    )
    with op.batch_alter_table("pending_receipts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_pending_receipts_tenant_id_id_kind_external_id"),
            ["tenant_id", "id_kind", "external_id"],
            unique=False,
        )

    op.create_table(
        "tenants",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("organization_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("settings", JSONDoc, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_tenants_organization_id_organizations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
    )
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tenants_organization_id"), ["organization_id"], unique=False)

    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=True),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_api_keys_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_keys_prefix")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "customers",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("display_name", sa.String(length=256), nullable=True),
        sa.Column("language", sa.String(length=35), nullable=True),
        sa.Column("preferences", JSONDoc, nullable=False),
        sa.Column("consent", JSONDoc, nullable=False),
        sa.Column("attributes", JSONDoc, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_customers_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_customers")),
    )
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_customers_tenant_id_created_at"),
            ["tenant_id", "created_at"],
            unique=False,
        )

    op.create_table(
        "conversations",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("customer_id", sa.Uuid(), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("business_number_id", sa.String(length=64), nullable=False),
        sa.Column("business_display_number", sa.String(length=64), nullable=True),
        sa.Column("genesys_conversation_id", sa.String(length=128), nullable=True),
        sa.Column("genesys_communication_id", sa.String(length=128), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("state_reason", sa.String(length=200), nullable=True),
        sa.Column("state_changed_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("last_activity_at", UTCDateTime(), nullable=False),
        sa.Column("last_inbound_at", UTCDateTime(), nullable=True),
        sa.Column("last_outbound_at", UTCDateTime(), nullable=True),
        sa.Column("reply_window_ends_at", UTCDateTime(), nullable=True),
        sa.Column("closed_at", UTCDateTime(), nullable=True),
        sa.Column("close_reason", sa.String(length=200), nullable=True),
        sa.Column("metadata", JSONDoc, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "customer_id"],
            ["customers.tenant_id", "customers.id"],
            name=op.f("fk_conversations_tenant_id_customer_id_customers"),
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_conversations")),
    )
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_conversations_tenant_id_customer_id_started_at"),
            ["tenant_id", "customer_id", "started_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_conversations_tenant_id_started_at"),
            ["tenant_id", "started_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_conversations_tenant_id_state_last_activity_at"),
            ["tenant_id", "state", "last_activity_at"],
            unique=False,
        )
        batch_op.create_index(
            "uq_conversations_genesys_communication_id",
            ["tenant_id", "genesys_communication_id"],
            unique=True,
            postgresql_where=sa.text("genesys_communication_id IS NOT NULL"),
            sqlite_where=sa.text("genesys_communication_id IS NOT NULL"),
        )
        batch_op.create_index(
            "uq_conversations_genesys_conversation_id",
            ["tenant_id", "genesys_conversation_id"],
            unique=True,
            postgresql_where=sa.text("genesys_conversation_id IS NOT NULL"),
            sqlite_where=sa.text("genesys_conversation_id IS NOT NULL"),
        )
        batch_op.create_index(
            "uq_conversations_open_per_customer_number",
            ["tenant_id", "customer_id", "business_number_id"],
            unique=True,
            postgresql_where=sa.text("state IN ('pending', 'active', 'waiting', 'error')"),
            sqlite_where=sa.text("state IN ('pending', 'active', 'waiting', 'error')"),
        )

    op.create_table(
        "customer_identities",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("external_id", sa.String(length=256), nullable=False),
        sa.Column("customer_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "customer_id"],
            ["customers.tenant_id", "customers.id"],
            name=op.f("fk_customer_identities_tenant_id_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "channel", "external_id", name=op.f("pk_customer_identities")),
    )
    with op.batch_alter_table("customer_identities", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_customer_identities_tenant_id_customer_id"),
            ["tenant_id", "customer_id"],
            unique=False,
        )

    op.create_table(
        "conversation_participants",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("participant_ref", sa.String(length=128), nullable=False),
        sa.Column("display_name", sa.String(length=256), nullable=True),
        sa.Column("joined_at", UTCDateTime(), nullable=False),
        sa.Column("left_at", UTCDateTime(), nullable=True),
        sa.Column("metadata", JSONDoc, nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "conversation_id"],
            ["conversations.tenant_id", "conversations.id"],
            name=op.f("fk_conversation_participants_tenant_id_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_conversation_participants")),
    )
    with op.batch_alter_table("conversation_participants", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_conversation_participants_tenant_id_conversation_id"),
            ["tenant_id", "conversation_id"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_conversation_participants_tenant_id_role_participant_ref"),
            ["tenant_id", "role", "participant_ref"],
            unique=False,
        )
        batch_op.create_index(
            "uq_conversation_participants_present",
            ["tenant_id", "conversation_id", "role", "participant_ref"],
            unique=True,
            postgresql_where=sa.text("left_at IS NULL"),
            sqlite_where=sa.text("left_at IS NULL"),
        )

    op.create_table(
        "conversation_state_changes",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=True),
        sa.Column("to_state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("changed_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "conversation_id"],
            ["conversations.tenant_id", "conversations.id"],
            name=op.f("fk_conversation_state_changes_tenant_id_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_conversation_state_changes")),
    )
    with op.batch_alter_table("conversation_state_changes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_conversation_state_changes_tenant_id_conversation_id_changed_at"),
            ["tenant_id", "conversation_id", "changed_at"],
            unique=False,
        )

    op.create_table(
        "messages",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("wamid", sa.String(length=256), nullable=True),
        sa.Column("genesys_message_id", sa.String(length=128), nullable=True),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("media_url", sa.Text(), nullable=True),
        sa.Column("media_mime_type", sa.String(length=128), nullable=True),
        sa.Column("media_filename", sa.String(length=512), nullable=True),
        sa.Column("media_caption", sa.Text(), nullable=True),
        sa.Column("sender_type", sa.String(length=16), nullable=False),
        sa.Column("sender_id", sa.String(length=128), nullable=True),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("queued_at", UTCDateTime(), nullable=True),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.Column("read_at", UTCDateTime(), nullable=True),
        sa.Column("failed_at", UTCDateTime(), nullable=True),
        sa.Column("failure_code", sa.String(length=64), nullable=True),
        sa.Column("failure_title", sa.String(length=512), nullable=True),
        sa.Column("failure_details", sa.Text(), nullable=True),
        sa.Column(
            "status",
            sa.String(length=16),
            sa.Computed(
                "CASE WHEN read_at IS NOT NULL THEN 'read' WHEN delivered_at IS NOT NULL THEN 'delivered' WHEN failed_at IS NOT NULL THEN 'failed' WHEN sent_at IS NOT NULL THEN 'sent' WHEN direction = 'inbound' THEN 'received' ELSE 'queued' END",
                persisted=True,
            ),
            nullable=True,
        ),
        sa.Column("metadata", JSONDoc, nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "conversation_id"],
            ["conversations.tenant_id", "conversations.id"],
            name=op.f("fk_messages_tenant_id_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_messages")),
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_messages_tenant_id_conversation_id_occurred_at"),
            ["tenant_id", "conversation_id", "occurred_at"],
            unique=False,
        )
        batch_op.create_index(
            "uq_messages_genesys_message_id",
            ["tenant_id", "genesys_message_id"],
            unique=True,
            postgresql_where=sa.text("genesys_message_id IS NOT NULL"),
            sqlite_where=sa.text("genesys_message_id IS NOT NULL"),
        )
        batch_op.create_index(
            "uq_messages_wamid",
            ["tenant_id", "wamid"],
            unique=True,
            postgresql_where=sa.text("wamid IS NOT NULL"),
            sqlite_where=sa.text("wamid IS NOT NULL"),
        )
    if op.get_bind().dialect.name == "postgresql":
        _enable_row_level_security()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in TENANT_TABLES:
            op.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {table}")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_messages_wamid",
            postgresql_where=sa.text("wamid IS NOT NULL"),
            sqlite_where=sa.text("wamid IS NOT NULL"),
        )
        batch_op.drop_index(
            "uq_messages_genesys_message_id",
            postgresql_where=sa.text("genesys_message_id IS NOT NULL"),
            sqlite_where=sa.text("genesys_message_id IS NOT NULL"),
        )
        batch_op.drop_index(batch_op.f("ix_messages_tenant_id_conversation_id_occurred_at"))

    op.drop_table("messages")
    with op.batch_alter_table("conversation_state_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_conversation_state_changes_tenant_id_conversation_id_changed_at"))

    op.drop_table("conversation_state_changes")
    with op.batch_alter_table("conversation_participants", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_conversation_participants_present",
            postgresql_where=sa.text("left_at IS NULL"),
            sqlite_where=sa.text("left_at IS NULL"),
        )
        batch_op.drop_index(batch_op.f("ix_conversation_participants_tenant_id_role_participant_ref"))
        batch_op.drop_index(batch_op.f("ix_conversation_participants_tenant_id_conversation_id"))

    op.drop_table("conversation_participants")
    with op.batch_alter_table("customer_identities", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_customer_identities_tenant_id_customer_id"))

    op.drop_table("customer_identities")
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_conversations_open_per_customer_number",
            postgresql_where=sa.text("state IN ('pending', 'active', 'waiting', 'error')"),
            sqlite_where=sa.text("state IN ('pending', 'active', 'waiting', 'error')"),
        )
        batch_op.drop_index(
            "uq_conversations_genesys_conversation_id",
            postgresql_where=sa.text("genesys_conversation_id IS NOT NULL"),
            sqlite_where=sa.text("genesys_conversation_id IS NOT NULL"),
        )
        batch_op.drop_index(
            "uq_conversations_genesys_communication_id",
            postgresql_where=sa.text("genesys_communication_id IS NOT NULL"),
            sqlite_where=sa.text("genesys_communication_id IS NOT NULL"),
        )
        batch_op.drop_index(batch_op.f("ix_conversations_tenant_id_state_last_activity_at"))
        batch_op.drop_index(batch_op.f("ix_conversations_tenant_id_started_at"))
        batch_op.drop_index(batch_op.f("ix_conversations_tenant_id_customer_id_started_at"))

    op.drop_table("conversations")
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_customers_tenant_id_created_at"))

    op.drop_table("customers")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_tenant_id"))

    op.drop_table("api_keys")
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tenants_organization_id"))

    op.drop_table("tenants")
    with op.batch_alter_table("pending_receipts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pending_receipts_tenant_id_id_kind_external_id"))

    op.drop_table("pending_receipts")
    op.drop_table("organizations")
    with op.batch_alter_table("context_entries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_context_entries_tenant_id_scope_scope_id"))

    op.drop_table("context_entries")
