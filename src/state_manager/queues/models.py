"""Queue output waiting to be published: written in the transaction that changes the state it announces,
published (with publisher confirms) only once that transaction has committed, and kept a while after, so
that processing the same input again never publishes it twice."""

from sqlalchemy import BigInteger, Column, Index, PrimaryKeyConstraint, String, Table, Text, Uuid

from state_manager.db.metadata import metadata
from state_manager.db.types import UTCDateTime

broker_outbox = Table(
    "broker_outbox",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    # Derived from the input and the destination: the same input always makes the same row.
    Column("id", Uuid, nullable=False),
    # Publication order: a clock that never goes back within a process (queues/outbox.py).
    Column("seq", BigInteger, nullable=False),
    Column("destination", String(64), nullable=False),  # an output's logical name (queues/topology.py)
    Column("body", Text, nullable=False),  # the JSON published, exactly
    Column("created_at", UTCDateTime, nullable=False),
    Column("published_at", UTCDateTime, nullable=True),
    PrimaryKeyConstraint("tenant_id", "id"),
    Index(None, "tenant_id", "published_at", "seq"),
)
