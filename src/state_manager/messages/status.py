"""Delivery status as a lattice: receipts merge, so order and repetition never change the result.

A message keeps the earliest time seen for each status. Its current status is derived from which of
them are set, by rank: read > delivered > failed > sent > queued (outbound) or received (inbound).

Why `failed` sits between `delivered` and `sent`:
- `delivered` and `read` prove the message reached a device. WhatsApp and its BSPs say a `failed` may
  arrive after `delivered` (and the reverse) when the customer has several devices; proof of delivery
  wins, and the failure stays on the message (failed_at, code, title, details) for the record.
- `sent` only says WhatsApp's servers accepted the message, which always happens before a failure.
  A `sent` that arrives after `failed` is a late webhook, not a new attempt (a resend has a new
  wamid), so it is recorded (sent_at) and the message stays `failed`.
Failure details come from the earliest failed receipt, ties broken by code then title then details
(a missing field before an empty one),
so that two different failures for one message also merge in any order.

The database keeps the same rule as a generated column (messages.models.DERIVED_STATUS_SQL).
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, replace


class Direction(enum.StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class DeliveryStatus(enum.StrEnum):
    QUEUED = "queued"
    RECEIVED = "received"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"


class ReceiptStatus(enum.StrEnum):
    """What a receipt may report. WhatsApp's `played` (a voice message played) counts as `read`."""

    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    PLAYED = "played"
    FAILED = "failed"

    @property
    def column(self) -> str:
        return "read_at" if self is ReceiptStatus.PLAYED else f"{self.value}_at"


@dataclass(frozen=True, slots=True)
class Failure:
    code: str | None = None
    title: str | None = None
    details: str | None = None


@dataclass(frozen=True, slots=True)
class Receipt:
    status: ReceiptStatus
    at: dt.datetime
    failure: Failure | None = None


@dataclass(frozen=True, slots=True)
class StatusTimes:
    sent_at: dt.datetime | None = None
    delivered_at: dt.datetime | None = None
    read_at: dt.datetime | None = None
    failed_at: dt.datetime | None = None
    failure: Failure | None = None


def _failure_key(
    at: dt.datetime, failure: Failure | None
) -> tuple[dt.datetime, tuple[bool, str], tuple[bool, str], tuple[bool, str]]:
    """Total order on failures; a missing field sorts before any text, even an empty one."""
    f = failure or Failure()
    return (at, _present(f.code), _present(f.title), _present(f.details))


def _present(part: str | None) -> tuple[bool, str]:
    return (part is not None, part or "")


def merge(times: StatusTimes, receipt: Receipt) -> StatusTimes:
    """The times after `receipt`: commutative, associative and idempotent."""
    column = receipt.status.column
    current: dt.datetime | None = getattr(times, column)
    if receipt.status is ReceiptStatus.FAILED:
        if current is None or _failure_key(receipt.at, receipt.failure) < _failure_key(
            current, times.failure
        ):
            return replace(times, failed_at=receipt.at, failure=receipt.failure or Failure())
        return times
    if current is None or receipt.at < current:
        return _with_time(times, receipt.status, receipt.at)
    return times


def _with_time(times: StatusTimes, status: ReceiptStatus, at: dt.datetime) -> StatusTimes:
    match status:
        case ReceiptStatus.SENT:
            return replace(times, sent_at=at)
        case ReceiptStatus.DELIVERED:
            return replace(times, delivered_at=at)
        case _:
            return replace(times, read_at=at)


def derive(times: StatusTimes, direction: Direction) -> DeliveryStatus:
    if times.read_at is not None:
        return DeliveryStatus.READ
    if times.delivered_at is not None:
        return DeliveryStatus.DELIVERED
    if times.failed_at is not None:
        return DeliveryStatus.FAILED
    if times.sent_at is not None:
        return DeliveryStatus.SENT
    return DeliveryStatus.RECEIVED if direction is Direction.INBOUND else DeliveryStatus.QUEUED
