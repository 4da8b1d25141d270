"""Retention: each tenant's data kept no longer than its policy allows (tenant settings, `retention`).

In this order, each step in batches of short transactions, so that live traffic never waits long:
1. message content older than `message_content_days` is redacted (the messages stay, for counts);
2. raw webhook bodies older than `raw_webhook_days` are deleted, and older than `message_content_days`
   too when that is shorter (they hold the same text);
3. closed and expired conversations older than `closed_conversation_days` are written to an archive file
   (the backup format: `state-manager restore FILE` brings them back) with their participants, state
   history, messages, context and events, and removed from the live tables; redaction ran first, so an
   archive never holds content the policy had already removed;
4. events older than `event_days` are removed from the front of the tenant's sequence
   (`event_relay.trimmed_through` says how far: a consumer resuming from before it learns that it
   missed some), with the settled webhook deliveries made from them; pending deliveries stay.

A dry run counts what each step would change and changes nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import ColumnElement, Table, and_, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.audit import service as audit
from state_manager.backup.snapshot import AnySelect, write_snapshot
from state_manager.cache import LookupCache
from state_manager.cache.invalidation import changed, conversations_tag, ended_tag, thread_tag
from state_manager.context.models import context_entries
from state_manager.conversations.lifecycle import FINAL_STATES
from state_manager.conversations.models import conversations, participants, state_changes
from state_manager.db import Database
from state_manager.errors import StateManagerError
from state_manager.events.emit import emit
from state_manager.events.models import event_relay, events
from state_manager.events.types import EventType
from state_manager.jobs.report import JobReport
from state_manager.messages.models import messages
from state_manager.messages.redaction import redact_messages
from state_manager.settings import Settings
from state_manager.subscriptions.models import webhook_deliveries
from state_manager.tenants import service as tenants
from state_manager.tenants.schemas import RetentionSettings
from state_manager.webhooks.models import webhook_events


class ArchiveFailed(StateManagerError):
    """The archive file could not be written: nothing was removed (the transaction rolls back)."""

    code = "archive-failed"
    title = "Archive not written"


log = logging.getLogger("state_manager.retention")
REDACT_BATCH = 1000
DELETE_BATCH = 1000
ARCHIVE_BATCH = 200  # conversations per archive file (and per transaction)
TRIM_BATCH = 5000
DAY = dt.timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """Per step, rows older than this go; None = the tenant keeps them."""

    content: dt.datetime | None
    raw_webhooks: dt.datetime | None
    conversations: dt.datetime | None
    events: dt.datetime | None

    @classmethod
    def of(cls, policy: RetentionSettings, now: dt.datetime) -> Cutoffs:
        def before(days: int | None) -> dt.datetime | None:
            return None if days is None else now - days * DAY

        raw_days = [d for d in (policy.raw_webhook_days, policy.message_content_days) if d is not None]
        return cls(
            content=before(policy.message_content_days),
            raw_webhooks=before(min(raw_days)) if raw_days else None,
            conversations=before(policy.closed_conversation_days),
            events=before(policy.event_days),
        )


async def apply_retention(
    settings: Settings,
    db: Database,
    cache: LookupCache,
    *,
    now: dt.datetime,
    actor: str,
    tenant_id: str | None = None,
    dry_run: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
) -> JobReport:
    report = JobReport("retention", dry_run)
    async with db.transaction(None, write=False) as conn:
        found = await tenants.list_tenants(conn)
    for tenant in found:
        if tenant_id is not None and tenant.id != tenant_id:
            continue
        try:
            finished = await _apply_to_tenant(
                _TenantRetention(
                    settings,
                    db,
                    cache,
                    tenant.id,
                    Cutoffs.of(tenant.settings.retention, now),
                    now,
                    report,
                    should_stop,
                ),
                actor,
                dry_run,
            )
        except Exception as exc:  # one tenant's failure (a full archive disk, say) must not starve the rest
            log.exception("retention failed for tenant %s; the others go on", tenant.id)
            report.failed[tenant.id] = getattr(exc, "detail", None) or repr(exc)
            continue
        if not finished:
            report.stopped_early = True
            return report
    return report


async def _apply_to_tenant(work: _TenantRetention, actor: str, dry_run: bool) -> bool:
    """One tenant's run (or count, in a dry run); False if told to stop before the end."""
    if dry_run:
        async with work.db.transaction(work.tenant_id, write=False) as conn:
            for what, count in (await _would_change(conn, work.tenant_id, work.cut)).items():
                work.report.add(work.tenant_id, what, count)
        return True
    try:
        finished = await work.run()
    except Exception:
        # What the batches that committed changed is recorded, even though a later one failed.
        with contextlib.suppress(Exception):
            await _audit_run(work.db, work.tenant_id, actor, work.report)
        raise
    await _audit_run(work.db, work.tenant_id, actor, work.report)
    return finished


