"""Orphan rows: rows whose parent is gone.

Foreign keys guard most of these (enforced on PostgreSQL, and on SQLite by the service's connections,
`PRAGMA foreign_keys=ON`), but a restore that loads tables with constraints off, or a connection without
that pragma, can still leave children behind. Context entries have no foreign key at all: their owner is
a conversation or a customer, by `scope`.

Children are read grouped by the parent they name, through the index every child table has on it (an
index-only scan), and each parent is looked up once: one finding per missing parent, with how many rows
name it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, ColumnElement, RowMapping, Select, Table, delete, func, select, true

from state_manager.cache.invalidation import changed, customer_tag, thread_tag
from state_manager.consistency.core import Check, Context, Finding, Outcome, Result, keyset
from state_manager.context.models import context_entries
from state_manager.conversations.models import conversations, participants, state_changes
from state_manager.customers.models import customer_identities, customers
from state_manager.messages.models import messages
from state_manager.subscriptions.models import webhook_attempts, webhook_deliveries, webhook_subscriptions

BATCH = 2000  # parents looked up per read transaction


@dataclass(frozen=True)
class Relation:
    child: Table
    link: Column[Any]  # the child's column naming its parent (by the parent's `id`, within the tenant)
    parent: Table
    what: str  # the children, for a finding's detail ("<what>: 3")
    # Why orphans are deleted (they mean nothing without their parent), or None to keep them.
    deleted_because: str | None
    kept_because: str | None = None
    only: ColumnElement[bool] | None = None  # the child rows the relation covers
    tags: Callable[[uuid.UUID], tuple[str, ...]] = lambda _parent: ()  # what a deletion changes in caches

    def parent_exists(self, tenant_id: str, parent_id: Any) -> ColumnElement[bool]:
        # A scalar subquery with LIMIT, not EXISTS: PostgreSQL may run an EXISTS as a hashed subplan,
        # reading every parent of the tenant for each batch; this stays one index probe per parent.
        found = select(self.parent.c.id).where(
            self.parent.c.tenant_id == tenant_id, self.parent.c.id == parent_id
        )
        return found.limit(1).scalar_subquery().is_not(None)

    def children(self, tenant_id: str) -> list[ColumnElement[bool]]:
        return [self.child.c.tenant_id == tenant_id, true() if self.only is None else self.only]


_ce = context_entries.c
_MEANINGLESS = "they mean nothing without it"

RELATIONS = (
    Relation(
        customer_identities,
        customer_identities.c.customer_id,
        customers,
        "identities of a missing customer",
        f"{_MEANINGLESS}, and each keeps its external ID from any other customer",
        tags=lambda parent: (customer_tag(parent),),
    ),
    Relation(
        conversations,
        conversations.c.customer_id,
        customers,
        "conversations of a missing customer",
        None,
        kept_because="they hold messages: restore the customer (from a backup) or decide by hand",
    ),
    Relation(
        participants,
        participants.c.conversation_id,
        conversations,
        "participants of a missing conversation",
        _MEANINGLESS,
        tags=lambda parent: (thread_tag(parent),),
    ),
    Relation(
        state_changes,
        state_changes.c.conversation_id,
        conversations,
        "state changes of a missing conversation",
        _MEANINGLESS,
    ),
    Relation(
        messages,
        messages.c.conversation_id,
        conversations,
        "messages of a missing conversation",
        None,
        kept_because="they hold what people wrote: restore the conversation (from a backup) or decide by "
        "hand",
    ),
    Relation(
        context_entries,
        _ce.scope_id,
        conversations,
        "context entries of a missing conversation",
        _MEANINGLESS,
        only=_ce.scope == "conversation",
        tags=lambda parent: (thread_tag(parent),),
    ),
    Relation(
        context_entries,
        _ce.scope_id,
        customers,
        "context entries of a missing customer",
        _MEANINGLESS,
        only=_ce.scope == "customer",
        tags=lambda parent: (customer_tag(parent),),
    ),
    Relation(
        webhook_deliveries,
        webhook_deliveries.c.subscription_id,
        webhook_subscriptions,
        "webhook deliveries of a missing subscription",
        f"{_MEANINGLESS} (no URL, no secret to sign with); their attempts go with them",
    ),
    Relation(
        webhook_attempts,
        webhook_attempts.c.delivery_id,
        webhook_deliveries,
        "attempts of a missing webhook delivery",
        _MEANINGLESS,
    ),
)


class OrphanRows(Check):
    name = "orphan-rows"
    invariant = (
        "Every row's parent exists: identities' customers, conversations' customers, participants', state "
        "changes' and messages' conversations, context entries' conversation or customer, webhook "
        "deliveries' subscriptions and attempts' deliveries."
    )

    async def find(self, ctx: Context, tenant_id: str) -> AsyncIterator[list[Finding]]:
        for relation in RELATIONS:
            async for batch in keyset(ctx, tenant_id, _parents(relation, tenant_id), batch=BATCH):
                found = [
                    Finding(
                        self.name,
                        tenant_id,
                        (str(row["parent_id"]),),
                        f"{relation.what}: {row['rows']}",
                        left_because=relation.kept_because,
                        data=(relation, row["parent_id"]),
                    )
                    for row in batch
                    if not row["has_parent"]
                ]
                if found:
                    yield found

    async def repair_one(self, ctx: Context, tenant_id: str, finding: Finding) -> Result:
        relation, parent_id = finding.data
        async with ctx.write(tenant_id) as conn:
            # Deleted only while the parent is still missing: one restored meanwhile keeps its children.
            statement = delete(relation.child).where(
                *relation.children(tenant_id),
                relation.link == parent_id,
                ~relation.parent_exists(tenant_id, parent_id),
            )
            deleted = (await conn.execute(statement)).rowcount
            if deleted:
                changed(tenant_id, *relation.tags(parent_id))
        if not deleted:
            return Result(finding, Outcome.RESOLVED)
        return Result(finding, Outcome.REPAIRED, f"deleted {deleted}: {relation.deleted_because}")


def _parents(relation: Relation, tenant_id: str) -> Callable[[RowMapping | None], Select[Any]]:
    """The parents the relation's children name, in order, how many name each, and whether it exists."""
    link = relation.link

    def page(after: RowMapping | None) -> Select[Any]:
        query = (
            select(
                link.label("parent_id"),
                func.count().label("rows"),
                relation.parent_exists(tenant_id, link).label("has_parent"),
            )
            .where(*relation.children(tenant_id))
            .group_by(link)
            .order_by(link)
        )
        return query if after is None else query.where(link > after["parent_id"])

    return page
