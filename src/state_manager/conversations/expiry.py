"""Expiry: an open conversation with no activity for longer than its tenant's timeout becomes expired.

Inactive since the later of its last message and its last state change (moving it to a queue is
activity too). It expired when the timeout ran out, not when the job noticed: that time is recorded, so
that how often the job runs does not change durations in reports. Each conversation goes through the
same transition as an API call (state change row, participants leaving, events), in batches of
EXPIRY_BATCH per transaction; rows another transaction is writing are skipped and taken next time.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from sqlalchemy import ColumnElement, and_, func, select

from state_manager.cache import LookupCache
from state_manager.conversations import service
from state_manager.conversations.lifecycle import ConversationState
from state_manager.conversations.models import conversations
from state_manager.conversations.repository import OPEN_FILTER
from state_manager.conversations.schemas import TransitionRequest
from state_manager.db import Database
from state_manager.db.pending import pending_work
from state_manager.jobs.report import JobReport
from state_manager.tenants import service as tenants

EXPIRY_BATCH = 200
log = logging.getLogger("state_manager.expiry")
c = conversations.c


def _due(tenant_id: str, cutoff: dt.datetime) -> ColumnElement[bool]:
    return and_(
        c.tenant_id == tenant_id, OPEN_FILTER, c.last_activity_at < cutoff, c.state_changed_at < cutoff
    )


async def expire_inactive(
    db: Database,
    cache: LookupCache,
    *,
    now: dt.datetime,
    tenant_id: str | None = None,
    dry_run: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
) -> JobReport:
    report = JobReport("expiry", dry_run)
    async with db.transaction(None, write=False) as conn:
        found = await tenants.list_tenants(conn)
    # One statement for every tenant's oldest open conversation: most tenants have none gone quiet, and a
    # transaction each to find that out was most of what an idle server did with many tenants.
    found_work = await pending_work(db, oldest_open_activity=True)
    oldest = {work.tenant_id: work.oldest_open_activity for work in found_work}
    for tenant in found:
        if tenant_id is not None and tenant.id != tenant_id:
            continue
        timeout = dt.timedelta(seconds=tenant.settings.inactivity_timeout_seconds)
        cutoff = now - timeout
        if (quiet_since := oldest.get(tenant.id)) is None or quiet_since >= cutoff:
            continue  # nothing can be due: every open conversation had activity after the cutoff
        if dry_run:
            async with db.transaction(tenant.id, write=False) as conn:
                count = (
                    await conn.execute(
                        select(func.count()).select_from(conversations).where(_due(tenant.id, cutoff))
                    )
                ).scalar_one()
            report.add(tenant.id, "expired", count)
            continue
        try:
            while True:
                if should_stop():
                    report.stopped_early = True
                    return report
                done = await _expire_batch(db, cache, tenant.id, cutoff, timeout)
                report.add(tenant.id, "expired", done)
                if done < EXPIRY_BATCH:
                    break
        except Exception as exc:  # one tenant's failure must not starve the rest
            log.exception("expiry failed for tenant %s; the others go on", tenant.id)
            report.failed[tenant.id] = getattr(exc, "detail", None) or repr(exc)
    return report


async def _expire_batch(
    db: Database, cache: LookupCache, tenant_id: str, cutoff: dt.datetime, allowed: dt.timedelta
) -> int:
    reason = f"no activity for {int(allowed.total_seconds())} s"
    async with cache.publishing_changes(), db.transaction(tenant_id) as conn:
        # In no particular order: every due conversation is expired in this run, and no index holds
        # last_activity_at (migration 0012), so an order would sort all of the tenant's open conversations
        # for each batch; without one the scan stops at the batch's last due row.
        due = (
            await conn.execute(
                select(c.id, c.version, c.last_activity_at, c.state_changed_at)
                .where(_due(tenant_id, cutoff))
                .limit(EXPIRY_BATCH)
                .with_for_update(skip_locked=True)
            )
        ).all()
        for row in due:
            inactive_since = max(row.last_activity_at, row.state_changed_at)
            request = TransitionRequest(
                state=ConversationState.EXPIRED, reason=reason, at=inactive_since + allowed
            )
            await service.transition(conn, tenant_id, row.id, request, expected=row.version)
    return len(due)
