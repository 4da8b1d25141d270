"""The audit log: who did what to a tenant's data that a regulator may ask about (exports, erasures,
restores, retention runs). Kept apart from events: events announce state, this records accountability."""

from sqlalchemy import Column, ForeignKeyConstraint, Index, PrimaryKeyConstraint, String, Table, Uuid

from state_manager.db.metadata import metadata
from state_manager.db.types import JSONDoc, UTCDateTime

audit_log = Table(
    "audit_log",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("id", Uuid, nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    # The API key's ID, or "cli:<user>" / "scheduler" for work not done through the API.
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("subject_type", String(32), nullable=False),
    Column("subject_id", String(128), nullable=True),
    Column("details", JSONDoc, nullable=False),
    PrimaryKeyConstraint("tenant_id", "id"),
    ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
    Index(None, "tenant_id", "occurred_at"),
    Index(None, "tenant_id", "subject_type", "subject_id"),
)
