from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from pydantic import BaseModel, Field


class AuditEntryRead(BaseModel):
    id: uuid.UUID
    occurred_at: dt.datetime
    actor: str = Field(description='The API key\'s ID, "cli:<user>", "scheduler" or "auth-disabled"')
    action: str = Field(description='What was done, e.g. "customer.exported", "customer.erased"')
    subject_type: str = Field(description='What it was done to, e.g. "customer"')
    subject_id: str | None
    details: dict[str, Any] = Field(description="Counts and options of the action; never personal data")
