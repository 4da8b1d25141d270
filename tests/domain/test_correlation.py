"""`POST /v1/correlations`: the Genesys conversation of an inbound message, by any of its messages."""

from __future__ import annotations

import httpx

from .helpers import Tenant, assert_problem, inbound, ok, transition, wa_id, wamid


def correlate(
    tenant: Tenant, message: str, conversation: str, communication: str | None = None
) -> httpx.Response:
    body = {"whatsapp_message_id": message, "genesys_conversation_id": conversation}
    if communication is not None:
        body["genesys_communication_id"] = communication
    return tenant.client.post("/v1/correlations", json=body)


def test_any_earlier_message_links_its_conversation(tenant: Tenant, other_tenant: Tenant) -> None:
    client = tenant.client
    wa = wa_id()
    first_wamid = wamid()
    first = inbound(client, wa, wamid_=first_wamid, status=201)
    inbound(client, wa, status=201)  # the customer wrote again before Genesys answered
    lookup = {"wa_id": wa, "business_number_id": "bn-1"}
    assert ok(client.get("/v1/conversations/open", params=lookup))["genesys_conversation_id"] is None

    linked = ok(correlate(tenant, first_wamid, "gc-1", "comm-1"))
    assert linked["id"] == first["conversation_id"]
    assert (linked["genesys_conversation_id"], linked["genesys_communication_id"]) == ("gc-1", "comm-1")
    # The cached lookup shows it at once, and so does the lookup by Genesys ID.
    assert ok(client.get("/v1/conversations/open", params=lookup))["genesys_conversation_id"] == "gc-1"
    assert ok(client.get("/v1/conversations/by-genesys-id/gc-1"))["id"] == first["conversation_id"]

    # Retried: nothing changes. A different Genesys conversation: refused.
    assert ok(correlate(tenant, first_wamid, "gc-1", "comm-1"))["version"] == linked["version"]
    assert_problem(correlate(tenant, first_wamid, "gc-2"), 409)
    # Another customer's conversation cannot take a Genesys ID already linked.
    other = inbound(client, wa_id(), status=201)
    other_wamid = ok(client.get(f"/v1/messages/{other['message_id']}"))["wamid"]
    assert_problem(correlate(tenant, other_wamid, "gc-1"), 409)
    # Unknown, or another tenant's, message: 404 alike.
    assert_problem(correlate(tenant, wamid(), "gc-3"), 404)
    assert_problem(correlate(other_tenant, first_wamid, "gc-3"), 404)
    assert_problem(tenant.client.post("/v1/correlations", json={"whatsapp_message_id": first_wamid}), 422)


def test_a_closed_conversation_is_not_linked(tenant: Tenant) -> None:
    client = tenant.client
    message_wamid = wamid()
    conversation_id = inbound(client, wa_id(), wamid_=message_wamid, status=201)["conversation_id"]
    assert transition(client, conversation_id, "closed", "resolved").status_code == 200
    response = correlate(tenant, message_wamid, "gc-late")
    assert_problem(response, 409)
    assert response.json()["state"] == "closed"
