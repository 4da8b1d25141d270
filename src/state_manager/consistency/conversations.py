"""Conversations: one open per customer and number, lifecycle times that agree with the state, participants
that left when their conversation ended, and activity times that agree with the messages."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import RowMapping, Select, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.cache.invalidation import changed, thread_tag
from state_manager.consistency.core import Check, Context, Finding, Outcome, Result, keyset, moment
from state_manager.conversations import repository as conversations_repo
from state_manager.conversations import service as conversations
from state_manager.conversations.lifecycle import FINAL_STATES, ConversationState
from state_manager.conversations.models import conversations as conversations_table
from state_manager.conversations.models import participants, state_changes
from state_manager.conversations.repository import OPEN_FILTER, REPLY_WINDOW
from state_manager.conversations.schemas import TransitionRequest
from state_manager.events.emit import emit
from state_manager.events.types import EventType
from state_manager.messages.models import messages

c = conversations_table.c
p = participants.c
m = messages.c
KNOWN_STATES = {state.value for state in ConversationState}
LEFT_BEFORE_JOINED, PRESENT_AFTER_END = "left before joined", "present after the end"


def _announce_update(conn: AsyncConnection, tenant_id: str, row: RowMapping, fields: dict[str, Any]) -> None:
    """A repaired conversation is announced as any update of its fields is (`conversations.update`)."""
    emit(
        conn,
        tenant_id,
        EventType.CONVERSATION_UPDATED,
        {"fields": fields, "version": row["version"]},
        conversation_id=row["id"],
        customer_id=row["customer_id"],
    )


class OneOpenConversation(Check):
    name = "open-conversations"
    invariant = (
        "At most one open conversation (pending, active, waiting, error) per customer and business number; "
        "normally the partial unique index guarantees it, but a restore or a dropped index can break it."
    )

    async def find(self, ctx: Context, tenant_id: str) -> AsyncIterator[list[Finding]]:
        def groups(after: RowMapping | None) -> Select[Any]:
            query = (
                select(c.customer_id, c.business_number_id)
                .where(c.tenant_id == tenant_id, OPEN_FILTER)
                .group_by(c.customer_id, c.business_number_id)
                .having(func.count() > 1)
                .order_by(c.customer_id, c.business_number_id)
            )
            if after is not None:
                query = query.where(
                    tuple_(c.customer_id, c.business_number_id)
                    > tuple_(after["customer_id"], after["business_number_id"])
                )
            return query

        async for batch in keyset(ctx, tenant_id, groups, batch=200):
            found = []
            async with ctx.read(tenant_id) as conn:
                for group in batch:
                    ids = await _open_of(conn, tenant_id, group["customer_id"], group["business_number_id"])
                    if len(ids) < 2:
                        continue
                    found.append(
                        Finding(
                            self.name,
                            tenant_id,
                            tuple(str(found_id) for found_id in ids),
                            f"{len(ids)} open conversations of customer {group['customer_id']} on business "
                            f"number {group['business_number_id']}; the latest active, {ids[0]}, stays open",
                            data=(group["customer_id"], group["business_number_id"]),
                        )
                    )
            if found:
                yield found

    async def repair_one(self, ctx: Context, tenant_id: str, finding: Finding) -> Result:
        customer_id, business_number_id = finding.data
        async with ctx.write(tenant_id) as conn:
            ids = await _open_of(conn, tenant_id, customer_id, business_number_id, lock=True)
            if len(ids) < 2:
                return Result(finding, Outcome.RESOLVED)
            kept, *others = ids
            # Through the lifecycle, as an API call: state change rows, participants leaving, events.
            request = TransitionRequest(
                state=ConversationState.CLOSED, reason=f"duplicate open conversation; {kept} stays open"
            )
            for other in others:
                await conversations.transition(conn, tenant_id, other, request, None)
        return Result(finding, Outcome.REPAIRED, f"closed {len(others)}, kept {kept} open")


async def _open_of(
    conn: AsyncConnection,
    tenant_id: str,
    customer_id: uuid.UUID,
    business_number_id: str,
    *,
    lock: bool = False,
) -> list[uuid.UUID]:
    """The open conversations of a customer on a number, the one to keep (latest activity) first."""
    query = (
        select(c.id)
        .where(
            c.tenant_id == tenant_id,
            c.customer_id == customer_id,
            c.business_number_id == business_number_id,
            OPEN_FILTER,
        )
        .order_by(c.last_activity_at.desc(), c.started_at.desc(), c.id.desc())
    )
    if lock:
        query = query.with_for_update()
    return list((await conn.execute(query)).scalars())


def _after_id(column: Any, after: RowMapping | None, key: str = "id") -> list[Any]:
    return [] if after is None else [column > after[key]]


class LifecycleTimes(Check):
    name = "conversation-lifecycle"
    invariant = (
        "A closed or expired conversation has closed_at, equal to state_changed_at (the transition sets "
        "both); an open one has neither closed_at nor close_reason; the state is a known one and the "
        "state history has a row leading to it."
    )

    async def find(self, ctx: Context, tenant_id: str) -> AsyncIterator[list[Finding]]:
        sc = state_changes.c
        # A scalar subquery with LIMIT, not EXISTS, which PostgreSQL may run as a hashed subplan reading the
        # tenant's whole history for each batch: this stays an index probe per conversation.
        leading = select(sc.id).where(
            sc.tenant_id == c.tenant_id, sc.conversation_id == c.id, sc.to_state == c.state
        )
        recorded = leading.limit(1).scalar_subquery().is_not(None).label("recorded")

        def page(after: RowMapping | None) -> Select[Any]:
            return (
                select(
                    c.id, c.state, c.state_reason, c.state_changed_at, c.closed_at, c.close_reason, recorded
                )
                .where(c.tenant_id == tenant_id, *_after_id(c.id, after))
                .order_by(c.id)
            )

        async for batch in keyset(ctx, tenant_id, page):
            found = [finding for row in batch for finding in self._examine(tenant_id, row)]
            if found:
                yield found

    def _examine(self, tenant_id: str, row: RowMapping) -> list[Finding]:
        subject = (str(row["id"]),)
        state = row["state"]
        if state not in KNOWN_STATES:
            return [
                Finding(
                    self.name,
                    tenant_id,
                    subject,
                    f"unknown state {state!r}",
                    left_because="which state it should be in cannot be derived",
                )
            ]
        found = []
        if state in FINAL_STATES:
            if row["closed_at"] is None:
                found.append(
                    Finding(
                        self.name,
                        tenant_id,
                        subject,
                        f"{state} without closed_at; the transition set it to state_changed_at "
                        f"{moment(row['state_changed_at'])}",
                    )
                )
            elif row["closed_at"] != row["state_changed_at"]:
                found.append(
                    Finding(
                        self.name,
                        tenant_id,
                        subject,
                        f"{state} with closed_at {moment(row['closed_at'])} but state_changed_at "
                        f"{moment(row['state_changed_at'])}; the transition sets both to one time",
                        left_because="which of the two times is right cannot be derived",
                    )
                )
        elif row["closed_at"] is not None or row["close_reason"] is not None:
            found.append(
                Finding(
                    self.name,
                    tenant_id,
                    subject,
                    f"{state} (open) but closed_at {moment(row['closed_at'])}, close_reason "
                    f"{row['close_reason']!r}",
                    left_because="whether it ended (and its state is old) or not cannot be derived",
                )
            )
        if not row["recorded"]:
            found.append(
                Finding(
                    self.name,
                    tenant_id,
                    subject,
                    f"no state change row leads to its state {state}",
                    left_because="the lost transition's origin and time cannot be derived",
                )
            )
        return found

    async def repair_one(self, ctx: Context, tenant_id: str, finding: Finding) -> Result:
        conversation_id = uuid.UUID(finding.subjects[0])
        async with ctx.write(tenant_id) as conn:
            row = await conversations_repo.get(conn, tenant_id, conversation_id, for_update=True)
            if row is None or row["state"] not in FINAL_STATES or row["closed_at"] is not None:
                return Result(finding, Outcome.RESOLVED)
            values: dict[str, Any] = {"closed_at": row["state_changed_at"]}
            if row["close_reason"] is None and row["state_reason"] is not None:
                values["close_reason"] = row["state_reason"]  # the transition sets both to its reason
            updated = await conversations_repo.update_versioned(
                conn, tenant_id, conversation_id, values, expected_version=row["version"], at=ctx.now
            )
            assert updated is not None  # locked above
            fields = {**values, "closed_at": row["state_changed_at"].isoformat()}
            _announce_update(conn, tenant_id, updated, fields)
        return Result(finding, Outcome.REPAIRED, "closed_at set to state_changed_at")


class ParticipantTimes(Check):
    name = "participants"
    invariant = (
        "A participant never leaves before it joined, and none is still present in a closed or expired "
        "conversation (the transition marks every one as left)."
    )

    async def find(self, ctx: Context, tenant_id: str) -> AsyncIterator[list[Finding]]:
        def page(after: RowMapping | None) -> Select[Any]:
            return (
                select(
                    p.id,
                    p.conversation_id,
                    p.joined_at,
                    p.left_at,
                    c.state,
                    func.coalesce(c.closed_at, c.state_changed_at).label("ended_at"),
                )
                .join(conversations_table, (c.tenant_id == p.tenant_id) & (c.id == p.conversation_id))
                .where(p.tenant_id == tenant_id, *_after_id(p.id, after))
                .order_by(p.id)
            )

        async for batch in keyset(ctx, tenant_id, page):
            found = []
            for row in batch:
                subjects = (str(row["id"]), str(row["conversation_id"]))
                if row["left_at"] is not None and row["left_at"] < row["joined_at"]:
                    found.append(
                        Finding(
                            self.name,
                            tenant_id,
                            subjects,
                            f"left at {moment(row['left_at'])}, "
                            f"before it joined at {moment(row['joined_at'])}",
                            data=LEFT_BEFORE_JOINED,
                        )
                    )
                elif row["left_at"] is None and row["state"] in FINAL_STATES:
                    found.append(
                        Finding(
                            self.name,
                            tenant_id,
                            subjects,
                            f"still present in a {row['state']} conversation; it left when the conversation "
                            f"ended, {moment(row['ended_at'])}",
                            data=PRESENT_AFTER_END,
                        )
                    )
            if found:
                yield found

    async def repair_one(self, ctx: Context, tenant_id: str, finding: Finding) -> Result:
        participant_id, conversation_id = (uuid.UUID(subject) for subject in finding.subjects)
        async with ctx.write(tenant_id) as conn:
            if finding.data == LEFT_BEFORE_JOINED:
                # mark_left's own rule: never before joined_at.
                repaired = await conn.execute(
                    participants.update()
                    .where(
                        p.tenant_id == tenant_id,
                        p.id == participant_id,
                        p.left_at.is_not(None),
                        p.left_at < p.joined_at,
                    )
                    .values(left_at=p.joined_at)
                    .returning(p.id)
                )
                if repaired.first() is None:
                    return Result(finding, Outcome.RESOLVED)
                changed(tenant_id, thread_tag(conversation_id))
                return Result(finding, Outcome.REPAIRED, "left_at set to joined_at")
            row = await conversations_repo.get(conn, tenant_id, conversation_id, for_update=True)
            present = await conversations_repo.get_participant(
                conn, tenant_id, conversation_id, participant_id
            )
            still_present = present is not None and present["left_at"] is None
            if row is None or row["state"] not in FINAL_STATES or not still_present:
                return Result(finding, Outcome.RESOLVED)
            # As the transition to the final state would have: left when it ended, participant.left event.
            ended_at = row["closed_at"] or row["state_changed_at"]
            await conversations.remove_participant(conn, tenant_id, conversation_id, participant_id, ended_at)
        return Result(finding, Outcome.REPAIRED, f"marked as left at {moment(ended_at)}")


class ActivityTimes(Check):
    name = "conversation-activity"
    invariant = (
        "last_inbound_at and last_outbound_at are the latest message of each direction, "
        "reply_window_ends_at is 24 h after the latest inbound one, and last_activity_at is the later of "
        "started_at and the latest message (messages/service.py, record_activity)."
    )

    async def find(self, ctx: Context, tenant_id: str) -> AsyncIterator[list[Finding]]:
        latest_inbound = _latest(c.tenant_id, c.id, "inbound")
        latest_outbound = _latest(c.tenant_id, c.id, "outbound")

        def page(after: RowMapping | None) -> Select[Any]:
            return (
                select(
                    c.id,
                    c.started_at,
                    c.last_activity_at,
                    c.last_inbound_at,
                    c.last_outbound_at,
                    c.reply_window_ends_at,
                    latest_inbound.label("latest_inbound"),
                    latest_outbound.label("latest_outbound"),
                )
                .where(c.tenant_id == tenant_id, *_after_id(c.id, after))
                .order_by(c.id)
            )

        async for batch in keyset(ctx, tenant_id, page, batch=500):
            found = []
            for row in batch:
                wrong = _wrong_activity(row, row["latest_inbound"], row["latest_outbound"])
                if wrong:
                    detail = "; ".join(
                        f"{name} {moment(row[name])}, messages say {moment(expected)}"
                        for name, expected in wrong.items()
                    )
                    found.append(Finding(self.name, tenant_id, (str(row["id"]),), detail))
            if found:
                yield found

    async def repair_one(self, ctx: Context, tenant_id: str, finding: Finding) -> Result:
        conversation_id = uuid.UUID(finding.subjects[0])
        async with ctx.write(tenant_id) as conn:
            # Locked first: a message recorded meanwhile updates the row after this (record_activity
            # takes the later time), so nothing it brings is lost.
            row = await conversations_repo.get(conn, tenant_id, conversation_id, for_update=True)
            if row is None:
                return Result(finding, Outcome.RESOLVED)
            latest = (_latest(tenant_id, conversation_id, way) for way in ("inbound", "outbound"))
            inbound, outbound = (await conn.execute(select(*latest))).one()
            wrong = _wrong_activity(row, inbound, outbound)
            if not wrong:
                return Result(finding, Outcome.RESOLVED)
            updated = await conversations_repo.update_versioned(
                conn, tenant_id, conversation_id, wrong, expected_version=row["version"], at=ctx.now
            )
            assert updated is not None  # locked above
            fields = {name: None if value is None else value.isoformat() for name, value in wrong.items()}
            _announce_update(conn, tenant_id, updated, fields)
        return Result(finding, Outcome.REPAIRED, "recomputed from the messages")


def _latest(tenant_id: Any, conversation_id: Any, direction: str) -> Any:
    """The latest occurred_at of a conversation's messages in one direction (an index probe); the IDs are
    values or the outer query's columns."""
    return (
        select(func.max(m.occurred_at))
        .where(m.tenant_id == tenant_id, m.conversation_id == conversation_id, m.direction == direction)
        .scalar_subquery()
    )


def _wrong_activity(row: RowMapping, inbound: Any, outbound: Any) -> dict[str, Any]:
    """The activity columns that differ from what the messages say, with the values they should have."""
    expected = {
        "last_inbound_at": inbound,
        "last_outbound_at": outbound,
        "reply_window_ends_at": None if inbound is None else inbound + REPLY_WINDOW,
        "last_activity_at": max(t for t in (row["started_at"], inbound, outbound) if t is not None),
    }
    return {name: value for name, value in expected.items() if row[name] != value}
