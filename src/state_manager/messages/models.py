"""Messages, their delivery receipts per status, and receipts held until their message is known."""

from sqlalchemy import (
    Column,
    Computed,
    ForeignKeyConstraint,
    Index,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    Uuid,
    text,
)

from state_manager.db.metadata import metadata
from state_manager.db.types import JSONDoc, UTCDateTime

# The current status is derived from which receipts were seen, never stored by a writer: the same
# receipts in any order give the same row. See messages/status.py for the rule and its reasons.
DERIVED_STATUS_SQL = (
    "CASE"
    " WHEN read_at IS NOT NULL THEN 'read'"
    " WHEN delivered_at IS NOT NULL THEN 'delivered'"
    " WHEN failed_at IS NOT NULL THEN 'failed'"
    " WHEN sent_at IS NOT NULL THEN 'sent'"
    " WHEN direction = 'inbound' THEN 'received'"
    " ELSE 'queued' END"
)

messages = Table(
    "messages",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("id", Uuid, nullable=False),
    Column("conversation_id", Uuid, nullable=False),
    Column("direction", String(8), nullable=False),
    Column("wamid", String(256), nullable=True),
    Column("genesys_message_id", String(128), nullable=True),
    Column("type", String(32), nullable=False),
    Column("text", Text, nullable=True),
    Column("media_url", Text, nullable=True),
    Column("media_mime_type", String(128), nullable=True),
    Column("media_filename", String(512), nullable=True),
    Column("media_caption", Text, nullable=True),
    Column("sender_type", String(16), nullable=False),
    Column("sender_id", String(128), nullable=True),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("queued_at", UTCDateTime, nullable=True),
    Column("sent_at", UTCDateTime, nullable=True),
    Column("delivered_at", UTCDateTime, nullable=True),
    Column("read_at", UTCDateTime, nullable=True),
    Column("failed_at", UTCDateTime, nullable=True),
    Column("failure_code", String(64), nullable=True),
    Column("failure_title", String(512), nullable=True),
    Column("failure_details", Text, nullable=True),
    Column("status", String(16), Computed(DERIVED_STATUS_SQL, persisted=True)),
    Column("metadata", JSONDoc, nullable=False),
    # Set when the content (text, media, caption) was removed by retention or an erasure; the rest stays.
    Column("redacted_at", UTCDateTime, nullable=True),
    PrimaryKeyConstraint("tenant_id", "id"),
    ForeignKeyConstraint(
        ["tenant_id", "conversation_id"], ["conversations.tenant_id", "conversations.id"], ondelete="CASCADE"
    ),
    Index(
        "uq_messages_wamid",
        "tenant_id",
        "wamid",
        unique=True,
        postgresql_where=text("wamid IS NOT NULL"),
        sqlite_where=text("wamid IS NOT NULL"),
    ),
    Index(
        "uq_messages_genesys_message_id",
        "tenant_id",
        "genesys_message_id",
        unique=True,
        postgresql_where=text("genesys_message_id IS NOT NULL"),
        sqlite_where=text("genesys_message_id IS NOT NULL"),
    ),
    # For listing in time order. Without `id`: with it, a lookup by (tenant_id, id) on a table without
    # statistics could be planned on this index (a scan of the whole tenant) instead of the primary key.
    Index(None, "tenant_id", "conversation_id", "occurred_at"),
    # What retention has yet to redact, oldest first; redacted history drops out of it.
    Index(
        "ix_messages_unredacted",
        "tenant_id",
        "occurred_at",
        postgresql_where=text("redacted_at IS NULL"),
        sqlite_where=text("redacted_at IS NULL"),
    ),
)

pending_receipts = Table(
    "pending_receipts",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("id", Uuid, nullable=False),
    # Which of the message's IDs the receipt names: "wamid" or "genesys".
    Column("id_kind", String(8), nullable=False),
    Column("external_id", String(256), nullable=False),
    Column("status", String(16), nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("failure_code", String(64), nullable=True),
    Column("failure_title", String(512), nullable=True),
    Column("failure_details", Text, nullable=True),
    Column("received_at", UTCDateTime, nullable=False),
    # `id` is derived from the receipt's content (messages.service.held_receipt_id), so a webhook
    # delivered twice is held once, while two receipts that differ in anything are both kept.
    PrimaryKeyConstraint("tenant_id", "id"),
    Index(None, "tenant_id", "id_kind", "external_id"),
)
