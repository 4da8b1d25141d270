"""Analytics responses. Metrics are flat name → number maps, the same in totals, series rows and CSV."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Metrics = dict[str, float | int | None]


class Scope(BaseModel):
    tenant_id: str | None = None
    organization_id: str | None = None
    tenant_ids: list[str] = Field(description="the tenants whose figures are added up")


class Filters(BaseModel):
    agent: str | None
    business_number: str | None


class FreshnessRead(BaseModel):
    complete: bool = Field(description="every acknowledged change is reflected")
    rebuilding: bool = Field(description="the projection is being rebuilt from the tables")
    events_behind: int = Field(description="changes not reflected yet (they are, within seconds)")


class Report(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    scope: Scope
    from_: dt.datetime = Field(alias="from", description="start of the window, aligned to 15 minutes")
    to: dt.datetime = Field(description="end of the window (excluded), aligned to 15 minutes")
    granularity: str
    timezone: str
    filters: Filters
    freshness: FreshnessRead


class SeriesReport(Report):
    totals: Metrics
    series: list[dict[str, Any]] = Field(description="one row per period: `period` (its start) and metrics")


class ConversationReport(SeriesReport):
    now: dict[str, int] = Field(description="conversations open at this moment, by state")


class FailureCode(BaseModel):
    code: str
    count: int


class MessageReport(SeriesReport):
    failure_codes: list[FailureCode]


class ChannelUse(BaseModel):
    channel: str
    customers: int
    conversations: int


class HourCount(BaseModel):
    hour: int
    inbound: int


class WeekdayCount(BaseModel):
    weekday: int = Field(description="Monday = 0")
    inbound: int


class CustomerReport(SeriesReport):
    channels: list[ChannelUse]
    busiest_hours: list[HourCount]
    busiest_weekdays: list[WeekdayCount]


class AgentRow(BaseModel):
    agent: str
    conversations_handled: int
    first_response_count: int
    first_response_avg_seconds: float | None
    reply_count: int
    reply_avg_seconds: float | None
    messages_sent: int
    handle_count: int
    handle_avg_seconds: float | None
    concurrent_avg: float | None
    concurrent_peak: int


class AgentReport(Report):
    agents: list[AgentRow]
