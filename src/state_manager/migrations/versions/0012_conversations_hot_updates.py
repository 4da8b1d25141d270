"""conversations: updates by inbound messages stay on their page (HOT)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-12 09:00:00

Every inbound message moves its conversation's last_activity_at. With that column in an index, each of
those updates wrote a new entry in every index whose condition the row meets (five for a conversation
without Genesys IDs), and the old versions stayed in the heap and the indexes until VACUUM: a
conversation written to a few times a second piled up versions that every lookup of it walked through. Without it (and with free room on each page, fillfactor 80), the update
is HOT: one new version on the same page, no index entry, pruned by the next reader of the page.

The index becomes (tenant_id, state). The jobs that read open conversations by activity (expiry, cache
warming) read them through the open-conversation index instead, and `sm_pending_work` looks for the oldest
open activity only when the expiry job asks (once a minute), not at every sweep of the other jobs: without
the index it reads every open conversation of each tenant.

The fillfactor applies to pages written from now on; `VACUUM FULL conversations` (or pg_repack) applies it
to the existing ones too, at a time that suits. Building the new index locks the table against writes and
reads for as long as the build takes (1.1 s for 1,000,000 conversations on a 2-core test machine): run it
at a quiet time.

The function's new argument defaults to true, so that an instance of the previous release, still running
during a rolling upgrade, calls it with two arguments and gets what it got before.
"""

import importlib
from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


PENDING_WORK = """
CREATE FUNCTION sm_pending_work(
    p_output_published_before timestamptz,
    p_delivered_before timestamptz,
    p_oldest_open_activity boolean DEFAULT true
)
RETURNS TABLE (
    work_tenant_id text,
    unpublished_output boolean,
    output_to_prune boolean,
    unnumbered_events boolean,
    last_numbered bigint,
    pending_deliveries boolean,
    deliveries_to_prune boolean,
    analytics_behind boolean,
    oldest_open_activity timestamptz
)
LANGUAGE plpgsql VOLATILE
AS $$
#variable_conflict use_column
DECLARE
    caller_tenant text := current_setting('app.tenant_id', true);
    t text;
    oldest timestamptz;
BEGIN
    FOR t IN SELECT id FROM tenants ORDER BY id LOOP
        PERFORM set_config('app.tenant_id', t, true);
        -- A statement of its own, not a CASE on the argument inside the query below: with one, that query's
        -- cached generic plan looked costlier than a plan made for `false`, so PostgreSQL planned it again
        -- for every tenant at every call (0.5-0.8 s instead of 0.13 s for 1,500 tenants).
        -- It reads every open conversation of the tenant (no index has last_activity_at): only on request.
        oldest := NULL;
        IF p_oldest_open_activity THEN
            SELECT min(c.last_activity_at) INTO oldest FROM conversations c
             WHERE c.tenant_id = t AND c.state IN ('active', 'error', 'pending', 'waiting');
        END IF;
        RETURN QUERY SELECT
            t,
            EXISTS (SELECT 1 FROM broker_outbox o WHERE o.tenant_id = t AND o.published_at IS NULL),
            p_output_published_before IS NOT NULL AND EXISTS (
                SELECT 1 FROM broker_outbox o WHERE o.tenant_id = t AND o.published_at < p_output_published_before
            ),
            EXISTS (SELECT 1 FROM events e WHERE e.tenant_id = t AND e.seq IS NULL),
            COALESCE((SELECT r.last_seq FROM event_relay r WHERE r.tenant_id = t), 0)::bigint,
            EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.tenant_id = t AND d.status = 'pending'),
            -- created_at bounds the scan: a delivery is delivered after it is created
            p_delivered_before IS NOT NULL AND EXISTS (
                SELECT 1 FROM webhook_deliveries d
                WHERE d.tenant_id = t AND d.status = 'delivered'
                    AND d.created_at < p_delivered_before AND d.delivered_at < p_delivered_before
            ),
            -- as analytics.projector.freshness: no progress yet, a rebuild, or events it has not read
            COALESCE((
                SELECT p.rebuilding OR p.last_seq < GREATEST(
                    COALESCE((SELECT max(e.seq) FROM events e WHERE e.tenant_id = t), 0),
                    COALESCE((SELECT r.trimmed_through FROM event_relay r WHERE r.tenant_id = t), 0)
                )
                FROM analytics_progress p WHERE p.tenant_id = t
            ), true),
            oldest;
    END LOOP;
    PERFORM set_config('app.tenant_id', coalesce(caller_tenant, ''), true);
END
$$
"""


def _previous() -> object:
    return importlib.import_module("state_manager.migrations.versions.0011_pending_work_function")


def upgrade() -> None:
    op.drop_index("ix_conversations_tenant_id_state_last_activity_at", table_name="conversations")
    op.create_index("ix_conversations_tenant_id_state", "conversations", ["tenant_id", "state"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE conversations SET (fillfactor = 80)")
        op.execute("DROP FUNCTION sm_pending_work(timestamptz, timestamptz)")
        op.execute(PENDING_WORK)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION sm_pending_work(timestamptz, timestamptz, boolean)")
        op.execute(_previous().PENDING_WORK)  # type: ignore[attr-defined]
        op.execute("ALTER TABLE conversations RESET (fillfactor)")
    op.drop_index("ix_conversations_tenant_id_state", table_name="conversations")
    op.create_index(
        "ix_conversations_tenant_id_state_last_activity_at",
        "conversations",
        ["tenant_id", "state", "last_activity_at"],
    )
