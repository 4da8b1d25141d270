"""Writing the audit log: in the caller's transaction, so that an action and its record commit together."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.audit.models import audit_log
from state_manager.db.types import utcnow


async def record(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    actor: str,
    action: str,
    subject_type: str,
    subject_id: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> uuid.UUID:
    """Adds one entry; `details` must be JSON and must not hold the personal data the action is about."""
    entry_id = uuid.uuid4()
    await conn.execute(
        insert(audit_log).values(
            tenant_id=tenant_id,
            id=entry_id,
            occurred_at=utcnow(),
            actor=actor,
            action=action,
            subject_type=subject_type,
            subject_id=subject_id,
            details=dict(details or {}),
        )
    )
    return entry_id
