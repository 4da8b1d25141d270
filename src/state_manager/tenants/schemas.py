from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

TENANT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class KeyKind(enum.StrEnum):
    TENANT = "tenant"  # acts for its own tenant only
    SERVICE = "service"  # a trusted caller that names the tenant per request (X-Tenant-ID)
    ADMIN = "admin"  # organizations, tenants, keys, cross-tenant reports; may also name a tenant


MAX_RETENTION_DAYS = 36_500  # a century; null keeps data for good


class RetentionSettings(BaseModel):
    """Used by the retention job; None keeps data until it is deleted by hand."""

    model_config = ConfigDict(extra="forbid")

    message_content_days: int | None = Field(default=None, ge=1, le=MAX_RETENTION_DAYS)
    closed_conversation_days: int | None = Field(default=None, ge=1, le=MAX_RETENTION_DAYS)
    raw_webhook_days: int | None = Field(default=30, ge=1, le=MAX_RETENTION_DAYS)
    event_days: int | None = Field(default=30, ge=1, le=MAX_RETENTION_DAYS)


class TenantSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inactivity_timeout_seconds: int = Field(default=24 * 3600, ge=60, le=30 * 24 * 3600)
    timezone: str = "UTC"
    retention: RetentionSettings = Field(default_factory=RetentionSettings)


class OrganizationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=TENANT_ID_PATTERN)
    name: str = Field(min_length=1, max_length=200)


class OrganizationRead(BaseModel):
    id: str
    name: str
    created_at: dt.datetime


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=TENANT_ID_PATTERN)
    organization_id: str = Field(pattern=TENANT_ID_PATTERN)
    name: str = Field(min_length=1, max_length=200)
    settings: TenantSettings = Field(default_factory=TenantSettings)


class TenantUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    settings: TenantSettings | None = None


class TenantRead(BaseModel):
    id: str
    organization_id: str
    name: str
    settings: TenantSettings
    created_at: dt.datetime
    updated_at: dt.datetime


RateLimitPerSecond = Annotated[
    float | None,
    Field(
        strict=True,  # a JSON true or false is not a number of requests
        ge=0,
        le=10_000_000,
        description="The key's own limit, requests a second over all instances; null: RATE_LIMIT_PER_SECOND; "
        "0: no limit",
    ),
]
RateLimitBurst = Annotated[
    int | None,
    Field(
        strict=True,
        ge=1,
        le=100_000_000,
        description="Requests the key may send at once above its rate; null: two seconds of its own rate, "
        "or RATE_LIMIT_BURST without one",
    ),
]


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: KeyKind
    name: str = Field(min_length=1, max_length=200)
    tenant_id: str | None = Field(default=None, pattern=TENANT_ID_PATTERN)
    rate_limit_per_second: RateLimitPerSecond = None
    rate_limit_burst: RateLimitBurst = None


class ApiKeyUpdate(BaseModel):
    """A key's rate limit; a field left out is unchanged, null puts the settings' default back."""

    model_config = ConfigDict(extra="forbid")

    rate_limit_per_second: RateLimitPerSecond = None
    rate_limit_burst: RateLimitBurst = None


class ApiKeyRead(BaseModel):
    id: uuid.UUID
    prefix: str
    kind: KeyKind
    name: str
    tenant_id: str | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    rate_limit_per_second: float | None = None
    rate_limit_burst: int | None = None


class ApiKeyCreated(ApiKeyRead):
    key: str = Field(description="The whole key. It is shown once and never stored.")
