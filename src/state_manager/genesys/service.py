"""What Genesys events do to conversations: agents join and leave, the customer or Genesys ends the
conversation, wrap-up is recorded, and receipts for agents' messages are merged like WhatsApp's.

Events come late and twice. Each one is applied so that a repeat changes nothing, and an event about a
conversation that has already ended changes nothing either (it never reopens; its participants still
leave, and its wrap-up is still kept).
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.conversations import repository as conversations_repo
from state_manager.conversations import service as conversations
from state_manager.conversations.lifecycle import FINAL_STATES, ConversationState
from state_manager.conversations.schemas import (
    ConversationRead,
    ConversationUpdate,
    ParticipantAdd,
    TransitionRequest,
)
from state_manager.genesys.schemas import (
    GenesysEvent,
    GenesysEventOutcome,
    GenesysEventResult,
    GenesysEventType,
)
from state_manager.messages import service as messages
from state_manager.messages.schemas import ReceiptError, ReceiptIn
from state_manager.messages.status import ReceiptStatus

_TRACKED_RECEIPTS = {"sent", "delivered", "read", "failed"}
_ENDINGS = {
    GenesysEventType.CUSTOMER_ENDED: "customer ended",
    GenesysEventType.CONVERSATION_DISCONNECTED: "disconnected in Genesys",
}


async def handle(conn: AsyncConnection, tenant_id: str, event: GenesysEvent) -> GenesysEventResult:
    if event.type is GenesysEventType.MESSAGE_RECEIPT:
        return await _receipt(conn, tenant_id, event)
    assert event.genesys_conversation_id is not None
    conversation = await conversations.by_genesys_id(conn, tenant_id, event.genesys_conversation_id)
    if event.type is GenesysEventType.AGENT_CONNECTED:
        conversation, changed = await _agent_connected(conn, tenant_id, conversation, event)
    elif event.type is GenesysEventType.AGENT_DISCONNECTED:
        conversation, changed = await _agent_disconnected(conn, tenant_id, conversation, event)
    elif event.type is GenesysEventType.WRAPUP:
        given = {"code": event.wrapup_code, "notes": event.wrapup_notes, "agent_id": event.agent_id}
        # Without empty fields: a merge patch (RFC 7396) drops nulls, and a repeat must compare equal.
        wrapup = {k: v for k, v in given.items() if v is not None} | {"at": event.at.isoformat()}
        current = conversation.metadata.get("wrapup")
        current = current if isinstance(current, dict) else {}
        # A late, older wrap-up does not replace a newer one (UTC ISO times sort as text).
        changed = current != wrapup and str(current.get("at", "")) <= wrapup["at"]
        if changed:
            # Replaced whole: the merge patch removes the old fields the new wrap-up does not have.
            replacement = {key: None for key in current if key not in wrapup} | wrapup
            update = ConversationUpdate(metadata={"wrapup": replacement})
            conversation = await conversations.update(conn, tenant_id, conversation.id, update, None)
    else:
        changed = conversation.state not in FINAL_STATES
        if changed:
            reason = event.reason or _ENDINGS[event.type]
            conversation = await _move(conn, tenant_id, conversation, ConversationState.CLOSED, reason, event)
    return GenesysEventResult(
        outcome=GenesysEventOutcome.APPLIED if changed else GenesysEventOutcome.UNCHANGED,
        conversation_id=conversation.id,
        conversation_state=conversation.state,
    )


async def _agent_connected(
    conn: AsyncConnection, tenant_id: str, conversation: ConversationRead, event: GenesysEvent
) -> tuple[ConversationRead, bool]:
    if conversation.state in FINAL_STATES:
        return conversation, False
    assert event.agent_id is not None
    seen = [
        p
        for p in await conversations.participants(conn, tenant_id, conversation.id)
        if p.role == "agent" and p.participant_ref == event.agent_id
    ]
    if any(p.joined_at >= event.at or (p.left_at is not None and p.left_at >= event.at) for p in seen):
        # A repeat, or older than what is known of this agent (a connect that arrives after the
        # disconnect that followed it): it must not bring the agent back.
        return conversation, False
    _, joined = await conversations.add_participant(
        conn,
        tenant_id,
        conversation.id,
        ParticipantAdd(
            role="agent", participant_ref=event.agent_id, display_name=event.agent_name, joined_at=event.at
        ),
    )
    if conversation.state is ConversationState.ACTIVE:
        return conversation, joined
    reason = event.reason or "agent connected"
    return await _move(conn, tenant_id, conversation, ConversationState.ACTIVE, reason, event), True


async def _agent_disconnected(
    conn: AsyncConnection, tenant_id: str, conversation: ConversationRead, event: GenesysEvent
) -> tuple[ConversationRead, bool]:
    assert event.agent_id is not None
    present = await conversations_repo.present_participant(
        conn, tenant_id, conversation.id, "agent", event.agent_id
    )
    left = present is not None
    if present is not None:
        await conversations.remove_participant(conn, tenant_id, conversation.id, present["id"], event.at)
    if conversation.state is not ConversationState.ACTIVE:
        return conversation, left
    remaining = await conversations.participants(conn, tenant_id, conversation.id)
    if any(p.role == "agent" and p.left_at is None for p in remaining):
        return conversation, left
    # No agent left on an active conversation: it waits (in a queue, or for a transfer).
    reason = event.reason or "agent disconnected"
    return await _move(conn, tenant_id, conversation, ConversationState.WAITING, reason, event), True


async def _move(
    conn: AsyncConnection,
    tenant_id: str,
    conversation: ConversationRead,
    state: ConversationState,
    reason: str,
    event: GenesysEvent,
) -> ConversationRead:
    request = TransitionRequest(state=state, reason=reason, at=event.at)
    return await conversations.transition(conn, tenant_id, conversation.id, request, None)


async def _receipt(conn: AsyncConnection, tenant_id: str, event: GenesysEvent) -> GenesysEventResult:
    assert event.status is not None
    status = event.status.lower()
    if status not in _TRACKED_RECEIPTS:
        return GenesysEventResult(outcome=GenesysEventOutcome.IGNORED)
    error = None
    if status == "failed" and event.reasons:
        first = event.reasons[0]
        error = ReceiptError(code=first.code, details=first.message)
    receipt = ReceiptIn(
        genesys_message_id=event.genesys_message_id, status=ReceiptStatus(status), at=event.at, error=error
    )
    [result] = await messages.apply_receipts(conn, tenant_id, [receipt])
    return GenesysEventResult(
        outcome=GenesysEventOutcome(result.outcome.value),
        message_id=result.message_id,
        message_status=result.status,
    )
