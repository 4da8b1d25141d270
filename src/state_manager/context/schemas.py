from __future__ import annotations

import datetime as dt
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from state_manager.timefmt import EventTime

KEY_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"


class ContextPatch(BaseModel):
    """Values merged per key; a null value removes the key. For each key the write with the latest
    `at` wins, so late or repeated writes cannot undo a newer one."""

    model_config = ConfigDict(extra="forbid")

    values: dict[str, Any] = Field(min_length=1, max_length=200)
    at: EventTime | None = Field(default=None, description="When the values were true; default now")

    @field_validator("values")
    @classmethod
    def _keys(cls, values: dict[str, Any]) -> dict[str, Any]:
        bad = [key for key in values if not re.match(KEY_PATTERN, key)]
        if bad:
            raise ValueError(f"keys must be 1 to 128 letters, digits and _.:- ; not {bad[:5]}")
        return values


class ContextRead(BaseModel):
    values: dict[str, Any]
    updated_at: dict[str, dt.datetime]
