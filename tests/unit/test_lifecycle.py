from __future__ import annotations

import pytest

from state_manager.conversations.lifecycle import (
    FINAL_STATES,
    OPEN_STATES,
    TRANSITIONS,
    ConversationState,
    can_transition,
)
from state_manager.conversations.models import OPEN_STATES_SQL

S = ConversationState


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.PENDING, S.ACTIVE),
        (S.ACTIVE, S.WAITING),
        (S.WAITING, S.ACTIVE),
        (S.WAITING, S.CLOSED),
        (S.ERROR, S.ACTIVE),
    ],
)
def test_allowed(current: ConversationState, target: ConversationState) -> None:
    assert can_transition(current, target)


@pytest.mark.parametrize("final", sorted(FINAL_STATES))
def test_final_states_never_reopen(final: ConversationState) -> None:
    assert TRANSITIONS[final] == frozenset()
    assert all(not can_transition(final, s) for s in ConversationState if s != final)


def test_every_state_may_stay_where_it_is() -> None:
    assert all(can_transition(s, s) for s in ConversationState)


def test_open_states_match_the_partial_unique_index() -> None:
    for state in ConversationState:
        assert (f"'{state.value}'" in OPEN_STATES_SQL) == (state in OPEN_STATES)
