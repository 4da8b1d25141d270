"""The kinds of state change that are announced, and what each one's payload holds.

Payloads say what changed, not the whole entity: a consumer that needs the rest reads it by the IDs the
event carries. The stored function `sm_record_inbound` (migration 0006) writes the same payloads for
the events of an inbound message; `tests/domain/test_events.py` holds the two paths to one answer.
"""

from __future__ import annotations

import enum


class EventType(enum.StrEnum):
    CONVERSATION_CREATED = "conversation.created"  # {state, channel, business_number_id}
    CONVERSATION_STATE_CHANGED = "conversation.state_changed"  # {from, to, reason, version}
    CONVERSATION_CORRELATED = "conversation.correlated"  # {genesys_conversation_id, genesys_communication_id}
    CONVERSATION_UPDATED = "conversation.updated"  # {fields: {name: new value}, version}
    CONVERSATION_ARCHIVED = "conversation.archived"  # {archive}: moved out of the live tables, to that file
    PARTICIPANT_JOINED = "participant.joined"  # {participant_id, role, participant_ref, joined_at}
    PARTICIPANT_LEFT = "participant.left"  # {participant_id, role, participant_ref, left_at}
    MESSAGE_RECORDED = "message.recorded"  # {direction, type, wamid, genesys_message_id, text, sender_type}
    MESSAGE_LINKED = "message.linked"  # {wamid, genesys_message_id}
    MESSAGE_STATUS_CHANGED = "message.status_changed"  # {from, to, failure}
    CUSTOMER_CREATED = "customer.created"  # {display_name}
    CUSTOMER_UPDATED = "customer.updated"  # {fields: {name: new value}, version}
    CUSTOMER_IDENTITY_ADDED = "customer.identity_added"  # {channel, external_id}
    CUSTOMER_MERGED = "customer.merged"  # {merged_customer_id}
    # Customer data rights (customers/export.py, customers/erasure.py): never the personal data itself.
    CUSTOMER_EXPORTED = "customer.exported"  # {audit_id}
    CUSTOMER_ERASED = "customer.erased"  # {counts: {what: how many removed or cleared}, audit_id}
    CONTEXT_CHANGED = "context.changed"  # {scope, values: {key: value or null}}
