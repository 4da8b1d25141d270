"""What one conversation contributes to the reports, computed from its rows alone (docs/analytics.md).

Pure: the projector loads the rows and writes what this returns. Messages are taken in the order of
their `occurred_at`, never in the order they were recorded, so late and out-of-order webhooks change
nothing once the same rows are in.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from state_manager.analytics.models import FACT_COLUMNS

BUCKET_MINUTES = 15
BUCKET = dt.timedelta(minutes=BUCKET_MINUTES)
REPLY_WINDOW = dt.timedelta(hours=24)  # WhatsApp's customer service window after a customer's message
REOPEN_WINDOW = dt.timedelta(hours=24)  # a customer back this soon after a close: not resolved after all
RESPONDERS = frozenset({"agent", "bot"})


def bucket_of(moment: dt.datetime) -> dt.datetime:
    """The start of the 15-minute bucket holding `moment` (UTC)."""
    moment = moment.astimezone(dt.UTC)
    return moment.replace(minute=moment.minute - moment.minute % BUCKET_MINUTES, second=0, microsecond=0)


def seconds_between(start: dt.datetime, end: dt.datetime) -> float:
    """Elapsed seconds, never negative: a receipt stamped before its message (clock skew) counts as 0."""
    return max(0.0, (end - start).total_seconds())


def actor_of(sender_type: str, sender_id: str | None) -> str:
    return f"{sender_type}:{sender_id or ''}"


@dataclass(frozen=True, slots=True)
class ConversationRow:
    id: uuid.UUID
    customer_id: uuid.UUID
    channel: str
    business_number_id: str
    state: str
    started_at: dt.datetime
    ended_at: dt.datetime | None  # closed or expired: when


# The rows compute() reads are named tuples: a projection round builds one per message of every
# conversation it projects, and a tuple is several times cheaper to build than a frozen dataclass.
class MessageRow(NamedTuple):
    direction: str
    sender_type: str
    sender_id: str | None
    occurred_at: dt.datetime
    delivered_at: dt.datetime | None
    read_at: dt.datetime | None
    status: str
    failure_code: str | None


class AgentStint(NamedTuple):
    agent_id: str
    joined_at: dt.datetime
    left_at: dt.datetime | None


@dataclass
class ConversationFacts:
    """The rows of the projection for one conversation."""

    facts: dict[tuple[dt.datetime, str], dict[str, float]] = field(default_factory=dict)
    failures: dict[tuple[dt.datetime, str, str], int] = field(default_factory=lambda: defaultdict(int))
    summary: dict[str, Any] = field(default_factory=dict)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    involvement: list[dict[str, Any]] = field(default_factory=list)

    # The bucket of the moment added last, and where it ends: messages come in order, mostly several to
    # a bucket, and comparing two datetimes is ten times cheaper than `bucket_of`.
    _bucket: dt.datetime | None = field(default=None, repr=False, compare=False)
    _bucket_ends: dt.datetime | None = field(default=None, repr=False, compare=False)

    def bucket(self, moment: dt.datetime) -> dt.datetime:
        if (
            self._bucket is not None
            and self._bucket_ends is not None
            and self._bucket <= moment < self._bucket_ends
        ):
            return self._bucket
        self._bucket = bucket_of(moment)
        self._bucket_ends = self._bucket + BUCKET
        return self._bucket

    def add(self, moment: dt.datetime, actor: str, **amounts: float) -> None:
        row = self.facts.get((bucket := self.bucket(moment), actor))
        if row is None:
            row = self.facts[(bucket, actor)] = dict.fromkeys(FACT_COLUMNS, 0)
        for name, amount in amounts.items():
            row[name] += amount


def conversation_agent(messages: Sequence[MessageRow], stints: Sequence[AgentStint]) -> str:
    """Who the conversation is credited to as a whole: the agent who first answered the customer, else
    the first agent who joined it, else the first agent who wrote in it; "" if no agent took part."""
    waiting = False
    for message in messages:
        if message.direction == "inbound":
            waiting = True
        elif waiting and message.sender_type == "agent":
            return actor_of("agent", message.sender_id)
        elif waiting and message.sender_type in RESPONDERS:
            break  # a bot answered first: the agent is whoever joined or wrote
    if stints:
        return actor_of("agent", min(stints, key=lambda stint: stint.joined_at).agent_id)
    for message in messages:
        if message.direction == "outbound" and message.sender_type == "agent":
            return actor_of("agent", message.sender_id)
    return ""


def compute(
    conversation: ConversationRow,
    messages: Sequence[MessageRow],
    stints: Sequence[AgentStint],
    *,
    previous_close: dt.datetime | None,
    customer_first: bool,
    now: dt.datetime,
) -> ConversationFacts:
    """The facts of one conversation. `messages` in any order; `previous_close` is the latest close of
    the same customer's conversation on the same number before this one started; `customer_first` says
    whether it is the customer's first conversation with the tenant."""
    ordered = sorted(messages, key=lambda message: message.occurred_at)
    agent = conversation_agent(ordered, stints)
    out = ConversationFacts()

    out.add(
        conversation.started_at,
        agent,
        started=1,
        conversation_messages=len(ordered),
        reopened=int(
            previous_close is not None and conversation.started_at - previous_close <= REOPEN_WINDOW
        ),
    )
    ended = conversation.ended_at
    if ended is not None and conversation.state in ("closed", "expired"):
        duration = seconds_between(conversation.started_at, ended)
        if conversation.state == "closed":
            out.add(ended, agent, closed=1, resolution_seconds=duration, ended_seconds=duration)
        else:
            out.add(ended, agent, expired=1, ended_seconds=duration)

    first_inbound: dt.datetime | None = None
    answered_once = False
    turn_started: dt.datetime | None = None  # the first customer message not answered yet
    turn_last: dt.datetime | None = None  # the latest one: the reply window runs from it
    for message in ordered:
        at = message.occurred_at
        if message.direction == "inbound":
            out.add(at, agent, inbound=1)
            first_inbound = first_inbound or at
            turn_started = turn_started or at
            turn_last = at
            continue
        sender = actor_of(message.sender_type, message.sender_id)
        _outbound(out, message, sender)
        if message.sender_type not in RESPONDERS or turn_started is None or turn_last is None:
            continue
        out.add(at, sender, replies=1, reply_seconds=seconds_between(turn_started, at))
        if not answered_once and first_inbound is not None:
            out.add(at, sender, first_responses=1, first_response_seconds=seconds_between(first_inbound, at))
            answered_once = True
        window_ends = turn_last + REPLY_WINDOW
        if at > window_ends:
            out.add(window_ends, agent, windows_lapsed=1)
        turn_started = turn_last = None

    pending_window_ends_at = None
    if turn_last is not None:  # the customer's last message(s) had no answer
        window_ends = turn_last + REPLY_WINDOW
        if window_ends <= now:
            out.add(window_ends, agent, windows_lapsed=1)
        else:
            pending_window_ends_at = window_ends
        if conversation.state == "expired" and ended is not None:
            out.add(ended, agent, unanswered=1)

    out.summary = {
        "conversation_id": conversation.id,
        "customer_id": conversation.customer_id,
        "channel": conversation.channel,
        "business_number_id": conversation.business_number_id,
        "actor": agent,
        "state": conversation.state,
        "started_at": conversation.started_at,
        "customer_first": customer_first,
        "ended_at": ended,
        "pending_window_ends_at": pending_window_ends_at,
        "projected_at": now,
    }
    out.sessions = [
        {
            "conversation_id": conversation.id,
            "agent": actor_of("agent", agent_id),
            "joined_at": joined_at,
            "left_at": left_at,
            "joined_s": joined_at.timestamp(),
            "left_s": None if left_at is None else left_at.timestamp(),
            "business_number_id": conversation.business_number_id,
        }
        for (agent_id, joined_at), left_at in _sessions(stints).items()
    ]
    out.involvement = _involvement(conversation, ordered, stints)
    return out


