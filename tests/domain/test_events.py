"""Events: every kind of state change is written with it and numbered per tenant without gaps, and the
stored-function path (PostgreSQL) writes exactly what the general path (SQLite) writes."""

from __future__ import annotations

from typing import Any

import httpx

from harness import eventually

from .helpers import Tenant, genesys_id, inbound, ok, record_message, transition, wa_id, wamid


def events_of(client: httpx.Client, after: int = 0, **params: Any) -> list[dict[str, Any]]:
    page = ok(client.get("/v1/events", params={"after": after, "limit": 1000, **params}))
    events: list[dict[str, Any]] = page["events"]
    return events


def wait_for_events(client: httpx.Client, count: int, **params: Any) -> list[dict[str, Any]]:
    """The tenant's first `count` events, once the relay has numbered them."""

    def numbered() -> list[dict[str, Any]] | None:
        found = events_of(client, **params)
        return found if len(found) >= count else None

    found: list[dict[str, Any]] = eventually(numbered, timeout=10)
    return found


def shape(event: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return event["type"], event["payload"]


def test_an_inbound_message_announces_customer_conversation_and_message(tenant: Tenant) -> None:
    wa, first, second = wa_id(), wamid(), wamid()
    recorded = inbound(tenant.client, wa, "bn-events", wamid_=first, profile_name="Ana")
    inbound(tenant.client, wa, "bn-events", wamid_=first, profile_name="Ana")  # a repeat: nothing new
    inbound(tenant.client, wa, "bn-events", wamid_=second, profile_name="Ana B", text="again")

    events = wait_for_events(tenant.client, 5)
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]
    assert [shape(e) for e in events] == [
        ("customer.created", {"display_name": "Ana"}),
        (
            "conversation.created",
            {"state": "pending", "channel": "whatsapp", "business_number_id": "bn-events"},
        ),
        (
            "message.recorded",
            {
                "direction": "inbound",
                "type": "text",
                "wamid": first,
                "genesys_message_id": None,
                "text": "hi",
                "sender_type": "customer",
            },
        ),
        ("customer.updated", {"fields": {"display_name": "Ana B"}, "version": 2}),
        (
            "message.recorded",
            {
                "direction": "inbound",
                "type": "text",
                "wamid": second,
                "genesys_message_id": None,
                "text": "again",
                "sender_type": "customer",
            },
        ),
    ]
    for event in events:
        assert event["tenant_id"] == tenant.id
        assert event["customer_id"] == recorded["customer_id"]
    assert events[1]["conversation_id"] == recorded["conversation_id"]
    assert events[2]["message_id"] == recorded["message_id"]
    assert events_of(tenant.client, after=5) == []


def test_every_kind_of_change_is_announced_once_in_order(tenant: Tenant) -> None:
    client = tenant.client
    created = inbound(client, wa_id(), "bn-kinds")
    conversation_id, customer_id = created["conversation_id"], created["customer_id"]
    genesys = genesys_id()
    ok(client.patch(f"/v1/conversations/{conversation_id}", json={"genesys_conversation_id": genesys}))
    ok(client.patch(f"/v1/conversations/{conversation_id}", json={"metadata": {"queue": "sales"}}))
    agent = ok(
        client.post(
            f"/v1/conversations/{conversation_id}/participants",
            json={"role": "agent", "participant_ref": "agent-1"},
        ),
        201,
    )
    outbound = record_message(client, conversation_id, genesys_message_id="g-" + genesys)
    ok(client.post(f"/v1/messages/{outbound['id']}/link", json={"wamid": "wamid.out-" + genesys}))
    receipt = {"wamid": "wamid.out-" + genesys, "status": "delivered", "at": "2026-11-25T10:00:00Z"}
    ok(client.post("/v1/receipts", json={"receipts": [receipt]}))
    ok(client.post("/v1/receipts", json={"receipts": [receipt]}))  # a repeat changes nothing
    ok(client.patch(f"/v1/conversations/{conversation_id}/context", json={"values": {"topic": "billing"}}))
    ok(client.patch(f"/v1/customers/{customer_id}", json={"language": "pt"}))
    ok(transition(client, conversation_id, "closed", "resolved"))

    events = wait_for_events(client, 13)
    assert [e["seq"] for e in events] == list(range(1, 14))
    assert [e["type"] for e in events] == [
        "customer.created",
        "conversation.created",
        "message.recorded",
        "conversation.correlated",
        "conversation.updated",
        "participant.joined",
        "message.recorded",
        "message.linked",
        "message.status_changed",
        "context.changed",
        "customer.updated",
        "participant.left",
        "conversation.state_changed",
    ]
    by_type = {e["type"]: e for e in events}
    assert by_type["conversation.correlated"]["payload"] == {"genesys_conversation_id": genesys}
    assert by_type["conversation.updated"]["payload"]["fields"] == {"metadata": {"queue": "sales"}}
    assert by_type["participant.joined"]["payload"]["participant_id"] == agent["id"]
    status_changed = by_type["message.status_changed"]["payload"]
    assert status_changed == {"from": "queued", "to": "delivered", "failure": None}
    assert by_type["message.status_changed"]["customer_id"] == customer_id
    assert by_type["context.changed"]["payload"] == {"scope": "conversation", "values": {"topic": "billing"}}
    assert by_type["customer.updated"]["payload"] == {"fields": {"language": "pt"}, "version": 2}
    assert by_type["conversation.state_changed"]["payload"]["to"] == "closed"
    about_conversation = [e for e in events if not e["type"].startswith("customer.")]
    assert {e["conversation_id"] for e in about_conversation} == {conversation_id}


def test_filters_and_pages(tenant: Tenant, other_tenant: Tenant) -> None:
    first = inbound(tenant.client, wa_id(), "bn-f")
    second = inbound(tenant.client, wa_id(), "bn-f")
    inbound(other_tenant.client, wa_id(), "bn-f")
    wait_for_events(tenant.client, 6)
    mine = events_of(tenant.client, conversation_id=second["conversation_id"])
    assert [e["type"] for e in mine] == ["conversation.created", "message.recorded"]
    assert all(e["conversation_id"] == second["conversation_id"] for e in mine)
    wanted = "customer.created,message.recorded"
    only = events_of(tenant.client, types=wanted, customer_id=first["customer_id"])
    assert [e["type"] for e in only] == ["customer.created", "message.recorded"]
    page = ok(tenant.client.get("/v1/events", params={"after": 0, "limit": 4}))
    assert [e["seq"] for e in page["events"]] == [1, 2, 3, 4]
    assert (page["next_after"], page["head"]) == (4, 6)
    rest = ok(tenant.client.get("/v1/events", params={"after": page["next_after"]}))
    assert [e["seq"] for e in rest["events"]] == [5, 6]
    assert rest["next_after"] == 6
    # Another tenant's events are numbered from 1 and never seen here.
    assert all(e["tenant_id"] == tenant.id for e in events_of(tenant.client))
    assert [e["seq"] for e in wait_for_events(other_tenant.client, 3)] == [1, 2, 3]


def test_bad_queries_are_refused(tenant: Tenant) -> None:
    for params in ({"after": -1}, {"limit": 0}, {"types": "no.such"}, {"conversation_id": "x"}):
        response = tenant.client.get("/v1/events", params=params)
        assert response.status_code == 422, (params, response.text)
