"""Keeps the analytics projection up to date: reads each tenant's numbered events after its progress,
and projects again every conversation they name, from the source rows (analytics/facts.py).

One step is one bounded batch in one transaction, under a per-tenant lock, that also moves the progress:
a crash loses at most a batch that is done again. Projecting a conversation replaces its rows whole, so
doing it twice, or for an event it had already seen, changes nothing. A tenant without progress (new, or
after a restore) is first rebuilt from the live tables, in conversation-ID order, resumably.

Every instance runs a projector in the background: it projects at once the tenants whose events its relay
has just numbered, and every ANALYTICS_SWEEP_SECONDS looks at every tenant for work an instance that died
left behind, skipping tenants another instance is working on. A report first catches its tenant up, within
a budget, so that it reflects every write acknowledged before it was asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from sqlalchemy import Table, bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.analytics import facts as F
from state_manager.analytics.models import (
    ANALYTICS_TABLES,
    PROJECTION_TABLES,
    analytics_agent_involvement,
    analytics_agent_sessions,
    analytics_conversations,
    analytics_facts,
    analytics_failures,
    analytics_progress,
)
from state_manager.conversations.models import conversations, participants
from state_manager.db import Database
from state_manager.db.database import dialect_insert, one_of
from state_manager.db.locks import lock_names, try_lock_name
from state_manager.db.pending import pending_work
from state_manager.db.types import utcnow
from state_manager.events import repository as events_repo
from state_manager.events.models import events
from state_manager.messages.models import messages

log = logging.getLogger("state_manager.analytics")

EVENTS_PER_STEP = 2000
CONVERSATIONS_PER_STEP = 500
LOCK_WAIT_SECONDS = 10.0
# The least time between two rounds of the background projector. Reports catch up for themselves, so
# nothing waits on it; under steady writes a round then takes the events of many relay batches in one
# transaction instead of one transaction per batch, and projects a conversation once for all the messages
# it got meanwhile (measured: docs/benchmarks.md, "Inbound under load", "One worker on a core of its own").
ROUND_SECONDS = 2.0
# Conversations computed (and 40 times as many message rows read) between two turns of the event loop:
# a step of 500 long conversations takes hundreds of milliseconds of CPU, and the requests of the same
# process would wait for the loop meanwhile.
YIELD_EVERY = 25


def projector_lock(tenant_id: str) -> str:
    return f"analytics:{tenant_id}"


@dataclass(frozen=True, slots=True)
class Freshness:
    """How much of the tenant's history a report reflects."""

    rebuilding: bool
    events_behind: int

    @property
    def complete(self) -> bool:
        return not self.rebuilding and self.events_behind == 0


async def step(db: Database, tenant_id: str, *, wait: bool = True) -> bool | None:
    """One batch of projection work for the tenant; True if more is waiting. With `wait=False`, None if
    another transaction is working on the tenant."""
    async with db.transaction(tenant_id, write=True, lock_timeout=LOCK_WAIT_SECONDS) as conn:
        if wait:
            await lock_names(conn, [projector_lock(tenant_id)])
        elif not await try_lock_name(conn, projector_lock(tenant_id)):
            return None
        progress = (
            await conn.execute(select(analytics_progress).where(analytics_progress.c.tenant_id == tenant_id))
        ).first()
        if progress is None or (
            not progress.rebuilding and progress.last_seq < await events_repo.trimmed_through(conn, tenant_id)
        ):
            # Never projected, or retention removed events it had not read: start again from the tables.
            await _start_rebuild(conn, tenant_id)
            return True
        if progress.rebuilding:
            return await _rebuild_batch(conn, tenant_id, progress.rebuild_after)
        return await _events_batch(conn, tenant_id, int(progress.last_seq))


async def catch_up(db: Database, tenant_id: str, *, max_steps: int) -> Freshness:
    """Works on the tenant's projection until it is current or `max_steps` batches are done."""
    for _ in range(max_steps):
        if not await step(db, tenant_id):
            break
    return await freshness(db, tenant_id)


async def freshness(db: Database, tenant_id: str) -> Freshness:
    async with db.transaction(tenant_id, write=False) as conn:
        progress = (
            await conn.execute(
                select(analytics_progress.c.last_seq, analytics_progress.c.rebuilding).where(
                    analytics_progress.c.tenant_id == tenant_id
                )
            )
        ).first()
        head = await events_repo.head(conn, tenant_id)
    if progress is None:
        return Freshness(rebuilding=True, events_behind=head)
    return Freshness(
        rebuilding=bool(progress.rebuilding), events_behind=max(0, head - int(progress.last_seq))
    )


