"""What one conversation contributes to the reports (analytics/facts.py): independent of the order its
rows arrive in, and right at the edges the definitions name."""

from __future__ import annotations

import datetime as dt
import uuid

from hypothesis import given
from hypothesis import strategies as st

from state_manager.analytics.facts import (
    REPLY_WINDOW,
    AgentStint,
    ConversationRow,
    MessageRow,
    bucket_of,
    compute,
)

START = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)
NOW = START + dt.timedelta(days=30)


def conversation(state: str = "active", ended: dt.datetime | None = None) -> ConversationRow:
    return ConversationRow(uuid.uuid4(), uuid.uuid4(), "whatsapp", "bn-1", state, START, ended)


def customer(seconds: float) -> MessageRow:
    return MessageRow(
        "inbound", "customer", None, START + dt.timedelta(seconds=seconds), None, None, "received", None
    )


def reply(seconds: float, sender: str = "agent", who: str = "u-1", **receipts: dt.datetime) -> MessageRow:
    at = START + dt.timedelta(seconds=seconds)
    return MessageRow(
        "outbound", sender, who, at, receipts.get("delivered"), receipts.get("read"), "sent", None
    )


def totals(facts: dict[tuple[dt.datetime, str], dict[str, float]], name: str) -> float:
    return sum(row[name] for row in facts.values())


messages_strategy = st.lists(
    st.builds(
        MessageRow,
        direction=st.sampled_from(["inbound", "outbound"]),
        sender_type=st.sampled_from(["customer", "agent", "bot", "system"]),
        sender_id=st.sampled_from([None, "u-1", "u-2", "helper"]),
        # Whole seconds apart or equal: ties between a customer message and a reply must not depend on
        # the order either (sorting is stable only for equal keys, which then carry equal facts).
        occurred_at=st.integers(0, 3 * 86_400).map(lambda s: START + dt.timedelta(seconds=s)),
        delivered_at=st.none() | st.integers(0, 3 * 86_400).map(lambda s: START + dt.timedelta(seconds=s)),
        read_at=st.none(),
        status=st.sampled_from(["sent", "delivered", "failed", "received"]),
        failure_code=st.none() | st.just("131047"),
    ),
    max_size=12,
)


@given(messages=messages_strategy, order=st.randoms(use_true_random=False))
def test_the_order_rows_arrive_in_changes_nothing(messages: list[MessageRow], order: object) -> None:
    # Messages with the same time are kept in their given order: give each its own time so that the
    # conversation is the same whatever the arrival order.
    distinct = {message.occurred_at: message for message in messages}
    rows = list(distinct.values())
    shuffled = rows[:]
    order.shuffle(shuffled)  # type: ignore[attr-defined]
    row = conversation("closed", START + dt.timedelta(days=4))
    stints = [AgentStint("u-1", START, None)]
    one = compute(row, rows, stints, previous_close=None, customer_first=False, now=NOW)
    other = compute(row, shuffled, stints, previous_close=None, customer_first=False, now=NOW)
    assert one.facts == other.facts
    assert dict(one.failures) == dict(other.failures)
    assert one.summary == other.summary
    assert one.sessions == other.sessions
    assert one.involvement == other.involvement
    # Whatever the conversation, each customer turn that got an answer is one reply, the first also a
    # first response, and every message is counted once.
    assert totals(one.facts, "first_responses") <= 1
    assert totals(one.facts, "first_responses") <= totals(one.facts, "replies")
    assert totals(one.facts, "inbound") + totals(one.facts, "outbound") == len(rows)
    assert totals(one.facts, "conversation_messages") == len(rows)


def test_a_run_of_customer_messages_is_one_wait_from_its_first() -> None:
    facts = compute(
        conversation(),
        [customer(0), customer(60), reply(120)],
        [],
        previous_close=None,
        customer_first=False,
        now=NOW,
    ).facts
    assert totals(facts, "replies") == 1
    assert totals(facts, "reply_seconds") == 120
    assert totals(facts, "first_response_seconds") == 120


def test_messages_before_the_customer_wrote_are_not_responses() -> None:
    facts = compute(
        conversation(),
        [reply(0, "system", None), customer(10), reply(70)],
        [],
        previous_close=None,
        customer_first=False,
        now=NOW,
    ).facts
    assert (totals(facts, "first_responses"), totals(facts, "first_response_seconds")) == (1, 60)
    assert totals(facts, "outbound") == 2


def test_a_bot_answering_first_is_credited_and_the_agent_who_joined_owns_the_conversation() -> None:
    computed = compute(
        conversation(),
        [customer(0), reply(5, "bot", "helper"), customer(30), reply(90, "agent", "u-2")],
        [AgentStint("u-2", START + dt.timedelta(seconds=20), None)],
        previous_close=None,
        customer_first=False,
        now=NOW,
    )
    first = {actor for (_, actor), row in computed.facts.items() if row["first_responses"]}
    assert first == {"bot:helper"}
    assert computed.summary["actor"] == "agent:u-2"
    replies = {actor: row["reply_seconds"] for (_, actor), row in computed.facts.items() if row["replies"]}
    assert replies == {"bot:helper": 5, "agent:u-2": 60}


