"""pending work: every tenant's background work in one statement (PostgreSQL)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-11 09:00:00

The sweeps of the event relay, the queue outbox, the webhook dispatcher and the analytics projector look
at every tenant for work a crash or an outage left, and the expiry job for conversations gone quiet. One transaction per tenant and sweep made an idle
server with 1,500 tenants spend most of a core, and PostgreSQL 800 transactions a second, on finding
nothing. This function answers for every tenant in one round trip.

It runs as its caller (not SECURITY DEFINER), so row-level security holds: for each tenant it sets
`app.tenant_id` to that tenant, for the rest of the transaction only, and reads under that tenant's
policy. It gives back the tenant's ID and what is waiting, never a row. On SQLite, which has no policies,
the same questions are one SELECT (state_manager.db.pending).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING_WORK = """
CREATE OR REPLACE FUNCTION sm_pending_work(p_output_published_before timestamptz, p_delivered_before timestamptz)
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
BEGIN
    FOR t IN SELECT id FROM tenants ORDER BY id LOOP
        PERFORM set_config('app.tenant_id', t, true);
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
            -- one probe per open state on (tenant_id, state, last_activity_at)
            LEAST(
                (SELECT min(c.last_activity_at) FROM conversations c WHERE c.tenant_id = t AND c.state = 'pending'),
                (SELECT min(c.last_activity_at) FROM conversations c WHERE c.tenant_id = t AND c.state = 'active'),
                (SELECT min(c.last_activity_at) FROM conversations c WHERE c.tenant_id = t AND c.state = 'waiting'),
                (SELECT min(c.last_activity_at) FROM conversations c WHERE c.tenant_id = t AND c.state = 'error')
            );
    END LOOP;
    PERFORM set_config('app.tenant_id', coalesce(caller_tenant, ''), true);
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PENDING_WORK)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION sm_pending_work(timestamptz, timestamptz)")
