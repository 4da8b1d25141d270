"""The receipt merge: any order, any repetition, same result."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from state_manager.messages.status import (
    DeliveryStatus,
    Direction,
    Failure,
    Receipt,
    ReceiptStatus,
    StatusTimes,
    derive,
    merge,
)

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

failures = st.builds(
    Failure,
    code=st.sampled_from([None, "131047", "131026", "1"]),
    title=st.sampled_from([None, "Re-engagement", "Undeliverable"]),
    details=st.sampled_from([None, "x", "y"]),
)


@st.composite
def receipts(draw: st.DrawFn) -> Receipt:
    status = draw(st.sampled_from(list(ReceiptStatus)))
    at = T0 + dt.timedelta(seconds=draw(st.integers(0, 600)))
    failure = draw(failures) if status is ReceiptStatus.FAILED else None
    return Receipt(status, at, failure)


def apply_all(items: list[Receipt]) -> StatusTimes:
    times = StatusTimes()
    for item in items:
        times = merge(times, item)
    return times


@given(st.lists(receipts(), min_size=1, max_size=12), st.data())
def test_order_and_repetition_never_change_the_result(items: list[Receipt], data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(items))
    repeated = shuffled + data.draw(st.lists(st.sampled_from(items), max_size=12))
    assert apply_all(repeated) == apply_all(items)
    for direction in Direction:
        assert derive(apply_all(repeated), direction) == derive(apply_all(items), direction)


def test_read_without_delivered_is_read() -> None:
    times = apply_all([Receipt(ReceiptStatus.READ, T0)])
    assert derive(times, Direction.OUTBOUND) is DeliveryStatus.READ


def test_late_sent_after_failed_stays_failed() -> None:
    failed = Receipt(ReceiptStatus.FAILED, T0 + dt.timedelta(seconds=5), Failure("131047", "Re-engagement"))
    times = apply_all([failed, Receipt(ReceiptStatus.SENT, T0)])
    assert derive(times, Direction.OUTBOUND) is DeliveryStatus.FAILED
    assert times.sent_at == T0
    assert times.failure == Failure("131047", "Re-engagement")


def test_delivered_outranks_failed_and_keeps_the_failure() -> None:
    failed = Receipt(ReceiptStatus.FAILED, T0, Failure("131026"))
    times = apply_all([Receipt(ReceiptStatus.DELIVERED, T0 + dt.timedelta(seconds=1)), failed])
    assert derive(times, Direction.OUTBOUND) is DeliveryStatus.DELIVERED
    assert times.failed_at == T0
    assert times.failure == Failure("131026")


def test_played_counts_as_read() -> None:
    times = apply_all([Receipt(ReceiptStatus.PLAYED, T0)])
    assert times.read_at == T0
    assert derive(times, Direction.OUTBOUND) is DeliveryStatus.READ


def test_earliest_time_per_status_is_kept() -> None:
    later = Receipt(ReceiptStatus.DELIVERED, T0 + dt.timedelta(seconds=9))
    earlier = Receipt(ReceiptStatus.DELIVERED, T0)
    assert apply_all([later, earlier]).delivered_at == T0


def test_initial_status_depends_on_direction() -> None:
    assert derive(StatusTimes(), Direction.INBOUND) is DeliveryStatus.RECEIVED
    assert derive(StatusTimes(), Direction.OUTBOUND) is DeliveryStatus.QUEUED
