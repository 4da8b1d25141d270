"""`POST /v1/events/genesys`: agents, endings, wrap-up and receipts from Genesys drive the conversation."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from .helpers import Tenant, assert_problem, genesys_id, inbound, ok, record_message, wa_id


class _Minutes:
    """T.format(n): n minutes after the test began (its events happen after its conversation was created)."""

    def __init__(self) -> None:
        self.start = dt.datetime.now(dt.UTC)

    def format(self, minutes: int) -> str:
        return (self.start + dt.timedelta(minutes=minutes)).isoformat()


T = _Minutes()


@pytest.fixture(autouse=True)
def _minutes_from_now() -> None:
    # From each test's start, not the session's: a test run more than a minute into the session would
    # otherwise send events dated before the conversation it just created.
    T.start = dt.datetime.now(dt.UTC)


def event(tenant: Tenant, **body: Any) -> Any:
    return ok(tenant.client.post("/v1/events/genesys", json=body))


def linked_conversation(tenant: Tenant) -> tuple[str, str]:
    conversation_id = inbound(tenant.client, wa_id(), status=201)["conversation_id"]
    genesys = "gc-" + genesys_id()
    ok(tenant.client.patch(f"/v1/conversations/{conversation_id}", json={"genesys_conversation_id": genesys}))
    return conversation_id, genesys


def agents(tenant: Tenant, conversation_id: str) -> list[tuple[str, bool]]:
    listed = ok(tenant.client.get(f"/v1/conversations/{conversation_id}/participants"))
    return [(p["participant_ref"], p["left_at"] is None) for p in listed if p["role"] == "agent"]


def test_agents_drive_the_state_and_repeats_change_nothing(tenant: Tenant) -> None:
    conversation_id, genesys = linked_conversation(tenant)
    base = {"genesys_conversation_id": genesys}
    connected = event(
        tenant, type="agent_connected", at=T.format(1), agent_id="a-1", agent_name="Ana", **base
    )
    assert (connected["outcome"], connected["conversation_state"]) == ("applied", "active")
    again = event(tenant, type="agent_connected", at=T.format(1), agent_id="a-1", **base)
    assert (again["outcome"], again["conversation_state"]) == ("unchanged", "active")
    event(tenant, type="agent_connected", at=T.format(2), agent_id="a-2", **base)  # a transfer: two agents

    first_left = event(tenant, type="agent_disconnected", at=T.format(3), agent_id="a-1", **base)
    assert first_left["conversation_state"] == "active"  # a-2 is still there
    assert agents(tenant, conversation_id) == [("a-1", False), ("a-2", True)]
    last_left = event(tenant, type="agent_disconnected", at=T.format(4), agent_id="a-2", **base)
    assert (last_left["outcome"], last_left["conversation_state"]) == ("applied", "waiting")
    repeat = event(tenant, type="agent_disconnected", at=T.format(4), agent_id="a-2", **base)
    assert repeat["outcome"] == "unchanged"

    wrapup = {"type": "wrapup", "at": T.format(5), "agent_id": "a-2", "wrapup_code": "resolved"} | base
    assert event(tenant, **wrapup)["outcome"] == "applied"
    assert event(tenant, **wrapup)["outcome"] == "unchanged"
    ended = event(tenant, type="customer_ended", at=T.format(6), **base)
    assert (ended["outcome"], ended["conversation_state"]) == ("applied", "closed")
    # Late events about an ended conversation change nothing; it never reopens.
    late = event(tenant, type="agent_connected", at=T.format(7), agent_id="a-3", **base)
    assert (late["outcome"], late["conversation_state"]) == ("unchanged", "closed")
    assert event(tenant, type="conversation_disconnected", at=T.format(8), **base)["outcome"] == "unchanged"

    conversation = ok(tenant.client.get(f"/v1/conversations/{conversation_id}"))
    assert conversation["metadata"]["wrapup"]["code"] == "resolved"
    assert conversation["close_reason"] == "customer ended"
    history = ok(tenant.client.get(f"/v1/conversations/{conversation_id}/history"))
    assert [h["to_state"] for h in history] == ["pending", "active", "waiting", "closed"]


def test_receipts_from_genesys_merge_like_whatsapp_ones(tenant: Tenant) -> None:
    conversation_id, _ = linked_conversation(tenant)
    message_id = genesys_id()
    receipt = {"type": "message_receipt", "genesys_message_id": message_id}
    # Delivered before the message is known: held, then applied when it is recorded.
    assert event(tenant, status="Delivered", at=T.format(2), **receipt)["outcome"] == "held"
    outbound = record_message(tenant.client, conversation_id, genesys_message_id=message_id)
    assert outbound["status"] == "delivered"
    assert event(tenant, status="SENT", at=T.format(1), **receipt)["message_status"] == "delivered"
    assert event(tenant, status="Published", at=T.format(3), **receipt)["outcome"] == "ignored"
    other = record_message(tenant.client, conversation_id, genesys_message_id=genesys_id())
    failed = event(
        tenant,
        type="message_receipt",
        genesys_message_id=other["genesys_message_id"],
        status="Failed",
        at=T.format(4),
        reasons=[{"code": "MessageNotAllowed", "message": "WhatsApp error 131047"}],
    )
    assert (failed["outcome"], failed["message_status"]) == ("applied", "failed")
    stored = ok(tenant.client.get(f"/v1/messages/{other['id']}"))
    assert stored["failure"]["code"] == "MessageNotAllowed"


def test_bad_or_unknown_events(tenant: Tenant, other_tenant: Tenant) -> None:
    _, genesys = linked_conversation(tenant)
    client = tenant.client
    assert_problem(
        client.post("/v1/events/genesys", json={"type": "agent_connected", "at": T.format(1)}), 422
    )
    no_agent = {"type": "agent_connected", "at": T.format(1), "genesys_conversation_id": genesys}
    assert_problem(client.post("/v1/events/genesys", json=no_agent), 422)
    assert_problem(client.post("/v1/events/genesys", json={"type": "typing", "at": T.format(1)}), 422)
    unknown = {"type": "customer_ended", "at": T.format(1), "genesys_conversation_id": "gc-nobody"}
    assert_problem(client.post("/v1/events/genesys", json=unknown), 404)
    # Another tenant's Genesys conversation is unknown to this tenant.
    theirs = {"type": "customer_ended", "at": T.format(1), "genesys_conversation_id": genesys}
    assert_problem(other_tenant.client.post("/v1/events/genesys", json=theirs), 404)


def test_late_agent_events_and_wrapups_do_not_undo_newer_ones(tenant: Tenant) -> None:
    conversation_id, genesys = linked_conversation(tenant)
    base = {"genesys_conversation_id": genesys}
    event(tenant, type="agent_connected", at=T.format(1), agent_id="a-1", **base)
    event(tenant, type="agent_disconnected", at=T.format(3), agent_id="a-1", **base)
    # The connect is delivered again after the disconnect: the agent does not come back.
    late = event(tenant, type="agent_connected", at=T.format(1), agent_id="a-1", **base)
    assert (late["outcome"], late["conversation_state"]) == ("unchanged", "waiting")
    assert agents(tenant, conversation_id) == [("a-1", False)]
    # A new connect, later than the disconnect, does.
    back = event(tenant, type="agent_connected", at=T.format(4), agent_id="a-1", **base)
    assert (back["outcome"], back["conversation_state"]) == ("applied", "active")

    first = {"type": "wrapup", "at": T.format(5), "wrapup_code": "A", "wrapup_notes": "n"} | base
    second = {"type": "wrapup", "at": T.format(6), "wrapup_code": "B"} | base
    assert event(tenant, **first)["outcome"] == "applied"
    assert event(tenant, **second)["outcome"] == "applied"
    assert event(tenant, **first)["outcome"] == "unchanged"  # older than the one kept
    wrapup = ok(tenant.client.get(f"/v1/conversations/{conversation_id}"))["metadata"]["wrapup"]
    assert (wrapup["code"], "notes" in wrapup) == ("B", False)  # replaced whole, not merged
