"""Messages: receipt fields that agree with each other, and held receipts that were applied.

A message's status is a generated column over its receipt times (messages/status.py), so it cannot
disagree with them; what can is the failure: its code, title and details are written only with a
`failed_at` (messages/service.py, `_time_values`).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError
from sqlalchemy import RowMapping, Select, or_, select, update

from state_manager.cache.invalidation import changed, message_tag, thread_tag
from state_manager.consistency.core import Check, Context, Finding, Outcome, Result, keyset
from state_manager.messages import repository as messages_repo
from state_manager.messages import service as messages
from state_manager.messages.models import messages as messages_table
from state_manager.messages.models import pending_receipts
from state_manager.messages.schemas import ReceiptError, ReceiptIn
from state_manager.messages.status import ReceiptStatus

m = messages_table.c
pr = pending_receipts.c
FAILURE_FIELDS = ("failure_code", "failure_title", "failure_details")


class FailureWithoutTime(Check):
    name = "message-failures"
    invariant = (
        "A message's failure code, title and details are set only with its failed_at: the receipt merge "
        "writes them together, and clears them when there is no failure."
    )

    async def find(self, ctx: Context, tenant_id: str) -> AsyncIterator[list[Finding]]:
        def page(after: RowMapping | None) -> Select[Any]:
            query = (
                select(m.id, m.conversation_id, m.failed_at, *(m[name] for name in FAILURE_FIELDS))
                .where(m.tenant_id == tenant_id)
                .order_by(m.id)
            )
            return query if after is None else query.where(m.id > after["id"])

        async for batch in keyset(ctx, tenant_id, page):
            found = [
                Finding(
                    self.name,
                    tenant_id,
                    (str(row["id"]),),
                    "failure "
                    + ", ".join(f"{name.removeprefix('failure_')} {row[name]!r}" for name in FAILURE_FIELDS)
                    + " without failed_at",
                    data=row["conversation_id"],
                )
                for row in batch
                if row["failed_at"] is None and any(row[name] is not None for name in FAILURE_FIELDS)
            ]
            if found:
                yield found

    async def repair_one(self, ctx: Context, tenant_id: str, finding: Finding) -> Result:
        message_id = uuid.UUID(finding.subjects[0])
        async with ctx.write(tenant_id) as conn:
            # What the merge writes for a message without a failure: no API answer showed these fields
            # (a failure is shown only with its time), and the next receipt would clear them too.
            cleared = await conn.execute(
                update(messages_table)
                .where(
                    m.tenant_id == tenant_id,
                    m.id == message_id,
                    m.failed_at.is_(None),
                    or_(*(m[name].is_not(None) for name in FAILURE_FIELDS)),
                )
                .values(**dict.fromkeys(FAILURE_FIELDS), updated_at=ctx.now)
                .returning(m.id)
            )
            if cleared.first() is None:
                return Result(finding, Outcome.RESOLVED)
            changed(tenant_id, message_tag(message_id), thread_tag(finding.data))
        return Result(finding, Outcome.REPAIRED, "failure fields cleared")


class HeldReceipts(Check):
    name = "held-receipts"
    invariant = (
        "A receipt is held only while its message is unknown: recording the message, or linking the ID "
        "the receipt names, applies what was held."
    )

    async def find(self, ctx: Context, tenant_id: str) -> AsyncIterator[list[Finding]]:
        def message_by(column: Any) -> Any:
            return (
                select(m.id)
                .where(m.tenant_id == pr.tenant_id, column == pr.external_id)
                .limit(1)
                .scalar_subquery()
            )

        def page(after: RowMapping | None) -> Select[Any]:
            query = (
                select(
                    pr.id,
                    pr.id_kind,
                    pr.external_id,
                    message_by(m.wamid).label("by_wamid"),
                    message_by(m.genesys_message_id).label("by_genesys"),
                )
                .where(pr.tenant_id == tenant_id)
                .order_by(pr.id)
            )
            return query if after is None else query.where(pr.id > after["id"])

        async for batch in keyset(ctx, tenant_id, page):
            found = []
            for row in batch:
                message_id = row["by_wamid"] if row["id_kind"] == "wamid" else row["by_genesys"]
                if message_id is not None:
                    found.append(
                        Finding(
                            self.name,
                            tenant_id,
                            (str(row["id"]), str(message_id)),
                            f"held receipt for {row['id_kind']} ID of message {message_id}, which exists",
                            data=(row["id_kind"], row["external_id"]),
                        )
                    )
            if found:
                yield found

    async def repair_one(self, ctx: Context, tenant_id: str, finding: Finding) -> Result:
        kind, external_id = finding.data
        try:
            async with ctx.write(tenant_id) as conn:
                # Every receipt held for that ID, through the receipt path: merged in any order, status
                # events written, caches told.
                held = await messages_repo.take_held(conn, tenant_id, kind, external_id)
                if not held:
                    return Result(finding, Outcome.RESOLVED)
                outcomes = await messages.apply_receipts(
                    conn, tenant_id, [_receipt(kind, row) for row in held]
                )
        except ValidationError as exc:
            return Result(finding, Outcome.LEFT, f"the held receipt is not a valid receipt: {exc}")
        status = outcomes[-1].status
        return Result(
            finding,
            Outcome.REPAIRED,
            f"applied {len(held)} held receipt(s)" + (f"; the message is {status}" if status else ""),
        )


def _receipt(kind: str, row: RowMapping) -> ReceiptIn:
    status = ReceiptStatus(row["status"])
    failure = [row[name] for name in ("failure_code", "failure_title", "failure_details")]
    error = None
    if status is ReceiptStatus.FAILED and any(part is not None for part in failure):
        error = ReceiptError(code=failure[0], title=failure[1], details=failure[2])
    return ReceiptIn(
        wamid=row["external_id"] if kind == "wamid" else None,
        genesys_message_id=None if kind == "wamid" else row["external_id"],
        status=status,
        at=row["occurred_at"],
        error=error,
    )
