"""A job's lease: the row in `job_leases` that says which instance runs the job until when.

One statement takes it (an upsert whose WHERE admits only a free, expired or own lease), on PostgreSQL
and SQLite alike, so two instances can never both hold it. The holder renews it while it works; an
instance that dies leaves it to expire after JOB_LEASE_SECONDS, and another takes the job over.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import RowMapping, or_, select, update

from state_manager.db import Database
from state_manager.db.database import dialect_insert
from state_manager.db.types import utcnow
from state_manager.jobs.models import job_leases

log = logging.getLogger("state_manager.jobs")
j = job_leases.c


def holder_name() -> str:
    """Names this process in a lease, so that an operator can tell which instance runs a job."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseHeld(Exception):
    """Another instance holds the job's lease, or ran the job too recently."""


@dataclass
class Lease:
    name: str
    holder: str
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    # What the run did, kept in the row for `state-manager jobs` once the lease is released.
    outcome: dict[str, Any] = field(default_factory=dict)

    def should_stop(self) -> bool:
        """True once the lease could not be renewed: another instance may be taking the job over."""
        return self.lost.is_set()


async def acquire(
    db: Database, name: str, holder: str, *, seconds: float, not_run_within: float | None = None
) -> bool:
    """Takes the lease unless another holder's is still valid, or (with `not_run_within`) the job
    finished that recently (each instance asks on its own clock: the job runs as often as asked once,
    not once per instance)."""
    now = utcnow()
    free = or_(j.holder.is_(None), j.lease_expires_at < now, j.holder == holder)
    if not_run_within is not None:
        recent = now - dt.timedelta(seconds=not_run_within)
        free = free & or_(j.last_finished_at.is_(None), j.last_finished_at <= recent)
    values = {
        "holder": holder,
        "lease_expires_at": now + dt.timedelta(seconds=seconds),
        "last_started_at": now,
    }
    async with db.transaction(None) as conn:
        insert = dialect_insert(conn.dialect.name)
        statement = (
            insert(job_leases)
            .values(name=name, **values)
            .on_conflict_do_update(index_elements=[j.name], set_=values, where=free)
            .returning(j.name)
        )
        return (await conn.execute(statement)).first() is not None


async def renew(db: Database, name: str, holder: str, *, seconds: float) -> bool:
    async with db.transaction(None) as conn:
        statement = (
            update(job_leases)
            .where(j.name == name, j.holder == holder)
            .values(lease_expires_at=utcnow() + dt.timedelta(seconds=seconds))
            .returning(j.name)
        )
        return (await conn.execute(statement)).first() is not None


async def release(db: Database, name: str, holder: str, outcome: Mapping[str, Any]) -> None:
    async with db.transaction(None) as conn:
        await conn.execute(
            update(job_leases)
            .where(j.name == name, j.holder == holder)
            .values(holder=None, lease_expires_at=None, last_finished_at=utcnow(), last_outcome=dict(outcome))
        )


@contextlib.asynccontextmanager
async def holding(
    db: Database, name: str, holder: str, *, seconds: float, not_run_within: float | None = None
) -> AsyncIterator[Lease]:
    """Holds the lease while the block runs, renewing it every third of its life, and releases it with
    the block's `lease.outcome` and whether the block ended normally. Raises LeaseHeld if not free."""
    if not await acquire(db, name, holder, seconds=seconds, not_run_within=not_run_within):
        raise LeaseHeld(name)
    lease = Lease(name, holder)
    finished = asyncio.Event()
    renewing = asyncio.create_task(_keep_renewed(db, lease, seconds, finished), name=f"lease-{name}")
    status = "failed"
    try:
        yield lease
        status = "stopped" if lease.should_stop() else "done"
    finally:
        # Told to stop rather than cancelled: a renewal cancelled inside its SQLite transaction could keep
        # the write lock for the busy timeout.
        finished.set()
        await renewing
        with contextlib.suppress(Exception):  # an expired lease frees itself; nothing is lost
            await release(db, name, holder, {"status": status, **lease.outcome})


async def _keep_renewed(db: Database, lease: Lease, seconds: float, finished: asyncio.Event) -> None:
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(finished.wait(), seconds / 3)
        if finished.is_set():
            return
        try:
            renewed = await renew(db, lease.name, lease.holder, seconds=seconds)
        except Exception:
            log.warning("could not renew the lease of job %s; trying again", lease.name, exc_info=True)
            continue
        if not renewed:
            log.error("job %s lost its lease to another instance; stopping it", lease.name)
            lease.lost.set()
            return


async def leases(db: Database) -> list[RowMapping]:
    """Every job's lease row, for status reports."""
    async with db.transaction(None, write=False) as conn:
        return list((await conn.execute(select(job_leases).order_by(j.name))).mappings())
