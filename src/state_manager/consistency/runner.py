"""A run of the checks over every tenant (or one): find, repair when asked, audit, report.

Tenant by tenant, each in transactions scoped to it: on PostgreSQL the service's role sees one tenant's
rows per transaction (row-level security), which is what keeps a check or a repair of one tenant from
ever touching another's, so the run works as that role rather than as a role that bypasses the policies.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis

from state_manager.audit import service as audit
from state_manager.cache import open_lookup_cache
from state_manager.cache.shared import RedisTier
from state_manager.consistency.cache import SharedCacheEntries
from state_manager.consistency.conversations import (
    ActivityTimes,
    LifecycleTimes,
    OneOpenConversation,
    ParticipantTimes,
)
from state_manager.consistency.core import Check, Context, Finding, Outcome, Result
from state_manager.consistency.delivery import (
    EventNumbering,
    QueueOutbox,
    UnnumberedEvents,
    WebhookDeliveries,
    number_events,
)
from state_manager.consistency.messages import FailureWithoutTime, HeldReceipts
from state_manager.consistency.orphans import OrphanRows
from state_manager.db import Database
from state_manager.db.types import utcnow
from state_manager.errors import LockTimeout
from state_manager.events.bus import open_event_bus
from state_manager.events.relay import EventRelay
from state_manager.settings import Settings
from state_manager.subscriptions.dispatcher import WebhookDispatcher
from state_manager.tenants import repository as tenants_repo

# In the order they run: orphans first (the other checks then see whole rows), the conversations' own
# rows before what derives from them, the events last but the cache (the repairs' events are then
# numbered, and the cache compared with the database as the repairs left it).
CHECKS: tuple[Check, ...] = (
    OrphanRows(),
    OneOpenConversation(),
    LifecycleTimes(),
    ParticipantTimes(),
    ActivityTimes(),
    FailureWithoutTime(),
    HeldReceipts(),
    EventNumbering(),
    UnnumberedEvents(),
    QueueOutbox(),
    WebhookDeliveries(),
    SharedCacheEntries(),
)
LISTED_PER_CHECK = 1000  # findings listed per check and tenant; the counts cover every one
AUDIT_ACTION = "consistency.repaired"
LEFT_UNFINISHED = (Outcome.FOUND, Outcome.LEFT)


@dataclass
class Report:
    repair: bool
    tenants: list[str]
    not_applicable: dict[str, str] = field(default_factory=dict)  # check -> why it did not run
    results: list[Result] = field(default_factory=list)  # the listed ones
    counts: Counter[tuple[str, str, Outcome]] = field(default_factory=Counter)  # (check, tenant, outcome)
    notes: list[str] = field(default_factory=list)

    def add(self, results: Sequence[Result]) -> None:
        for result in results:
            finding = result.finding
            listed = sum(self.counts[(finding.check, finding.tenant_id, o)] for o in Outcome)
            self.counts[(finding.check, finding.tenant_id, result.outcome)] += 1
            if listed < LISTED_PER_CHECK:
                self.results.append(result)

    def total(self, *outcomes: Outcome) -> int:
        return sum(n for (_, _, outcome), n in self.counts.items() if outcome in outcomes)

    @property
    def unlisted(self) -> int:
        return sum(self.counts.values()) - len(self.results)

    @property
    def clean(self) -> bool:
        """Nothing is left wrong: every finding was repaired (or resolved itself)."""
        return self.total(*LEFT_UNFINISHED) == 0


async def run_checks(
    settings: Settings,
    db: Database,
    *,
    tenant_id: str | None,
    repair: bool,
    stuck_after: dt.timedelta,
    actor: str,
) -> Report:
    """Checks every tenant (or `tenant_id`, which must exist), repairing when asked."""
    async with db.transaction(None, write=False) as conn:
        tenant_ids = [row["id"] for row in await tenants_repo.list_tenants(conn, None)]
    if tenant_id is not None:
        tenant_ids = [tenant_id] if tenant_id in tenant_ids else []
    report = Report(repair=repair, tenants=tenant_ids)
    cache = open_lookup_cache(settings)
    bus = open_event_bus(settings)
    relay = EventRelay(db, bus, sweep_seconds=settings.events_sweep_seconds)
    # Events numbered here get their webhook deliveries as on a server (the dispatcher itself is not
    # started: running servers send them).
    relay.on_numbered.append(WebhookDispatcher(settings, db).on_numbered)
    redis = Redis.from_url(settings.redis_url) if settings.redis_url else None
    await cache.start()  # so that what the repairs change leaves the running servers' caches
    try:
        ctx = Context(settings, db, cache, relay, utcnow(), stuck_after, repair, redis)
        checks = []
        for check in CHECKS:
            reason = check.not_applicable(ctx)
            if reason is None:
                checks.append(check)
            else:
                report.not_applicable[check.name] = reason
        for tenant in tenant_ids:
            await _check_tenant(ctx, checks, tenant, report, actor)
        if isinstance(cache.shared, RedisTier) and cache.shared.dirty:
            report.notes.append(
                "the repairs' cache invalidations could not reach Redis: servers may serve what changed "
                "from their caches for up to CACHE_SHARED_SECONDS"
            )
    finally:
        await cache.close()
        await bus.close()
        if redis is not None:
            await redis.aclose()
    return report


async def _check_tenant(
    ctx: Context, checks: Sequence[Check], tenant_id: str, report: Report, actor: str
) -> None:
    repaired: Counter[str] = Counter()
    left: Counter[str] = Counter()
    for check in checks:
        async for findings in check.find(ctx, tenant_id):
            results = await _settle(ctx, check, tenant_id, findings)
            report.add(results)
            for result in results:
                if result.outcome is Outcome.REPAIRED:
                    repaired[check.name] += 1
                elif result.outcome is Outcome.LEFT:
                    left[check.name] += 1
    if not repaired:
        return
    # The events the repairs wrote, numbered now as a server numbers its own after each commit.
    try:
        await number_events(ctx, tenant_id)
    except LockTimeout:
        report.notes.append(
            f"{tenant_id}: a server held the event relay's lease; it numbers the repairs' events itself"
        )
    async with ctx.db.transaction(tenant_id, write=True) as conn:
        await audit.record(
            conn,
            tenant_id,
            actor=actor,
            action=AUDIT_ACTION,
            subject_type="tenant",
            subject_id=tenant_id,
            details={"repaired": dict(repaired), "left": dict(left)},
        )


async def _settle(ctx: Context, check: Check, tenant_id: str, findings: Sequence[Finding]) -> list[Result]:
    if not ctx.repair:
        return [
            Result(
                finding, Outcome.FOUND, finding.left_because and f"--repair leaves it: {finding.left_because}"
            )
            for finding in findings
        ]
    results = [
        Result(finding, Outcome.LEFT, finding.left_because) for finding in findings if finding.left_because
    ]
    repairable = [finding for finding in findings if not finding.left_because]
    if repairable:
        results += await check.repair(ctx, tenant_id, repairable)
    return results
