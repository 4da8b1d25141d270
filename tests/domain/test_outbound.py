"""`POST /v1/outbound/genesys`: an agent's message from Genesys, on its way to WhatsApp."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .helpers import Tenant, assert_problem, inbound, ok, transition

PAYLOADS = Path(__file__).resolve().parent.parent / "payloads"
CUSTOMER = "14155550123"  # genesys_outbound_text.json sends to +14155550123


def genesys_text() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((PAYLOADS / "genesys_outbound_text.json").read_text())
    return loaded


def test_an_agents_message_is_recorded_once_and_linked_later(tenant: Tenant) -> None:
    client = tenant.client
    first = inbound(client, CUSTOMER, "109876543210987", status=201, business_display_number="15550001111")
    recorded = ok(client.post("/v1/outbound/genesys", json=genesys_text()), 201)
    assert recorded["conversation_id"] == first["conversation_id"]
    assert (recorded["wa_id"], recorded["business_number_id"]) == (CUSTOMER, "109876543210987")
    assert recorded["business_display_number"] == "15550001111"
    assert recorded["reply_window_open"] is True
    assert (recorded["status"], recorded["duplicate"]) == ("queued", False)
    message = ok(client.get("/v1/messages/by-genesys-id/5b8e2a91-7c3d-4f0e-b6a2-9d1c4e7f3a20"))
    assert message["text"].startswith("Hi Maria")
    assert (message["direction"], message["sender_type"]) == ("outbound", "agent")
    assert message["metadata"]["genesys"]["from"] == "Acme Support WhatsApp"

    # Genesys retries its webhook: recorded once.
    again = ok(client.post("/v1/outbound/genesys", json=genesys_text()), 200)
    assert (again["message_id"], again["duplicate"]) == (recorded["message_id"], True)

    # WhatsApp's `sent` comes before the wamid Meta returned is linked: held, then applied by the link.
    status = {"wamid": "wamid.out.1", "status": "sent", "at": "2026-01-01T10:01:31Z"}
    assert ok(client.post("/v1/receipts", json={"receipts": [status]}))["results"][0]["outcome"] == "held"
    linked = ok(client.post(f"/v1/messages/{recorded['message_id']}/link", json={"wamid": "wamid.out.1"}))
    assert linked["status"] == "sent"


def test_the_queue_shape_and_the_customer_by_wa_id(tenant: Tenant) -> None:
    client = tenant.client
    first = inbound(client, CUSTOMER, "bn-9", status=201)
    queued = {
        "tenantId": tenant.id,
        "genesysId": "gm-queued-1",
        "type": "message",
        "timestamp": "2026-01-01T10:02:00.000Z",
        "payload": {
            "text": "see attached",
            "to_id": CUSTOMER,
            "to_id_type": "Phone",
            "media": {
                "url": "https://files.example.com/a.pdf",
                "contentType": "application/pdf",
                "filename": "a.pdf",
            },
        },
    }
    recorded = ok(client.post("/v1/outbound/genesys", json=queued), 201)
    assert recorded["conversation_id"] == first["conversation_id"]
    message = ok(client.get(f"/v1/messages/{recorded['message_id']}"))
    assert message["type"] == "document"
    assert message["media"] == {
        "url": "https://files.example.com/a.pdf",
        "mime_type": "application/pdf",
        "filename": "a.pdf",
        "caption": None,
    }
    assert_problem(client.post("/v1/outbound/genesys", json=queued | {"tenantId": "someone-else"}), 403)


def test_no_open_conversation_or_bad_address(tenant: Tenant, other_tenant: Tenant) -> None:
    client = tenant.client
    # Nobody wrote: there is no conversation to answer in.
    assert_problem(client.post("/v1/outbound/genesys", json=genesys_text()), 409)
    conversation_id = inbound(client, CUSTOMER, status=201)["conversation_id"]
    # Another tenant's customer is not this tenant's.
    assert_problem(other_tenant.client.post("/v1/outbound/genesys", json=genesys_text()), 409)
    assert transition(client, conversation_id, "closed", "resolved").status_code == 200
    assert_problem(client.post("/v1/outbound/genesys", json=genesys_text()), 409)
    bad = genesys_text()
    bad["channel"]["to"]["id"] = "not a number"
    assert_problem(client.post("/v1/outbound/genesys", json=bad), 422)
    assert_problem(client.post("/v1/outbound/genesys", json={"id": "x"}), 422)
