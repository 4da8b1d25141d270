"""Runs the scheduled jobs in the background of every instance; the lease lets one at a time work.

Each job wakes every interval (with jitter, so that instances started together do not all ask at once),
asks for its lease (which also refuses if any instance finished the job less than 90% of an interval
ago), runs, and records its outcome in the lease row. Jobs check `should_stop` between batches: on
shutdown, or when the lease was lost, they stop at the end of the batch they are in, never inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from state_manager.cache import LookupCache
from state_manager.conversations.expiry import expire_inactive
from state_manager.db import Database
from state_manager.db.types import utcnow
from state_manager.jobs import lease
from state_manager.jobs.report import JobReport
from state_manager.observability.metrics import JOB_RUNS, JOB_WORK
from state_manager.retention.service import apply_retention
from state_manager.settings import Settings

log = logging.getLogger("state_manager.jobs")
STOP_WAIT_SECONDS = 10.0  # how long shutdown waits for a batch in progress


@dataclass(frozen=True, slots=True)
class JobContext:
    settings: Settings
    db: Database
    cache: LookupCache
    should_stop: Callable[[], bool]
    tenant_id: str | None = None
    dry_run: bool = False
    actor: str = "scheduler"  # in the audit log: "scheduler", or the operator who ran it by hand


async def run_expiry(ctx: JobContext) -> JobReport:
    return await expire_inactive(
        ctx.db,
        ctx.cache,
        now=utcnow(),
        tenant_id=ctx.tenant_id,
        dry_run=ctx.dry_run,
        should_stop=ctx.should_stop,
    )


async def run_retention(ctx: JobContext) -> JobReport:
    return await apply_retention(
        ctx.settings,
        ctx.db,
        ctx.cache,
        now=utcnow(),
        actor=ctx.actor,
        tenant_id=ctx.tenant_id,
        dry_run=ctx.dry_run,
        should_stop=ctx.should_stop,
    )


JOBS: dict[str, Callable[[JobContext], Awaitable[JobReport]]] = {
    "expiry": run_expiry,
    "retention": run_retention,
}


def interval_of(settings: Settings, job: str) -> float:
    return {"expiry": settings.expiry_interval_seconds, "retention": settings.retention_interval_seconds}[job]


async def run_held(
    job: str,
    settings: Settings,
    db: Database,
    cache: LookupCache,
    *,
    holder: str,
    tenant_id: str | None = None,
    actor: str = "scheduler",
    stopping: asyncio.Event | None = None,
    not_run_within: float | None = None,
) -> JobReport:
    """Runs `job` once under its lease (LeaseHeld if another instance has it) and records the outcome."""
    async with lease.holding(
        db, job, holder, seconds=settings.job_lease_seconds, not_run_within=not_run_within
    ) as held:

        def should_stop() -> bool:
            return held.should_stop() or (stopping is not None and stopping.is_set())

        ctx = JobContext(settings, db, cache, should_stop, tenant_id=tenant_id, actor=actor)
        try:
            report = await JOBS[job](ctx)
        except Exception:
            JOB_RUNS.labels(job, "failed").inc()
            raise
        held.outcome = report.as_outcome()
    outcome = "stopped" if report.stopped_early else "partly_failed" if report.failed else "done"
    JOB_RUNS.labels(job, outcome).inc()
    for what, count in report.totals().items():
        JOB_WORK.labels(job, what).inc(count)
    return report


class JobScheduler:
    def __init__(self, settings: Settings, db: Database, cache: LookupCache) -> None:
        self.settings = settings
        self.db = db
        self.cache = cache
        self.holder = lease.holder_name()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if not self.settings.jobs_enabled:
            return
        for job in JOBS:
            self._tasks.append(asyncio.create_task(self._every_interval(job), name=f"job-{job}"))

    async def close(self) -> None:
        self._stopping.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=STOP_WAIT_SECONDS)
        for task in pending:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _every_interval(self, job: str) -> None:
        interval = interval_of(self.settings, job)
        wait = random.uniform(0, min(interval, 5.0))  # soon after start, not all instances at once
        while not await self._stopped_within(wait):
            try:
                await run_held(
                    job,
                    self.settings,
                    self.db,
                    self.cache,
                    holder=self.holder,
                    stopping=self._stopping,
                    not_run_within=interval * 0.9,
                )
            except lease.LeaseHeld:
                pass  # another instance runs it, or ran it moments ago
            except Exception:
                log.exception("scheduled job %s failed; it runs again in %.0f s", job, interval)
            wait = interval * random.uniform(0.95, 1.05)

    async def _stopped_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()
