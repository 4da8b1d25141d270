"""The whole path over HTTP, as the caller services drive it: a customer writes on WhatsApp, Genesys
accepts the conversation, an agent answers, WhatsApp reports sent, delivered and read (out of order, twice),
and the conversation ends. Then: a burst of messages from one customer loses none."""

from __future__ import annotations

import concurrent.futures
import copy
import json
from pathlib import Path
from typing import Any

from .helpers import Tenant, ok

PAYLOADS = Path(__file__).resolve().parent.parent / "payloads"
CUSTOMER = "14155550123"
GENESYS_MESSAGE = "5b8e2a91-7c3d-4f0e-b6a2-9d1c4e7f3a20"


def payload(name: str) -> Any:
    return json.loads((PAYLOADS / f"{name}.json").read_text())


def status_webhook(wamid: str, status: str, timestamp: str) -> Any:
    body = payload("wa_status_read")
    body["entry"][0]["changes"][0]["value"]["statuses"][0] |= {
        "id": wamid,
        "status": status,
        "timestamp": timestamp,
    }
    return body


def test_inbound_correlation_agent_reply_receipts_and_end(tenant: Tenant) -> None:
    client = tenant.client
    # 1. whatsapp-webhook-service: the customer's message, delivered twice by Meta.
    webhook = payload("wa_inbound_text")
    [first] = ok(client.post("/v1/inbound/whatsapp", json=webhook))["items"]
    [again] = ok(client.post("/v1/inbound/whatsapp", json=webhook))["items"]
    assert (first["outcome"], again["outcome"]) == ("created", "duplicate")
    assert first["needs_genesys_conversation"] is True
    inbound_wamid = first["wamid"]

    # 2. genesys-api-service: Genesys accepted it; correlate.
    correlation = {
        "whatsapp_message_id": inbound_wamid,
        "genesys_conversation_id": "gc-flow",
        "genesys_communication_id": "comm-flow",
    }
    ok(client.post("/v1/correlations", json=correlation))
    [later] = ok(client.post("/v1/inbound/whatsapp", json=webhook | {}))["items"]
    assert later["genesys_conversation_id"] == "gc-flow"
    assert later["needs_genesys_conversation"] is False

    # 3. genesys-webhook-service: an agent connects.
    agent = {
        "type": "agent_connected",
        "at": "2030-01-01T10:00:00Z",
        "genesys_conversation_id": "gc-flow",
        "agent_id": "ag-1",
    }
    assert ok(client.post("/v1/events/genesys", json=agent))["conversation_state"] == "active"

    # 4. outbound-transformer: the agent's reply; Meta's wamid linked after sending.
    reply = ok(client.post("/v1/outbound/genesys", json=payload("genesys_outbound_text")), 201)
    assert (reply["wa_id"], reply["conversation_id"]) == (CUSTOMER, first["conversation_id"])
    out_wamid = "wamid.flow.reply"
    # WhatsApp's statuses race the link: `read` first, then everything twice, `sent` last.
    read = status_webhook(out_wamid, "read", "1893492004")
    assert ok(client.post("/v1/inbound/whatsapp", json=read))["items"][0]["outcome"] == "held"
    ok(client.post(f"/v1/messages/{reply['message_id']}/link", json={"wamid": out_wamid}))
    for status, second in (("delivered", "1893492003"), ("sent", "1893492002")):
        for _ in range(2):
            ok(client.post("/v1/inbound/whatsapp", json=status_webhook(out_wamid, status, second)))
    message = ok(client.get(f"/v1/messages/by-genesys-id/{GENESYS_MESSAGE}"))
    assert message["status"] == "read"
    assert message["wamid"] == out_wamid
    assert None not in (message["sent_at"], message["delivered_at"], message["read_at"])

    # 5. Genesys ends it; the agent portal sees the whole story in one call.
    ended = {"type": "customer_ended", "at": "2030-01-01T10:30:00Z", "genesys_conversation_id": "gc-flow"}
    assert ok(client.post("/v1/events/genesys", json=ended))["conversation_state"] == "closed"
    view = ok(client.get(f"/v1/conversations/{first['conversation_id']}/agent-context"))
    assert [m["direction"] for m in view["messages"]] == ["inbound", "outbound"]
    assert [p["left_at"] is not None for p in view["participants"]] == [True]
    # The customer writes again: a new conversation, which Genesys must be told about.
    fresh = copy.deepcopy(webhook)
    fresh["entry"][0]["changes"][0]["value"]["messages"][0]["id"] = "wamid.flow.after"
    [after] = ok(client.post("/v1/inbound/whatsapp", json=fresh))["items"]
    assert after["conversation_created"] is True
    assert after["needs_genesys_conversation"] is True


def test_a_burst_of_twenty_messages_from_one_customer_loses_none(tenant: Tenant) -> None:
    def send(n: int) -> int:
        body = payload("wa_inbound_text")
        message = body["entry"][0]["changes"][0]["value"]["messages"][0]
        message |= {"id": f"wamid.burst.{n}", "timestamp": str(1767261600 + n)}
        with tenant.new_client(Authorization=f"Bearer {tenant.key}") as client:
            return client.post("/v1/inbound/whatsapp", json=body).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(send, range(20)))
    assert statuses == [200] * 20
    found = ok(tenant.client.get("/v1/conversations", params={"limit": 10}))["items"]
    assert len(found) == 1  # one customer, one business number: one conversation
    listed = ok(tenant.client.get(f"/v1/conversations/{found[0]['id']}/messages", params={"limit": 100}))
    assert sorted(m["wamid"] for m in listed["items"]) == sorted(f"wamid.burst.{n}" for n in range(20))
