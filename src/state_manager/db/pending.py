"""Every tenant's background work, found in one statement.

The sweeps (event relay, queue outbox, webhook dispatcher, analytics projector) look at every tenant for
work that a crash or an outage left behind, and the expiry job for conversations gone quiet. Asking tenant
by tenant costs a transaction each: with 1,500 tenants an idle server spent most of a core on it. Here one
statement answers for all of them. On PostgreSQL it is `sm_pending_work` (migrations 0011 and 0012), which
reads each tenant under its own row-level security policy; SQLite has no policies, and the same questions
are correlated subqueries.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, exists, false, func, null, or_, select, text

from state_manager.analytics.models import analytics_progress
from state_manager.conversations.models import conversations
from state_manager.conversations.repository import OPEN_FILTER
from state_manager.db.database import Database
from state_manager.events.models import event_relay, events
from state_manager.queues.models import broker_outbox
from state_manager.subscriptions.models import webhook_deliveries
from state_manager.subscriptions.repository import DELIVERED, PENDING
from state_manager.tenants.models import tenants

_POSTGRES = text(
    "SELECT * FROM sm_pending_work("
    "CAST(:output_before AS timestamptz), CAST(:delivered_before AS timestamptz), :oldest_open_activity)"
)


@dataclass(frozen=True, slots=True)
class PendingWork:
    tenant_id: str
    unpublished_output: bool
    output_to_prune: bool  # published before `output_published_before`
    unnumbered_events: bool
    last_numbered: int
    pending_deliveries: bool
    deliveries_to_prune: bool  # delivered before `delivered_before`
    analytics_behind: bool  # as analytics.projector.freshness: not complete
    # The earliest last_activity_at of an open conversation; None when there is none or it was not asked.
    oldest_open_activity: dt.datetime | None


async def pending_work(
    db: Database,
    *,
    output_published_before: dt.datetime | None = None,
    delivered_before: dt.datetime | None = None,
    oldest_open_activity: bool = False,
) -> list[PendingWork]:
    """One entry per tenant, in tenant order. Without a cutoff, nothing is reported as to prune. The oldest
    open activity costs a read of every open conversation (no index has the column, so that the update
    each message makes stays on its page): only the expiry job asks for it."""
    async with db.transaction(None, write=False) as conn:
        if conn.dialect.name == "postgresql":
            params = {
                "output_before": output_published_before,
                "delivered_before": delivered_before,
                "oldest_open_activity": oldest_open_activity,
            }
            rows = (await conn.execute(_POSTGRES, params)).all()
        else:
            query = _sqlite_query(output_published_before, delivered_before, oldest_open_activity)
            rows = (await conn.execute(query)).all()
    return [
        PendingWork(
            tenant_id=row[0],
            unpublished_output=bool(row[1]),  # SQLite answers 0 or 1
            output_to_prune=bool(row[2]),
            unnumbered_events=bool(row[3]),
            last_numbered=int(row[4]),
            pending_deliveries=bool(row[5]),
            deliveries_to_prune=bool(row[6]),
            analytics_behind=bool(row[7]),
            oldest_open_activity=row[8],
        )
        for row in rows
    ]


def _sqlite_query(
    output_published_before: dt.datetime | None,
    delivered_before: dt.datetime | None,
    oldest_open_activity: bool,
) -> Select[Any]:
    t, c, o, e, r, d, p = (
        tenants.c,
        conversations.c,
        broker_outbox.c,
        events.c,
        event_relay.c,
        webhook_deliveries.c,
        analytics_progress.c,
    )

    output_to_prune: ColumnElement[bool] = (
        false()
        if output_published_before is None
        else exists().where(o.tenant_id == t.id, o.published_at < output_published_before)
    )
    deliveries_to_prune: ColumnElement[bool] = (
        false()
        if delivered_before is None
        else exists().where(
            d.tenant_id == t.id,
            d.status == DELIVERED,
            d.created_at < delivered_before,  # bounds the scan: a delivery is delivered after it is created
            d.delivered_at < delivered_before,
        )
    )
    # Nested one level deeper than the others: without an explicit correlation SQLAlchemy would give these
    # subqueries a `tenants` of their own, and compare each tenant with every tenant's numbers.
    head = func.max(
        func.coalesce(
            select(func.max(e.seq)).where(e.tenant_id == t.id).correlate(tenants).scalar_subquery(), 0
        ),
        func.coalesce(
            select(r.trimmed_through).where(r.tenant_id == t.id).correlate(tenants).scalar_subquery(), 0
        ),
    )
    progress = select(p.rebuilding, p.last_seq).where(p.tenant_id == t.id)
    behind = or_(
        ~exists(progress),
        exists(progress.where(or_(p.rebuilding.is_(True), p.last_seq < head))),
    )
    return select(
        t.id,
        exists().where(o.tenant_id == t.id, o.published_at.is_(None)),
        output_to_prune,
        exists().where(e.tenant_id == t.id, e.seq.is_(None)),
        func.coalesce(select(r.last_seq).where(r.tenant_id == t.id).scalar_subquery(), 0),
        exists().where(d.tenant_id == t.id, d.status == PENDING),
        deliveries_to_prune,
        behind,
        (
            select(func.min(c.last_activity_at)).where(c.tenant_id == t.id, OPEN_FILTER).scalar_subquery()
            if oldest_open_activity
            else null()
        ),
    ).order_by(t.id)
