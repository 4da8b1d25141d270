"""Conversations, their participants and the history of their state changes."""

from sqlalchemy import (
    Column,
    ForeignKeyConstraint,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    Uuid,
    text,
)

from state_manager.db.metadata import metadata
from state_manager.db.types import JSONDoc, UTCDateTime

# States in which a conversation still belongs to its (customer, business number): at most one of them.
OPEN_STATES_SQL = "state IN ('pending', 'active', 'waiting', 'error')"

conversations = Table(
    "conversations",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("id", Uuid, nullable=False),
    Column("customer_id", Uuid, nullable=False),
    Column("channel", String(32), nullable=False),
    Column("business_number_id", String(64), nullable=False),
    Column("business_display_number", String(64), nullable=True),
    Column("genesys_conversation_id", String(128), nullable=True),
    Column("genesys_communication_id", String(128), nullable=True),
    Column("state", String(16), nullable=False),
    Column("state_reason", String(200), nullable=True),
    Column("state_changed_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("last_activity_at", UTCDateTime, nullable=False),
    Column("last_inbound_at", UTCDateTime, nullable=True),
    Column("last_outbound_at", UTCDateTime, nullable=True),
    Column("reply_window_ends_at", UTCDateTime, nullable=True),
    Column("closed_at", UTCDateTime, nullable=True),
    Column("close_reason", String(200), nullable=True),
    Column("metadata", JSONDoc, nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("tenant_id", "id"),
    ForeignKeyConstraint(["tenant_id", "customer_id"], ["customers.tenant_id", "customers.id"]),
    Index(
        "uq_conversations_open_per_customer_number",
        "tenant_id",
        "customer_id",
        "business_number_id",
        unique=True,
        postgresql_where=text(OPEN_STATES_SQL),
        sqlite_where=text(OPEN_STATES_SQL),
    ),
    Index(
        "uq_conversations_genesys_conversation_id",
        "tenant_id",
        "genesys_conversation_id",
        unique=True,
        postgresql_where=text("genesys_conversation_id IS NOT NULL"),
        sqlite_where=text("genesys_conversation_id IS NOT NULL"),
    ),
    Index(
        "uq_conversations_genesys_communication_id",
        "tenant_id",
        "genesys_communication_id",
        unique=True,
        postgresql_where=text("genesys_communication_id IS NOT NULL"),
        sqlite_where=text("genesys_communication_id IS NOT NULL"),
    ),
    Index(None, "tenant_id", "customer_id", "started_at"),
    # Not on last_activity_at: every inbound message moves that clock, and an indexed column changing makes
    # PostgreSQL write a new entry in every index (no HOT update). Open conversations by activity are read
    # by the background jobs only, through the open-conversation index.
    Index(None, "tenant_id", "state"),
    # For listing in time order. Without `id`: with it, a lookup by (tenant_id, id) on a table without
    # statistics could be planned on this index (a scan of the whole tenant) instead of the primary key.
    Index(None, "tenant_id", "started_at"),
    # On PostgreSQL the table also keeps a fifth of each page free (fillfactor 80, set by migration 0012),
    # so that an update finds room on its page for the row's next version.
)

participants = Table(
    "conversation_participants",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("id", Uuid, nullable=False),
    Column("conversation_id", Uuid, nullable=False),
    Column("role", String(16), nullable=False),
    # The agent's Genesys user ID, the bot's name, or the customer's ID.
    Column("participant_ref", String(128), nullable=False),
    Column("display_name", String(256), nullable=True),
    Column("joined_at", UTCDateTime, nullable=False),
    Column("left_at", UTCDateTime, nullable=True),
    Column("metadata", JSONDoc, nullable=False),
    PrimaryKeyConstraint("tenant_id", "id"),
    ForeignKeyConstraint(
        ["tenant_id", "conversation_id"], ["conversations.tenant_id", "conversations.id"], ondelete="CASCADE"
    ),
    Index(None, "tenant_id", "conversation_id"),
    Index(None, "tenant_id", "role", "participant_ref"),
    Index(
        "uq_conversation_participants_present",
        "tenant_id",
        "conversation_id",
        "role",
        "participant_ref",
        unique=True,
        postgresql_where=text("left_at IS NULL"),
        sqlite_where=text("left_at IS NULL"),
    ),
)

state_changes = Table(
    "conversation_state_changes",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("id", Uuid, nullable=False),
    Column("conversation_id", Uuid, nullable=False),
    Column("from_state", String(16), nullable=True),
    Column("to_state", String(16), nullable=False),
    Column("reason", Text, nullable=True),
    Column("changed_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("tenant_id", "id"),
    ForeignKeyConstraint(
        ["tenant_id", "conversation_id"], ["conversations.tenant_id", "conversations.id"], ondelete="CASCADE"
    ),
    Index(None, "tenant_id", "conversation_id", "changed_at"),
)
