"""The analytics projection: per-conversation facts derived from the source tables, never written by a
request. Each conversation's rows are recomputed whole from its conversation, messages and participants
whenever one of its events is numbered (analytics/projector.py), so they depend only on the source data,
not on the order in which webhooks arrived. Facts are summed per 15-minute bucket: every time zone's
offset is a whole number of quarter hours, so hours, days and weeks of any zone are unions of buckets.

A conversation that left the live tables (archived by retention) keeps its facts: reports go back further
than the live data. Nothing here identifies a person beyond the pseudonymous IDs the live tables use.
"""

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Uuid,
    text,
)

from state_manager.db.metadata import metadata
from state_manager.db.types import UTCDateTime

# The summed columns of analytics_facts: counts, and the seconds that average over them.
FACT_COLUMNS = (
    "started",  # conversations started
    "closed",  # ... closed (resolved)
    "expired",  # ... expired
    "reopened",  # started within REOPEN_WINDOW of the same customer's close on the same number
    "unanswered",  # expired while the customer's last message had no answer
    "windows_lapsed",  # a customer's 24 h reply window ended before an answer
    "conversation_messages",  # on the `started` row: all messages of that conversation
    "resolution_seconds",  # over `closed`: start to close
    "ended_seconds",  # over `closed` + `expired`: start to end (duration)
    "first_responses",
    "first_response_seconds",
    "replies",
    "reply_seconds",
    "inbound",
    "outbound",
    "delivered",  # outbound messages that reached the phone (delivered or read)
    "delivery_timed",  # ... of which the delivery time is known
    "delivery_seconds",
    "read",
    "read_seconds",
    "failed",
)
SECONDS_COLUMNS = frozenset(name for name in FACT_COLUMNS if name.endswith("_seconds"))

analytics_facts = Table(
    "analytics_facts",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("conversation_id", Uuid, nullable=False),
    Column("bucket", UTCDateTime, nullable=False),  # the start of a 15-minute bucket, UTC
    # Who the row is credited to: "agent:<id>" or "bot:<id>" for what they sent and their responses; the
    # conversation's agent for the rest of it; "" when no agent handled it.
    Column("actor", String(160), nullable=False),
    Column("business_number_id", String(64), nullable=False),
    *(
        Column(name, Float if name in SECONDS_COLUMNS else Integer, nullable=False, server_default="0")
        for name in FACT_COLUMNS
    ),
    PrimaryKeyConstraint("tenant_id", "conversation_id", "bucket", "actor"),
    Index(None, "tenant_id", "bucket"),
)

analytics_failures = Table(
    "analytics_failures",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("conversation_id", Uuid, nullable=False),
    Column("bucket", UTCDateTime, nullable=False),
    Column("actor", String(160), nullable=False),
    Column("business_number_id", String(64), nullable=False),
    Column("code", String(64), nullable=False),
    Column("failed", Integer, nullable=False),
    PrimaryKeyConstraint("tenant_id", "conversation_id", "bucket", "actor", "code"),
    Index(None, "tenant_id", "bucket"),
)

analytics_conversations = Table(
    "analytics_conversations",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("conversation_id", Uuid, nullable=False),
    Column("customer_id", Uuid, nullable=False),
    Column("channel", String(32), nullable=False),
    Column("business_number_id", String(64), nullable=False),
    Column("actor", String(160), nullable=False),  # the conversation's agent, as in analytics_facts
    Column("state", String(16), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    # The customer's first conversation with the tenant (live or archived) when it was projected.
    Column("customer_first", Boolean, nullable=False),
    Column("ended_at", UTCDateTime, nullable=True),
    # The reply window of a customer message still unanswered, when it had not ended at projection time:
    # it lapses at this moment unless an answer comes (which projects the conversation again).
    Column("pending_window_ends_at", UTCDateTime, nullable=True),
    Column("projected_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("tenant_id", "conversation_id"),
    Index(None, "tenant_id", "started_at"),
    Index(None, "tenant_id", "customer_id", "started_at"),
    Index(
        "ix_analytics_conversations_pending_window",
        "tenant_id",
        "pending_window_ends_at",
        postgresql_where=text("pending_window_ends_at IS NOT NULL"),
        sqlite_where=text("pending_window_ends_at IS NOT NULL"),
    ),
)

# An agent's time in a conversation, joined to left: handle time and concurrent load. The times are also
# kept as epoch seconds, so that overlaps with a report's window add up in SQL on either database.
analytics_agent_sessions = Table(
    "analytics_agent_sessions",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("conversation_id", Uuid, nullable=False),
    Column("agent", String(160), nullable=False),  # "agent:<id>"
    Column("joined_at", UTCDateTime, nullable=False),
    Column("left_at", UTCDateTime, nullable=True),
    Column("joined_s", Float, nullable=False),
    Column("left_s", Float, nullable=True),
    Column("business_number_id", String(64), nullable=False),
    PrimaryKeyConstraint("tenant_id", "conversation_id", "agent", "joined_at"),
    Index(None, "tenant_id", "joined_at"),
)

# An agent's part in a conversation, from joining or first writing to leaving or last writing (open while
# still present): the conversations an agent handled, one row each.
analytics_agent_involvement = Table(
    "analytics_agent_involvement",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("conversation_id", Uuid, nullable=False),
    Column("agent", String(160), nullable=False),
    Column("first_at", UTCDateTime, nullable=False),
    Column("last_at", UTCDateTime, nullable=True),  # null: still in it
    Column("business_number_id", String(64), nullable=False),
    PrimaryKeyConstraint("tenant_id", "conversation_id", "agent"),
    Index(None, "tenant_id", "first_at"),
)

# How far the projection got: every event up to last_seq is reflected. No row: the tenant's projection
# is rebuilt from the live tables (new tenants, the release that added analytics, after a restore or
# after retention removed events the projection had not read). While `rebuilding`, the conversations up
# to `rebuild_after` (in ID order) are done; events after last_seq are read once the rebuild ends.
analytics_progress = Table(
    "analytics_progress",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    Column("rebuilding", Boolean, nullable=False),
    Column("rebuild_after", Uuid, nullable=True),
    Column("rebuilt_at", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("tenant_id"),
)

# The tables that hold a conversation's projection (all but the progress).
PROJECTION_TABLES = (
    analytics_facts,
    analytics_failures,
    analytics_conversations,
    analytics_agent_sessions,
    analytics_agent_involvement,
)
ANALYTICS_TABLES = (*PROJECTION_TABLES, analytics_progress)
