"""Customers and their identities (channel + external ID), tenant first in every key."""

from sqlalchemy import (
    Column,
    ForeignKeyConstraint,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Uuid,
)

from state_manager.db.metadata import metadata
from state_manager.db.types import JSONDoc, UTCDateTime

customers = Table(
    "customers",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("id", Uuid, nullable=False),
    Column("display_name", String(256), nullable=True),
    Column("language", String(35), nullable=True),
    Column("preferences", JSONDoc, nullable=False),
    Column("consent", JSONDoc, nullable=False),
    Column("attributes", JSONDoc, nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # Set by an erasure: the row stays, emptied, so that anonymous counts (analytics) still add up.
    Column("erased_at", UTCDateTime, nullable=True),
    PrimaryKeyConstraint("tenant_id", "id"),
    ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
    # For listing in time order. Without `id`: with it, a lookup by (tenant_id, id) on a table without
    # statistics could be planned on this index (a scan of the whole tenant) instead of the primary key.
    Index(None, "tenant_id", "created_at"),
)

customer_identities = Table(
    "customer_identities",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("channel", String(32), nullable=False),
    Column("external_id", String(256), nullable=False),
    Column("customer_id", Uuid, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("tenant_id", "channel", "external_id"),
    ForeignKeyConstraint(
        ["tenant_id", "customer_id"], ["customers.tenant_id", "customers.id"], ondelete="CASCADE"
    ),
    Index(None, "tenant_id", "customer_id"),
)
