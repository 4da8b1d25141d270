"""What every check shares: findings, their outcomes, the context a run works in, and batched scans.

A check reads one tenant in batches (each batch its own short read transaction, so that a large tenant is
checked with bounded memory and without a long-held snapshot), yields findings batch by batch, and, when
asked to repair, repairs a batch of findings in short write transactions of its own, re-reading what it
changes under lock: a finding may have been resolved by the service meanwhile.
"""

from __future__ import annotations

import abc
import datetime as dt
import enum
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from redis.asyncio import Redis
from sqlalchemy import RowMapping, Select
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.cache import LookupCache
from state_manager.db import Database
from state_manager.errors import LockTimeout, StateManagerError, Unavailable
from state_manager.events.relay import EventRelay
from state_manager.settings import Settings

BATCH = 1000


class Outcome(enum.StrEnum):
    FOUND = "found"  # reported; no repair was asked for
    REPAIRED = "repaired"
    LEFT = "left"  # not repaired: it needs a person (the note says why)
    RESOLVED = "resolved"  # gone by the time the repair looked again (the service changed it meanwhile)


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    tenant_id: str
    subjects: tuple[str, ...]  # the IDs of what is wrong
    detail: str
    # Why --repair does not touch it; None when the check can repair it.
    left_because: str | None = None
    # What the repair needs (IDs, derived values); never shown.
    data: Any = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Result:
    finding: Finding
    outcome: Outcome
    note: str | None = None


@dataclass
class Context:
    """One run: the database, the cache whose entries the repairs drop in every server, the event relay
    that numbers what repairs wrote, and the run's clock."""

    settings: Settings
    db: Database
    cache: LookupCache
    relay: EventRelay
    now: dt.datetime
    stuck_after: dt.timedelta
    repair: bool
    redis: Redis | None  # the shared cache's server, when REDIS_URL is set

    @asynccontextmanager
    async def write(self, tenant_id: str) -> AsyncIterator[AsyncConnection]:
        """A repair's transaction: once it commits, what it changed leaves every server's cache (as an
        API write's does, `TenantScope.write`)."""
        async with self.cache.publishing_changes(), self.db.transaction(tenant_id, write=True) as conn:
            yield conn

    @asynccontextmanager
    async def read(self, tenant_id: str) -> AsyncIterator[AsyncConnection]:
        async with self.db.transaction(tenant_id, write=False) as conn:
            yield conn


class Check(abc.ABC):
    """One invariant: how it is found, and whether and how it is repaired."""

    name: ClassVar[str]
    invariant: ClassVar[str]

    def not_applicable(self, ctx: Context) -> str | None:
        """Why this check cannot run with these settings; None when it can."""
        return None

    @abc.abstractmethod
    def find(self, ctx: Context, tenant_id: str) -> AsyncIterator[list[Finding]]:
        """The tenant's findings, batch by batch."""

    async def repair(self, ctx: Context, tenant_id: str, findings: Sequence[Finding]) -> list[Result]:
        """Repairs findings that have no `left_because`; by default one transaction each."""
        results = []
        for finding in findings:
            try:
                results.append(await self.repair_one(ctx, tenant_id, finding))
            except StateManagerError as exc:
                results.append(failed(finding, exc))
        return results

    async def repair_one(self, ctx: Context, tenant_id: str, finding: Finding) -> Result:
        """Repairs one finding; checks whose findings all carry `left_because` have nothing here."""
        raise NotImplementedError(f"{self.name} repairs nothing")


async def keyset(
    ctx: Context,
    tenant_id: str,
    query_after: Callable[[RowMapping | None], Select[Any]],
    *,
    batch: int = BATCH,
) -> AsyncIterator[Sequence[RowMapping]]:
    """Every row of `query_after(last row of the previous batch)`, a batch at a time; the query orders by
    a unique key and resumes after the row it is given. Repairs may run between batches."""
    after: RowMapping | None = None
    while True:
        async with ctx.read(tenant_id) as conn:
            rows = (await conn.execute(query_after(after).limit(batch))).mappings().all()
        if rows:
            yield rows
        if len(rows) < batch:
            return
        after = rows[-1]


def failed(finding: Finding, exc: StateManagerError) -> Result:
    """A repair that met a change under it (a version, a lock held by a server) is left for the next run;
    losing the database ends the run."""
    if isinstance(exc, Unavailable) and not isinstance(exc, LockTimeout):
        raise exc
    return Result(finding, Outcome.LEFT, f"repair failed ({exc.detail}); run the check again")


def listed(ids: Sequence[object], limit: int = 5) -> tuple[str, ...]:
    """The first IDs of a group, as subjects."""
    return tuple(str(found) for found in ids[:limit])


def moment(value: dt.datetime | None) -> str:
    return "none" if value is None else value.isoformat()