async def rebuild(db: Database, tenant_id: str) -> int:
    """Projects every live conversation of the tenant again, then its events since; returns the steps."""
    async with db.transaction(tenant_id, write=True, lock_timeout=LOCK_WAIT_SECONDS) as conn:
        await lock_names(conn, [projector_lock(tenant_id)])
        await _start_rebuild(conn, tenant_id)
    steps = 1
    while await step(db, tenant_id):
        steps += 1
    return steps


async def rebuild_after_restore(conn: AsyncConnection, tenant_ids: Sequence[str], *, replaced: bool) -> None:
    """Restored tenants are projected again from their tables. After a --replace the old projection goes
    too: it described data that is gone (archived conversations included)."""
    tables = ANALYTICS_TABLES if replaced else (analytics_progress,)
    for table in tables:
        await conn.execute(delete(table).where(table.c.tenant_id.in_(tenant_ids)))


async def _start_rebuild(conn: AsyncConnection, tenant_id: str) -> None:
    # Events numbered from here on are read after the rebuild: whatever they changed, the rebuild may
    # or may not have seen, and projecting a conversation twice is harmless.
    values = {
        "last_seq": await events_repo.head(conn, tenant_id),
        "rebuilding": True,
        "rebuild_after": None,
        "updated_at": utcnow(),
    }
    statement = dialect_insert(conn.dialect.name)(analytics_progress).values(tenant_id=tenant_id, **values)
    await conn.execute(statement.on_conflict_do_update(index_elements=["tenant_id"], set_=values))
    # The live conversations' rows go in one statement each, so that the batches only insert: deleting a
    # batch's rows first can be a scan of the tenant's rows per batch on tables the planner has no
    # statistics for yet (a first rebuild; measured 554 s against 100 s at 100,000 conversations).
    live = select(conversations.c.id).where(conversations.c.tenant_id == tenant_id)
    for table in PROJECTION_TABLES:
        await conn.execute(
            delete(table).where(table.c.tenant_id == tenant_id, table.c.conversation_id.in_(live))
        )


async def _rebuild_batch(conn: AsyncConnection, tenant_id: str, after: uuid.UUID | None) -> bool:
    c = conversations.c
    query = select(c.id).where(c.tenant_id == tenant_id).order_by(c.id).limit(CONVERSATIONS_PER_STEP)
    if after is not None:
        query = query.where(c.id > after)
    ids = list((await conn.execute(query)).scalars())
    await project(conn, tenant_id, ids, replace=False)  # the rebuild's start removed their rows
    done = len(ids) < CONVERSATIONS_PER_STEP
    now = utcnow()
    values: dict[str, Any] = {"rebuild_after": ids[-1] if ids else after, "updated_at": now}
    if done:
        values.update(rebuilding=False, rebuild_after=None, rebuilt_at=now)
    await conn.execute(
        update(analytics_progress).where(analytics_progress.c.tenant_id == tenant_id).values(**values)
    )
    return True  # after the last batch, the events since the rebuild began are read


async def _events_batch(conn: AsyncConnection, tenant_id: str, last_seq: int) -> bool:
    head = await events_repo.head(conn, tenant_id)
    if head <= last_seq:
        return False
    through = min(head, last_seq + EVENTS_PER_STEP)
    e = events.c
    named = (
        select(e.conversation_id)
        .where(
            e.tenant_id == tenant_id,
            e.seq > last_seq,
            e.seq <= through,
            e.conversation_id.is_not(None),
        )
        .distinct()
    )
    ids = list((await conn.execute(named)).scalars())
    for chunk in _chunks(ids, CONVERSATIONS_PER_STEP):
        await project(conn, tenant_id, chunk)
    await conn.execute(
        update(analytics_progress)
        .where(analytics_progress.c.tenant_id == tenant_id)
        .values(last_seq=through, updated_at=utcnow())
    )
    return through < head


