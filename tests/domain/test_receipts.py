"""Delivery receipts over HTTP: any order, any repetition, any batching, before or after the message.

A hypothesis test draws receipts for one outbound message and applies them to several messages in
different ways. Every message must end with the same status, times and failure, equal to what
`state_manager.messages.status.merge/derive` computes.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from state_manager.messages.status import (
    Direction,
    Failure,
    Receipt,
    ReceiptStatus,
    StatusTimes,
    derive,
    merge,
)

from .helpers import Tenant, genesys_id, inbound, ok, parse_time, record_message, wa_id, wamid

T0 = dt.datetime(2026, 4, 1, 8, 0, tzinfo=dt.UTC)
ZONES = [dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)), dt.timezone(dt.timedelta(hours=-8))]


@st.composite
def receipts(draw: st.DrawFn) -> dict[str, Any]:
    """One receipt, without the ID of its message; `at` drawn from few instants, so that ties happen."""
    status = draw(st.sampled_from(["sent", "delivered", "read", "played", "failed", "failed"]))
    moment = T0 + dt.timedelta(
        seconds=draw(st.integers(0, 2)), microseconds=draw(st.sampled_from([0, 250_000]))
    )
    form = draw(
        st.sampled_from(["iso", "epoch", "epoch-string"]) if moment.microsecond == 0 else st.just("iso")
    )
    at: Any = {
        "iso": moment.astimezone(draw(st.sampled_from(ZONES))).isoformat(),
        "epoch": int(moment.timestamp()),
        "epoch-string": str(int(moment.timestamp())),
    }[form]
    item: dict[str, Any] = {"status": status, "at": at}
    if status == "failed" and draw(st.integers(0, 3)):  # mostly with an error
        item["error"] = {
            "code": draw(st.sampled_from([None, "131026", "131047", "1"])),
            "title": draw(st.sampled_from([None, "Message undeliverable", "Re-engagement message"])),
            "details": draw(st.sampled_from([None, "x"])),
        }
    return item


def expected_times(items: list[dict[str, Any]]) -> StatusTimes:
    times = StatusTimes()
    for item in items:
        at = item["at"]
        moment = (
            dt.datetime.fromtimestamp(int(at), dt.UTC)
            if not str(at).count("-")
            else dt.datetime.fromisoformat(at)
        )
        status = ReceiptStatus(item["status"])
        failure = None
        if status is ReceiptStatus.FAILED:
            error = item.get("error") or {}
            failure = Failure(error.get("code"), error.get("title"), error.get("details"))
        times = merge(times, Receipt(status, moment.astimezone(dt.UTC), failure))
    return times


def outcome_of(message: dict[str, Any]) -> dict[str, Any]:
    failure = message["failure"]
    return {
        "status": message["status"],
        **{
            column: parse_time(message[column])
            for column in ("sent_at", "delivered_at", "read_at", "failed_at")
        },
        "failure": None if failure is None else (failure["code"], failure["title"], failure["details"]),
    }


def expected_outcome(times: StatusTimes) -> dict[str, Any]:
    failure = times.failure
    return {
        "status": derive(times, Direction.OUTBOUND).value,
        "sent_at": times.sent_at,
        "delivered_at": times.delivered_at,
        "read_at": times.read_at,
        "failed_at": times.failed_at,
        "failure": None
        if times.failed_at is None or failure is None
        else (failure.code, failure.title, failure.details),
    }


def post_batches(client: httpx.Client, items: list[dict[str, Any]], sizes: list[int]) -> list[dict[str, Any]]:
    """Posts `items` in consecutive batches of the given sizes (the last batch takes the rest)."""
    results: list[dict[str, Any]] = []
    start = 0
    for size in [*sizes, len(items)]:
        chunk = items[start : start + max(size, 1)]
        if not chunk:
            break
        results += ok(client.post("/v1/receipts", json={"receipts": chunk}))["results"]
        start += len(chunk)
    assert len(results) == len(items)
    return results


def named(items: list[dict[str, Any]], **ids: str) -> list[dict[str, Any]]:
    return [item | ids for item in items]


@pytest.fixture
def conversation_id(tenant: Tenant) -> str:
    return str(inbound(tenant.client, wa_id(), status=201)["conversation_id"])


@settings(
    max_examples=25,
    deadline=None,
    # No shrinking: each example is dozens of HTTP calls, and shrinking one can take minutes. The
    # failure report still shows the drawn receipts and arrangements.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(items=st.lists(receipts(), min_size=1, max_size=8), data=st.data())
def test_any_order_repetition_and_batching_give_the_same_message(
    tenant: Tenant, conversation_id: str, items: list[dict[str, Any]], data: st.DataObject
) -> None:
    client = tenant.client
    expected = expected_outcome(expected_times(items))

    def arrangement(label: str) -> tuple[list[dict[str, Any]], list[int]]:
        """The receipts in a random order with random repeats, and random batch sizes."""
        order = data.draw(st.permutations(items), label=f"{label} order")
        repeats = data.draw(st.lists(st.sampled_from(items), max_size=4), label=f"{label} repeats")
        mixed = data.draw(st.permutations(order + repeats), label=f"{label} mixed")
        sizes = data.draw(st.lists(st.integers(1, 4), max_size=6), label=f"{label} batches")
        return mixed, sizes

    # Two messages known before their receipts, each given the receipts in another arrangement.
    messages = []
    for label in ("first", "second"):
        the_wamid = wamid()
        message = record_message(client, conversation_id, wamid=the_wamid)
        arranged, sizes = arrangement(label)
        results = post_batches(client, named(arranged, wamid=the_wamid), sizes)
        assert {r["message_id"] for r in results} == {message["id"]}
        assert {r["outcome"] for r in results} <= {"applied", "unchanged"}
        messages.append(message["id"])

    # Receipts that arrive before the message: held, then applied when it is recorded.
    early_wamid = wamid()
    arranged, sizes = arrangement("before recording")
    results = post_batches(client, named(arranged, wamid=early_wamid), sizes)
    assert {r["outcome"] for r in results} == {"held"}
    messages.append(record_message(client, conversation_id, wamid=early_wamid)["id"])

    # Receipts named by a Genesys ID before the message is recorded.
    early_genesys = genesys_id()
    arranged, sizes = arrangement("by genesys id")
    post_batches(client, named(arranged, genesys_message_id=early_genesys), sizes)
    messages.append(
        record_message(client, conversation_id, genesys_message_id=early_genesys, wamid=wamid())["id"]
    )

    # Receipts for a wamid not linked yet: held, then applied when the wamid is linked to the message.
    late_link = record_message(client, conversation_id, genesys_message_id=genesys_id())
    linked_wamid = wamid()
    arranged, sizes = arrangement("before linking")
    post_batches(client, named(arranged, wamid=linked_wamid), sizes)
    ok(client.post(f"/v1/messages/{late_link['id']}/link", json={"wamid": linked_wamid}))
    messages.append(late_link["id"])

    # Some arrive before and some after the message is recorded.
    split_wamid = wamid()
    arranged, _ = arrangement("split")
    cut = data.draw(st.integers(0, len(arranged)), label="split point")
    post_batches(client, named(arranged[:cut], wamid=split_wamid), [])
    messages.append(record_message(client, conversation_id, wamid=split_wamid)["id"])
    post_batches(client, named(arranged[cut:], wamid=split_wamid), [])

    outcomes = {
        way: outcome_of(ok(client.get(f"/v1/messages/{message_id}")))
        for way, message_id in zip(
            ["first order", "second order", "held, recorded", "held by genesys id", "held, linked", "split"],
            messages,
            strict=True,
        )
    }
    wrong = {way: got for way, got in outcomes.items() if got != expected}
    assert wrong == {}, f"expected {expected}"


def test_held_failures_at_the_same_time_merge_like_applied_ones(tenant: Tenant, conversation_id: str) -> None:
    """Two failures at one instant keep the smaller code whether they were applied or held first."""
    client = tenant.client
    failures = [
        {"status": "failed", "at": "2026-04-01T08:00:00Z", "error": {"code": "2", "title": "later code"}},
        {"status": "failed", "at": "2026-04-01T08:00:00Z", "error": {"code": "1", "title": "earlier code"}},
    ]
    applied_wamid, held_wamid = wamid(), wamid()
    applied = record_message(client, conversation_id, wamid=applied_wamid)
    post_batches(client, named(failures, wamid=applied_wamid), [1])
    post_batches(client, named(failures, wamid=held_wamid), [1])
    held = record_message(client, conversation_id, wamid=held_wamid)
    applied = ok(client.get(f"/v1/messages/{applied['id']}"))
    assert applied["failure"]["code"] == "1"
    assert held["failure"] == applied["failure"]


def test_a_missing_failure_field_and_an_empty_one_merge_in_any_order(
    tenant: Tenant, conversation_id: str
) -> None:
    """The same two failed receipts, in both orders, give the same message."""
    client = tenant.client
    one = {"status": "failed", "at": "2026-04-01T08:00:00Z", "error": {"code": "", "title": "t"}}
    other = {"status": "failed", "at": "2026-04-01T08:00:00Z", "error": {"title": "t"}}
    ends = []
    for order in ([one, other], [other, one]):
        the_wamid = wamid()
        message = record_message(client, conversation_id, wamid=the_wamid)
        post_batches(client, named(order, wamid=the_wamid), [1])
        ends.append(outcome_of(ok(client.get(f"/v1/messages/{message['id']}"))))
    assert ends[0] == ends[1]


def test_late_sent_after_failed_and_delivered_after_failed(tenant: Tenant, conversation_id: str) -> None:
    """The documented rules: a late `sent` leaves a message `failed`; `delivered` after `failed` wins."""
    client = tenant.client
    the_wamid = wamid()
    message = record_message(client, conversation_id, wamid=the_wamid)
    failed = {
        "wamid": the_wamid,
        "status": "failed",
        "at": "2026-04-01T08:00:05Z",
        "error": {"code": "131026"},
    }
    results = ok(client.post("/v1/receipts", json={"receipts": [failed]}))["results"]
    assert results == [{"outcome": "applied", "message_id": message["id"], "status": "failed"}]
    late_sent = {"wamid": the_wamid, "status": "sent", "at": "2026-04-01T08:00:01Z"}
    results = ok(client.post("/v1/receipts", json={"receipts": [late_sent, late_sent]}))["results"]
    assert [r["outcome"] for r in results] == ["applied", "unchanged"]
    assert {r["status"] for r in results} == {"failed"}
    delivered = {"wamid": the_wamid, "status": "delivered", "at": "2026-04-01T08:00:09Z"}
    final = ok(client.post("/v1/receipts", json={"receipts": [delivered]}))["results"][0]
    assert final["status"] == "delivered"
    message = ok(client.get(f"/v1/messages/{message['id']}"))
    assert message["failure"] == {"code": "131026", "title": None, "details": None}
    assert message["sent_at"] is not None
    # The same receipts again change nothing.
    again = ok(client.post("/v1/receipts", json={"receipts": [failed, late_sent, delivered]}))["results"]
    assert {r["outcome"] for r in again} == {"unchanged"}
    assert ok(client.get(f"/v1/messages/{message['id']}")) == message
