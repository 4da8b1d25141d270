"""Context: JSON values per key, for a conversation or for a customer (kept across conversations)."""

from sqlalchemy import Boolean, Column, Index, PrimaryKeyConstraint, String, Table, Uuid

from state_manager.db.metadata import metadata
from state_manager.db.types import JSONDoc, UTCDateTime

context_entries = Table(
    "context_entries",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("scope", String(16), nullable=False),
    Column("scope_id", Uuid, nullable=False),
    Column("key", String(128), nullable=False),
    Column("value", JSONDoc, nullable=True),
    # A removed key stays as a tombstone so that a late write with an older time cannot bring it back.
    Column("deleted", Boolean, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("tenant_id", "scope", "scope_id", "key"),
    Index(None, "tenant_id", "scope", "scope_id"),
)
