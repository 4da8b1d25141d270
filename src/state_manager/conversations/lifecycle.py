"""Conversation states and the transitions allowed between them.

pending  created from the first inbound message, not yet in Genesys
active   an agent or bot is handling it
waiting  in a queue, or waiting on the customer
error    something failed (e.g. creating the Genesys conversation); it can recover
closed   ended by an agent, the customer or Genesys             (final)
expired  no activity for longer than the tenant's timeout        (final)

A final conversation never reopens: the next inbound message starts a new one. Moving to the state a
conversation is already in is accepted and changes nothing, so that retried calls are harmless.
"""

from __future__ import annotations

import enum


class ConversationState(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    WAITING = "waiting"
    ERROR = "error"
    CLOSED = "closed"
    EXPIRED = "expired"


S = ConversationState

OPEN_STATES = frozenset({S.PENDING, S.ACTIVE, S.WAITING, S.ERROR})
FINAL_STATES = frozenset({S.CLOSED, S.EXPIRED})

TRANSITIONS: dict[ConversationState, frozenset[ConversationState]] = {
    S.PENDING: frozenset({S.ACTIVE, S.WAITING, S.CLOSED, S.EXPIRED, S.ERROR}),
    S.ACTIVE: frozenset({S.WAITING, S.CLOSED, S.EXPIRED, S.ERROR}),
    S.WAITING: frozenset({S.ACTIVE, S.CLOSED, S.EXPIRED, S.ERROR}),
    S.ERROR: frozenset({S.PENDING, S.ACTIVE, S.WAITING, S.CLOSED, S.EXPIRED}),
    S.CLOSED: frozenset(),
    S.EXPIRED: frozenset(),
}


def can_transition(current: ConversationState, target: ConversationState) -> bool:
    return target == current or target in TRANSITIONS[current]
