"""Raw webhook bodies as they were accepted, per tenant: Meta keeps no history, so this is the only copy,
and `state-manager replay` can process them again (every step is idempotent)."""

from sqlalchemy import Column, Index, Integer, PrimaryKeyConstraint, String, Table, Text, Uuid

from state_manager.db.metadata import metadata
from state_manager.db.types import UTCDateTime

webhook_events = Table(
    "webhook_events",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("id", Uuid, nullable=False),
    Column("source", String(16), nullable=False),  # "whatsapp"
    Column("received_at", UTCDateTime, nullable=False),
    Column("items", Integer, nullable=False),
    Column("body", Text, nullable=False),  # exactly the bytes received (UTF-8 JSON)
    PrimaryKeyConstraint("tenant_id", "id"),
    Index(None, "tenant_id", "received_at"),
)