def _chunks(items: Sequence[uuid.UUID], size: int) -> Iterable[Sequence[uuid.UUID]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def project(
    conn: AsyncConnection, tenant_id: str, ids: Sequence[uuid.UUID], *, replace: bool = True
) -> int:
    """Replaces the projection of these conversations with one computed from their rows now (without
    `replace`, they have none). A conversation no longer in the live tables (archived) keeps its rows."""
    if not ids:
        return 0
    c, m, p = conversations.c, messages.c, participants.c
    live = (
        await conn.execute(
            select(
                c.id,
                c.customer_id,
                c.channel,
                c.business_number_id,
                c.state,
                c.started_at,
                c.closed_at,
            ).where(c.tenant_id == tenant_id, one_of(conn, c.id, ids))
        )
    ).all()
    if not live:
        return 0
    live_ids = [row.id for row in live]
    by_conversation: dict[uuid.UUID, list[F.MessageRow]] = defaultdict(list)
    message_rows = await conn.execute(
        select(m.conversation_id, *(m[name] for name in F.MessageRow._fields)).where(
            m.tenant_id == tenant_id, one_of(conn, m.conversation_id, live_ids)
        )
    )
    # By position: a round reads every message of the conversations it projects.
    for position, (conversation_id, *fields) in enumerate(message_rows, 1):
        if position % (YIELD_EVERY * 40) == 0:
            await asyncio.sleep(0)
        by_conversation[conversation_id].append(F.MessageRow._make(fields))
    stints: dict[uuid.UUID, list[F.AgentStint]] = defaultdict(list)
    stint_rows = await conn.execute(
        select(p.conversation_id, p.participant_ref, p.joined_at, p.left_at).where(
            p.tenant_id == tenant_id, one_of(conn, p.conversation_id, live_ids), p.role == "agent"
        )
    )
    for conversation_id, *fields in stint_rows:
        stints[conversation_id].append(F.AgentStint._make(fields))
    history = await _customer_history(conn, tenant_id, {row.customer_id for row in live})

    now = utcnow()
    fact_rows: list[dict[str, Any]] = []
    failure_rows: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    sessions: list[dict[str, Any]] = []
    involvement: list[dict[str, Any]] = []
    for position, row in enumerate(live, 1):
        if position % YIELD_EVERY == 0:
            await asyncio.sleep(0)  # let requests in: this loop is pure computation
        conversation = F.ConversationRow(
            row.id,
            row.customer_id,
            row.channel,
            row.business_number_id,
            row.state,
            row.started_at,
            row.closed_at,
        )
        previous = [
            closed_at
            for conversation_id, closed_at in history.closes.get(
                (row.customer_id, row.business_number_id), ()
            )
            if conversation_id != row.id and closed_at <= row.started_at
        ]
        computed = F.compute(
            conversation,
            by_conversation[row.id],
            stints[row.id],
            previous_close=max(previous, default=None),
            customer_first=history.first.get(row.customer_id) == row.id,
            now=now,
        )
        for (bucket, actor), amounts in computed.facts.items():
            fact_rows.append(
                {
                    "tenant_id": tenant_id,
                    "conversation_id": row.id,
                    "bucket": bucket,
                    "actor": actor,
                    "business_number_id": row.business_number_id,
                    **amounts,
                }
            )
        for (bucket, actor, code), count in computed.failures.items():
            failure_rows.append(
                {
                    "tenant_id": tenant_id,
                    "conversation_id": row.id,
                    "bucket": bucket,
                    "actor": actor,
                    "business_number_id": row.business_number_id,
                    "code": code,
                    "failed": count,
                }
            )
        summaries.append({"tenant_id": tenant_id, **computed.summary})
        sessions.extend({"tenant_id": tenant_id, **session} for session in computed.sessions)
        involvement.extend({"tenant_id": tenant_id, **part} for part in computed.involvement)

    for table, rows in (
        (analytics_facts, fact_rows),
        (analytics_failures, failure_rows),
        (analytics_conversations, summaries),
        (analytics_agent_sessions, sessions),
        (analytics_agent_involvement, involvement),
    ):
        if replace:
            await _replace_rows(conn, table, tenant_id, live_ids, rows)
        elif rows:
            await conn.execute(insert(table), rows)
    return len(live)


# Not compared when deciding whether a row changed: a projection that changes nothing else leaves it.
UNCOMPARED_COLUMNS = frozenset({"projected_at"})


async def _replace_rows(
    conn: AsyncConnection,
    table: Table,
    tenant_id: str,
    ids: Sequence[uuid.UUID],
    rows: Sequence[dict[str, Any]],
) -> None:
    """Makes the table's rows of these conversations exactly `rows`, writing only the difference.

    A new message changes one to three of its conversation's rows (its bucket's counts, the total on the
    row of its start, the reply window); deleting and inserting all of them every round rewrote every row
    and index entry, and left as many dead rows for VACUUM. A changed count is updated in place (HOT: no
    index holds one)."""
    keys = [column.name for column in table.primary_key.columns]
    compared = [column.name for column in table.columns if column.name not in UNCOMPARED_COLUMNS]
    # Stored rows are read in the order of `keys + compared`, so that both sides compare as tuples (every
    # projection table's key has two columns or more: itemgetter then gives tuples).
    assert len(keys) > 1
    assert len(compared) > 1
    key_of, values_of = itemgetter(*keys), itemgetter(*compared)
    stored = {
        tuple(row[: len(keys)]): tuple(row[len(keys) :])
        for row in await conn.execute(
            select(*(table.c[name] for name in (*keys, *compared))).where(
                table.c.tenant_id == tenant_id, one_of(conn, table.c.conversation_id, ids)
            )
        )
    }
    changed = [row for row in rows if stored.pop(key_of(row), None) != values_of(row)]
    if stored:  # keys no longer computed: a bucket or actor that moved, an agent no longer involved
        await conn.execute(
            delete(table).where(*(table.c[name] == bindparam(f"gone_{name}") for name in keys)),
            [{f"gone_{name}": value for name, value in zip(keys, key, strict=True)} for key in stored],
        )
    if changed:
        upsert = dialect_insert(conn.dialect.name)(table)
        await conn.execute(
            upsert.on_conflict_do_update(
                index_elements=keys,
                set_={c.name: upsert.excluded[c.name] for c in table.columns if c.name not in keys},
            ),
            changed,
        )


@dataclass
class _CustomerHistory:
    # (customer, business number) -> (conversation, closed_at) of its closed conversations
    closes: dict[tuple[uuid.UUID, str], list[tuple[uuid.UUID, dt.datetime]]]
    first: dict[uuid.UUID, uuid.UUID]  # customer -> its first conversation (earliest start, then ID)


async def _customer_history(
    conn: AsyncConnection, tenant_id: str, customer_ids: set[uuid.UUID]
) -> _CustomerHistory:
    """These customers' conversations, live or archived (projected before they left the live tables)."""
    c, a = conversations.c, analytics_conversations.c
    closes: dict[tuple[uuid.UUID, str], list[tuple[uuid.UUID, dt.datetime]]] = defaultdict(list)
    earliest: dict[uuid.UUID, tuple[dt.datetime, uuid.UUID]] = {}
    for query in (
        select(c.customer_id, c.business_number_id, c.id, c.started_at, c.state, c.closed_at).where(
            c.tenant_id == tenant_id, one_of(conn, c.customer_id, customer_ids)
        ),
        select(
            a.customer_id, a.business_number_id, a.conversation_id, a.started_at, a.state, a.ended_at
        ).where(a.tenant_id == tenant_id, one_of(conn, a.customer_id, customer_ids)),
    ):
        for customer_id, number, conversation_id, started_at, state, ended_at in await conn.execute(query):
            if state == "closed" and ended_at is not None:
                closes[(customer_id, number)].append((conversation_id, ended_at))
            key = (started_at, conversation_id)
            if customer_id not in earliest or key < earliest[customer_id]:
                earliest[customer_id] = key
    return _CustomerHistory(closes, {customer: key[1] for customer, key in earliest.items()})


class AnalyticsProjector:
    """The background projector of one process. The tenants whose events this process's relay numbers
    are projected within `ROUND_SECONDS` (`numbered` is the relay's hook: it only notes the tenant);
    every `sweep_seconds` every tenant is looked at, for work another instance left behind."""

    def __init__(self, db: Database, *, sweep_seconds: float) -> None:
        self.db = db
        self.sweep_seconds = sweep_seconds
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._woken = asyncio.Event()
        self._numbered: set[str] = set()
        self.last_error: str | None = None

    def start(self) -> None:
        if self.sweep_seconds > 0:
            self._task = asyncio.create_task(self._run(), name="analytics-projector")

    async def numbered(self, _conn: AsyncConnection, tenant_id: str, _events: Sequence[Any]) -> None:
        self._numbered.add(tenant_id)
        self._woken.set()

    async def close(self) -> None:
        """Lets the batch in progress finish (a cancelled SQLite write can keep the write lock)."""
        self._stopping.set()
        self._woken.set()
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._task), LOCK_WAIT_SECONDS)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        # Not all at once: instances started together would all look at every tenant together.
        next_sweep = loop.time() + random.uniform(0, self.sweep_seconds)
        while not self._stopping.is_set():
            # Cleared before the work is taken: a tenant noted, or a stop, while this round works wakes
            # the next wait at once.
            self._woken.clear()
            try:
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + self.sweep_seconds
                    await self._work_on(await self._behind())
                tenants_now, self._numbered = self._numbered, set()
                await self._work_on(sorted(tenants_now))
                self.last_error = None
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("analytics projection failed; trying again", extra={"error": self.last_error})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), ROUND_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), max(0.0, next_sweep - loop.time()))

    async def _behind(self) -> list[str]:
        return [work.tenant_id for work in await pending_work(self.db) if work.analytics_behind]

    async def _work_on(self, tenant_ids: Iterable[str]) -> None:
        for tenant_id in tenant_ids:
            # Another instance working on the tenant (the lock is taken): it does this work.
            while not self._stopping.is_set() and await step(self.db, tenant_id, wait=False):
                pass