async def _audit_run(db: Database, tenant_id: str, actor: str, report: JobReport) -> None:
    if not report.tenants.get(tenant_id):
        return
    async with db.transaction(tenant_id) as conn:
        await audit.record(
            conn,
            tenant_id,
            actor=actor,
            action="retention.applied",
            subject_type="tenant",
            subject_id=tenant_id,
            details={"changed": dict(report.tenants[tenant_id])},
        )


@dataclass
class _TenantRetention:
    settings: Settings
    db: Database
    cache: LookupCache
    tenant_id: str
    cut: Cutoffs
    now: dt.datetime
    report: JobReport
    should_stop: Callable[[], bool]

    async def run(self) -> bool:
        """Every step to the end; False if told to stop first (the next run carries on)."""
        steps = (
            self._redact_content,
            self._delete_raw_webhooks,
            self._archive_conversations,
            self._trim_events,
        )
        for step in steps:
            while True:
                if self.should_stop():
                    return False
                if not await step():
                    break
        return True

    def _add(self, what: str, count: int) -> None:
        self.report.add(self.tenant_id, what, count)

    async def _redact_content(self) -> bool:
        if self.cut.content is None:
            return False
        m = messages.c
        async with self.cache.publishing_changes(), self.db.transaction(self.tenant_id) as conn:
            ids = (
                (
                    await conn.execute(
                        select(m.id)
                        .where(
                            m.tenant_id == self.tenant_id,
                            m.redacted_at.is_(None),
                            m.occurred_at < self.cut.content,
                        )
                        .order_by(m.occurred_at)
                        .limit(REDACT_BATCH)
                        .with_for_update(skip_locked=True)
                    )
                )
                .scalars()
                .all()
            )
            self._add("messages_redacted", await redact_messages(conn, self.tenant_id, ids, at=self.now))
        return len(ids) == REDACT_BATCH

    async def _delete_raw_webhooks(self) -> bool:
        if self.cut.raw_webhooks is None:
            return False
        w = webhook_events.c
        async with self.db.transaction(self.tenant_id) as conn:
            oldest = (
                select(w.id)
                .where(w.tenant_id == self.tenant_id, w.received_at < self.cut.raw_webhooks)
                .order_by(w.received_at)
                .limit(DELETE_BATCH)
            )
            done = await conn.execute(
                delete(webhook_events).where(
                    w.tenant_id == self.tenant_id, w.id.in_(oldest.scalar_subquery())
                )
            )
        self._add("webhook_bodies_deleted", done.rowcount)
        return done.rowcount == DELETE_BATCH

    async def _archive_conversations(self) -> bool:
        if self.cut.conversations is None:
            return False
        path = self.settings.effective_archive_dir / self.tenant_id / _archive_name(self.now)
        try:
            async with self.cache.publishing_changes(), self.db.transaction(self.tenant_id) as conn:
                due = (
                    await conn.execute(
                        select(conversations.c.id, conversations.c.customer_id)
                        .where(_archivable(self.tenant_id, self.cut.conversations))
                        .order_by(conversations.c.closed_at)
                        .limit(ARCHIVE_BATCH)
                        .with_for_update(skip_locked=True)
                    )
                ).all()
                if not due:
                    return False
                archived_messages = await self._archive(conn, due, path)
        except BaseException:
            # Nothing was removed (the transaction rolled back, its commit included): neither is the file.
            with contextlib.suppress(OSError):  # never hide the failure itself
                path.unlink(missing_ok=True)
            raise
        self._add("conversations_archived", len(due))
        self._add("messages_archived", archived_messages)
        return len(due) == ARCHIVE_BATCH

    async def _archive(
        self, conn: AsyncConnection, due: Sequence[tuple[uuid.UUID, uuid.UUID]], path: Path
    ) -> int:
        """Writes the conversations and what hangs off them to the archive file `path`, then removes them
        from the live tables, in the caller's transaction; returns how many messages went."""
        ids = [conversation_id for conversation_id, _ in due]
        tenant = self.tenant_id
        in_batch = conversations.c.id.in_(ids)
        conversation_context = and_(
            context_entries.c.scope == "conversation", context_entries.c.scope_id.in_(ids)
        )
        parts = [
            (conversations, select(conversations).where(conversations.c.tenant_id == tenant, in_batch)),
            (participants, _of_batch(participants, tenant, ids)),
            (state_changes, _of_batch(state_changes, tenant, ids)),
            (messages, _of_batch(messages, tenant, ids)),
            (
                context_entries,
                select(context_entries).where(context_entries.c.tenant_id == tenant, conversation_context),
            ),
            (events, _of_batch(events, tenant, ids)),
        ]
        try:
            manifest = await write_snapshot(conn, path, parts, kind="archive", tenant_id=tenant)
        except OSError as exc:
            raise ArchiveFailed(f"cannot write the archive {path}: {exc.strerror or exc}") from exc
        # Events stay: they leave with the front of the sequence (step 4), which keeps it free of
        # holes for consumers replaying it; the archive holds a copy.
        await conn.execute(
            delete(context_entries).where(context_entries.c.tenant_id == tenant, conversation_context)
        )
        # Participants, state changes and messages go with their conversation (ON DELETE CASCADE).
        await conn.execute(delete(conversations).where(conversations.c.tenant_id == tenant, in_batch))
        for conversation_id, customer_id in due:
            changed(
                tenant,
                conversations_tag(customer_id),
                thread_tag(conversation_id),
                ended_tag(conversation_id),
            )
            emit(
                conn,
                tenant,
                EventType.CONVERSATION_ARCHIVED,
                {"archive": path.name},
                conversation_id=conversation_id,
                customer_id=customer_id,
            )
        return manifest.tables["messages"].rows

    async def _trim_events(self) -> bool:
        if self.cut.events is None:
            return False
        async with self.db.transaction(self.tenant_id) as conn:
            relay = (
                (await conn.execute(select(event_relay).where(event_relay.c.tenant_id == self.tenant_id)))
                .mappings()
                .first()
            )
            if relay is None:
                return False
            start = relay["trimmed_through"] or 0
            through = await _trim_boundary(conn, self.tenant_id, start, self.cut.events)
            # (seq has no holes after `start`: the count trimmed tells whether a full batch went)
            if through == start:
                return False
            e = events.c
            gone = await conn.execute(
                delete(events).where(e.tenant_id == self.tenant_id, e.seq > start, e.seq <= through)
            )
            await conn.execute(
                update(event_relay)
                .where(event_relay.c.tenant_id == self.tenant_id)
                .values(trimmed_through=through)
            )
            d = webhook_deliveries.c
            settled = await conn.execute(
                delete(webhook_deliveries).where(
                    d.tenant_id == self.tenant_id, d.event_seq <= through, d.status != "pending"
                )
            )
        self._add("events_trimmed", gone.rowcount)
        self._add("webhook_deliveries_deleted", settled.rowcount)
        return gone.rowcount == TRIM_BATCH


