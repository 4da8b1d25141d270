"""Events: every state change, written in the transaction that makes it, numbered after it commits.

`id` orders the events as they were written (an identity on PostgreSQL; the next free number under
SQLite's single writer). `seq` is the tenant's public sequence: the relay gives it after the commit, in
the order the relay sees committed events, so that the numbers of committed events have no gaps.
"""

from sqlalchemy import (
    BigInteger,
    Column,
    Identity,
    Index,
    PrimaryKeyConstraint,
    String,
    Table,
    Uuid,
    text,
)

from state_manager.db.metadata import metadata
from state_manager.db.types import JSONDoc, UTCDateTime

events = Table(
    "events",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("id", BigInteger, Identity(), nullable=False),
    Column("seq", BigInteger, nullable=True),  # null until the relay numbers it
    Column("type", String(64), nullable=False),
    Column("conversation_id", Uuid, nullable=True),
    Column("customer_id", Uuid, nullable=True),
    Column("message_id", Uuid, nullable=True),
    Column("payload", JSONDoc, nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("tenant_id", "id"),
    Index("ux_events_tenant_id_seq", "tenant_id", "seq", unique=True),
    # A message's `message.recorded` event, whose text redaction clears (retention, erasure): without it
    # every batch redacted scanned the tenant's events. One entry per message, not per event.
    Index(
        "ix_events_message_recorded",
        "tenant_id",
        "message_id",
        postgresql_where=text("type = 'message.recorded'"),
        sqlite_where=text("type = 'message.recorded'"),
    ),
    # What the relay has yet to number: small, whatever the size of the table.
    Index(
        "ix_events_unnumbered",
        "tenant_id",
        "id",
        postgresql_where=text("seq IS NULL"),
        sqlite_where=text("seq IS NULL"),
    ),
)

# Per tenant: the last number given. (How far the bus got, the bus knows: events/bus.py.)
event_relay = Table(
    "event_relay",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    # Retention removed every event up to this number: a consumer resuming from before it missed some.
    Column("trimmed_through", BigInteger, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("tenant_id"),
)
