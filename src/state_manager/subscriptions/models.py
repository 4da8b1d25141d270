"""Webhook subscriptions, their deliveries (one per event and subscription) and the attempts made.

A delivery is written in the relay's numbering transaction (subscriptions/enqueue.py), so every numbered
event reaches every subscription that wanted it when it was numbered, once. Deliveries and attempts go
with their subscription when it is deleted.
"""

from sqlalchemy import (
    BigInteger,
    Boolean,
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

webhook_subscriptions = Table(
    "webhook_subscriptions",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("id", Uuid, nullable=False),
    Column("url", String(2048), nullable=False),
    Column("event_types", JSONDoc, nullable=False),  # a list of event types; empty = every type
    Column("secret", String(256), nullable=False),  # the HMAC key; never returned after creation or rotation
    Column("active", Boolean, nullable=False),
    Column("description", String(500), nullable=True),
    Column("version", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("tenant_id", "id"),
    ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
    Index(None, "tenant_id", "created_at"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("id", Uuid, nullable=False),
    Column("subscription_id", Uuid, nullable=False),
    Column("event_seq", BigInteger, nullable=False),
    Column("event_type", String(64), nullable=False),
    # conversation:<id>, else customer:<id>, else tenant: deliveries with one key go out one at a time.
    Column("ordering_key", String(80), nullable=False),
    Column("body", Text, nullable=False),  # the event's JSON, exactly as signed and sent
    Column("status", String(16), nullable=False),  # pending | delivered | dead
    Column("attempts", Integer, nullable=False),  # every attempt made; numbers the attempt log
    Column("round_attempts", Integer, nullable=False),  # attempts since enqueued or last retried by hand
    Column("next_attempt_at", UTCDateTime, nullable=True),  # while pending
    Column("locked_until", UTCDateTime, nullable=True),  # the lease of the process sending it
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", String(500), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("delivered_at", UTCDateTime, nullable=True),
    PrimaryKeyConstraint("tenant_id", "id"),
    ForeignKeyConstraint(
        ["tenant_id", "subscription_id"],
        ["webhook_subscriptions.tenant_id", "webhook_subscriptions.id"],
        ondelete="CASCADE",
    ),
    # What the dispatcher may send next: small, whatever the size of the log.
    Index(
        "ix_webhook_deliveries_due",
        "tenant_id",
        "next_attempt_at",
        postgresql_where=text("status = 'pending'"),
        sqlite_where=text("status = 'pending'"),
    ),
    # Head of line: the earliest pending delivery of a (subscription, ordering key).
    Index(
        "ix_webhook_deliveries_head",
        "tenant_id",
        "subscription_id",
        "ordering_key",
        "event_seq",
        postgresql_where=text("status = 'pending'"),
        sqlite_where=text("status = 'pending'"),
    ),
    Index(None, "tenant_id", "status", "created_at"),  # the dead letters (and pending ones), newest first
    Index(None, "tenant_id", "subscription_id", "created_at"),  # a subscription's deliveries, newest first
)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("delivery_id", Uuid, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("attempted_at", UTCDateTime, nullable=False),
    Column("duration_ms", Integer, nullable=False),
    Column("status_code", Integer, nullable=True),  # null when no response came (refused, timeout)
    Column("error", String(500), nullable=True),
    Column("response_excerpt", String(1024), nullable=True),  # the start of the response body
    PrimaryKeyConstraint("tenant_id", "delivery_id", "attempt"),
    ForeignKeyConstraint(
        ["tenant_id", "delivery_id"],
        ["webhook_deliveries.tenant_id", "webhook_deliveries.id"],
        ondelete="CASCADE",
    ),
)