def _archivable(tenant_id: str, cutoff: dt.datetime) -> ColumnElement[bool]:
    c = conversations.c
    return and_(
        c.tenant_id == tenant_id, c.state.in_(sorted(s.value for s in FINAL_STATES)), c.closed_at < cutoff
    )


def _of_batch(table: Table, tenant_id: str, ids: Sequence[uuid.UUID]) -> AnySelect:
    return select(table).where(table.c.tenant_id == tenant_id, table.c.conversation_id.in_(ids))


def _archive_name(now: dt.datetime) -> str:
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:12]}.smarchive"


async def _trim_boundary(conn: AsyncConnection, tenant_id: str, start: int, cutoff: dt.datetime) -> int:
    """The last seq of the run of events after `start` that are all older than the cutoff (at most
    TRIM_BATCH of them): the front of the sequence, never a hole in its middle."""
    e = events.c
    window = (
        await conn.execute(
            select(e.seq, e.occurred_at)
            .where(e.tenant_id == tenant_id, e.seq > start)
            .order_by(e.seq)
            .limit(TRIM_BATCH)
        )
    ).all()
    through = start
    for seq, occurred_at in window:
        if occurred_at >= cutoff:
            break
        through = seq
    return through


async def _would_change(conn: AsyncConnection, tenant_id: str, cut: Cutoffs) -> dict[str, int]:
    """What a run would change now, counted without changing anything."""

    async def count(table: Table, *where: ColumnElement[bool]) -> int:
        return int((await conn.execute(select(func.count()).select_from(table).where(*where))).scalar_one())

    found: dict[str, int] = {}
    if cut.content is not None:
        m = messages.c
        found["messages_redacted"] = await count(
            messages, m.tenant_id == tenant_id, m.redacted_at.is_(None), m.occurred_at < cut.content
        )
    if cut.raw_webhooks is not None:
        w = webhook_events.c
        found["webhook_bodies_deleted"] = await count(
            webhook_events, w.tenant_id == tenant_id, w.received_at < cut.raw_webhooks
        )
    if cut.conversations is not None:
        archivable = select(conversations.c.id).where(_archivable(tenant_id, cut.conversations))
        found["conversations_archived"] = await count(
            conversations, _archivable(tenant_id, cut.conversations)
        )
        found["messages_archived"] = await count(
            messages,
            messages.c.tenant_id == tenant_id,
            messages.c.conversation_id.in_(archivable.scalar_subquery()),
        )
    if cut.events is not None:
        relay = (
            await conn.execute(
                select(event_relay.c.trimmed_through).where(event_relay.c.tenant_id == tenant_id)
            )
        ).scalar_one_or_none()
        # All events older than the cutoff; a run stops at the first younger one in the sequence, which
        # is rarely sooner (events are numbered about in the order they happen).
        e = events.c
        found["events_trimmed"] = await count(
            events, e.tenant_id == tenant_id, e.seq > (relay or 0), e.occurred_at < cut.events
        )
    return found