def test_reply_windows() -> None:
    late = compute(
        conversation(), [customer(0), customer(60), reply(REPLY_WINDOW.total_seconds() + 61)], [],
        previous_close=None, customer_first=False, now=NOW,
    )  # fmt: skip
    lapsed = [bucket for (bucket, _), row in late.facts.items() if row["windows_lapsed"]]
    # The window runs from the latest customer message of the wait.
    assert lapsed == [bucket_of(START + dt.timedelta(seconds=60) + REPLY_WINDOW)]

    in_time = compute(conversation(), [customer(0), reply(REPLY_WINDOW.total_seconds())], [],
                      previous_close=None, customer_first=False, now=NOW)  # fmt: skip
    assert totals(in_time.facts, "windows_lapsed") == 0

    waiting = compute(
        conversation(),
        [customer(0)],
        [],
        previous_close=None,
        customer_first=False,
        now=START + dt.timedelta(hours=1),
    )
    assert totals(waiting.facts, "windows_lapsed") == 0
    assert waiting.summary["pending_window_ends_at"] == START + REPLY_WINDOW
    ended = compute(conversation(), [customer(0)], [], previous_close=None, customer_first=False, now=NOW)
    assert totals(ended.facts, "windows_lapsed") == 1
    assert ended.summary["pending_window_ends_at"] is None


def test_unanswered_only_when_it_expired_waiting() -> None:
    expired = conversation("expired", START + dt.timedelta(hours=2))
    assert (
        totals(
            compute(expired, [customer(0)], [], previous_close=None, customer_first=False, now=NOW).facts,
            "unanswered",
        )
        == 1
    )
    answered = compute(
        expired, [customer(0), reply(10)], [], previous_close=None, customer_first=False, now=NOW
    )
    assert totals(answered.facts, "unanswered") == 0
    closed = conversation("closed", START + dt.timedelta(hours=2))
    assert (
        totals(
            compute(closed, [customer(0)], [], previous_close=None, customer_first=False, now=NOW).facts,
            "unanswered",
        )
        == 0
    )


def test_receipt_times_before_the_message_count_as_zero() -> None:
    skewed = reply(100, delivered=START + dt.timedelta(seconds=90), read=START + dt.timedelta(seconds=160))
    facts = compute(
        conversation(), [customer(0), skewed], [], previous_close=None, customer_first=False, now=NOW
    ).facts
    assert (totals(facts, "delivery_seconds"), totals(facts, "read_seconds")) == (0, 60)


def test_reopened_within_a_day_of_the_last_close() -> None:
    within = compute(
        conversation(), [], [], previous_close=START - dt.timedelta(hours=23), customer_first=False, now=NOW
    )
    later = compute(
        conversation(), [], [], previous_close=START - dt.timedelta(hours=25), customer_first=False, now=NOW
    )
    assert (totals(within.facts, "reopened"), totals(later.facts, "reopened")) == (1, 0)


def test_buckets_are_quarter_hours() -> None:
    assert bucket_of(dt.datetime(2026, 11, 2, 9, 44, 59, tzinfo=dt.UTC)) == dt.datetime(
        2026, 11, 2, 9, 30, tzinfo=dt.UTC
    )
    five_thirty = dt.timezone(dt.timedelta(hours=5, minutes=30))
    assert bucket_of(dt.datetime(2026, 11, 2, 15, 0, tzinfo=five_thirty)) == dt.datetime(
        2026, 11, 2, 9, 30, tzinfo=dt.UTC
    )


def test_an_agent_joining_twice_at_one_moment_is_one_session() -> None:
    # A join given an explicit time, left, and given the same time again: the session's key
    # (conversation, agent, joined_at) must come out once, or its row cannot be written.
    left_early, left_late = START + dt.timedelta(minutes=5), START + dt.timedelta(minutes=9)
    args = {"previous_close": None, "customer_first": True, "now": NOW}
    closed_twice = compute(
        conversation(),
        [],
        [AgentStint("u-1", START, left_early), AgentStint("u-1", START, left_late)],
        **args,
    )
    assert [(s["agent"], s["joined_at"], s["left_at"]) for s in closed_twice.sessions] == [
        ("agent:u-1", START, left_late)
    ]
    still_there = compute(
        conversation(), [], [AgentStint("u-1", START, None), AgentStint("u-1", START, left_late)], **args
    )
    assert [s["left_at"] for s in still_there.sessions] == [None]
    apart = compute(
        conversation(), [], [AgentStint("u-1", START, left_early), AgentStint("u-1", left_late, None)], **args
    )
    assert len(apart.sessions) == 2