def _sessions(stints: Sequence[AgentStint]) -> dict[tuple[str, dt.datetime], dt.datetime | None]:
    """When each stint ended, by agent and join time: the key of a session row. An agent who joined twice
    at the same moment (a join given an explicit time, left, and given it again) has one session, until
    the later leave; open if either is."""
    ended: dict[tuple[str, dt.datetime], dt.datetime | None] = {}
    for stint in stints:
        key = (stint.agent_id, stint.joined_at)
        if key not in ended:
            ended[key] = stint.left_at
        elif (earlier := ended[key]) is not None and stint.left_at is not None:
            ended[key] = max(earlier, stint.left_at)
        else:
            ended[key] = None
    return ended


def _involvement(
    conversation: ConversationRow, ordered: Sequence[MessageRow], stints: Sequence[AgentStint]
) -> list[dict[str, Any]]:
    """Per agent: from joining or first writing to leaving or last writing; open while still present."""
    spans: dict[str, list[dt.datetime | None]] = {}
    for stint in stints:
        first, last = spans.setdefault(stint.agent_id, [stint.joined_at, stint.joined_at])
        assert first is not None
        spans[stint.agent_id] = [
            min(first, stint.joined_at),
            None if last is None or stint.left_at is None else max(last, stint.left_at),
        ]
    for message in ordered:
        if message.direction != "outbound" or message.sender_type != "agent":
            continue
        agent_id = message.sender_id or ""
        first, last = spans.setdefault(agent_id, [message.occurred_at, message.occurred_at])
        assert first is not None
        spans[agent_id] = [
            min(first, message.occurred_at),
            None if last is None else max(last, message.occurred_at),
        ]
    return [
        {
            "conversation_id": conversation.id,
            "agent": actor_of("agent", agent_id),
            "first_at": first,
            "last_at": last,
            "business_number_id": conversation.business_number_id,
        }
        for agent_id, (first, last) in spans.items()
    ]


def _outbound(out: ConversationFacts, message: MessageRow, sender: str) -> None:
    at = message.occurred_at
    out.add(at, sender, outbound=1)
    reached = message.delivered_at or message.read_at  # read implies delivered, even unreported
    if reached is not None:
        out.add(at, sender, delivered=1)
    if message.delivered_at is not None:
        out.add(at, sender, delivery_timed=1, delivery_seconds=seconds_between(at, message.delivered_at))
    if message.read_at is not None:
        out.add(at, sender, read=1, read_seconds=seconds_between(at, message.read_at))
    if message.status == "failed":
        out.add(at, sender, failed=1)
        out.failures[(out.bucket(at), sender, message.failure_code or "unknown")] += 1
