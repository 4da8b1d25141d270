"""The audit log of the tenant a request acts for: who exported or erased what, and when."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from state_manager.audit import repository
from state_manager.audit.schemas import AuditEntryRead
from state_manager.deps import TenantDep
from state_manager.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page, decode_cursor, encode_cursor
from state_manager.timefmt import FilterTime

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("", summary="The tenant's audit log, newest first")
async def list_audit_entries(
    scope: TenantDep,
    subject_type: Annotated[str | None, Query(max_length=32)] = None,
    subject_id: Annotated[str | None, Query(max_length=128)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    actor: Annotated[str | None, Query(max_length=128)] = None,
    after: Annotated[FilterTime | None, Query(description="only entries later than this time")] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Page[AuditEntryRead]:
    async with scope.read() as conn:
        rows = await repository.list_page(
            conn,
            scope.tenant_id,
            subject_type=subject_type,
            subject_id=subject_id,
            action=action,
            actor=actor,
            after=after,
            before=decode_cursor(cursor) if cursor else None,
            limit=limit,
        )
    items = [AuditEntryRead.model_validate(dict(row)) for row in rows]
    next_cursor = encode_cursor(items[-1].occurred_at, items[-1].id) if len(items) == limit else None
    return Page(items=items, next_cursor=next_cursor)
