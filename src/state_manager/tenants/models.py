"""Organizations, tenants and API keys: the directory that says who a caller is.

These tables are read before the caller's tenant is known (an API key names its tenant), so they carry
no row-level security; every table holding a tenant's data does.
"""

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Uuid,
)

from state_manager.db.metadata import metadata
from state_manager.db.types import JSONDoc, UTCDateTime

organizations = Table(
    "organizations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

tenants = Table(
    "tenants",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("organization_id", String(64), ForeignKey("organizations.id"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("settings", JSONDoc, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index(None, "organization_id"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Uuid, primary_key=True),
    # The public part of the key, used to find the row; the secret part is only kept as a hash.
    Column("prefix", String(32), nullable=False, unique=True),
    Column("secret_hash", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("tenant_id", String(64), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=True),
    Column("name", String(200), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
    # The key's own rate limit (migration 0010); NULL: the settings' default; a rate of 0: no limit.
    Column("rate_limit_per_second", Float, nullable=True),
    Column("rate_limit_burst", Integer, nullable=True),
    Index(None, "tenant_id"),
)
