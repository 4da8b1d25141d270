"""The existing service's queues, on the real RabbitMQ: the producers' shapes in, the consumers' shapes out.

Every test publishes exactly what the real producer sends (existing-service-contract.md, 2.2) and reads
what the real consumer would, checking it against that consumer's validation. State is checked over HTTP.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from harness import Api, Broker, eventually, hold_row_lock

from .helpers import Tenant, ok, wa_id, wamid

WA_NUMBER = "15550001234"  # the business number's phone_number_id: digits, as outbound-transformer checks
CONSUMED = ("INBOUND_QUEUE", "STATUS_QUEUE", "OUTBOUND_QUEUE", "GENESYS_STATUS_QUEUE", "CORRELATION_QUEUE")
WA_ID_RULE = re.compile(r"^[1-9][0-9]{6,14}$")  # outbound-transformer's validator


def of_tenant(tenant: Tenant) -> Callable[[dict[str, Any]], bool]:
    return lambda body: body.get("tenantId") == tenant.id


def dead_letter_of(tenant: Tenant) -> Callable[[dict[str, Any]], bool]:
    def matches(body: dict[str, Any]) -> bool:
        original = body.get("original_payload")
        return isinstance(original, dict) and original.get("tenantId") == tenant.id

    return matches


def inbound(tenant: Tenant, customer: str, message_id: str, text: str, **extra: Any) -> dict[str, Any]:
    """whatsapp-webhook-service's `inbound-whatsapp-messages` message."""
    return {
        "tenantId": tenant.id,
        "wamid": message_id,
        "wa_id": customer,
        "contact_name": "Ana",
        "timestamp": "1767225600",
        "message_text": text,
        "media_url": None,
        "phone_number_id": WA_NUMBER,
        "display_phone_number": "+1 555 000 1234",
    } | extra


def message_by_wamid(client: httpx.Client, message_id: str) -> dict[str, Any] | None:
    response = client.get(f"/v1/messages/by-wamid/{message_id}")
    return response.json() if response.status_code == 200 else None


def test_whole_flow_over_the_queues(tenant: Tenant, broker: Broker) -> None:
    client = tenant.client
    customer, first_wamid = wa_id(), wamid()

    # 1. A customer writes: inbound.enriched carries the input unchanged, plus the mapping.
    sent = inbound(tenant, customer, first_wamid, "hello")
    broker.publish("INBOUND_QUEUE", sent)
    broker.publish("INBOUND_QUEUE", sent)  # delivered twice by the producer
    [enriched] = broker.take("INBOUND_ENRICHED_QUEUE", where=of_tenant(tenant))
    assert {k: enriched[k] for k in sent} == sent  # epoch-seconds timestamp passed through as it came
    assert enriched["conversation_id"] is None
    assert enriched["is_new_conversation"] is True
    conversation = ok(client.get(f"/v1/conversations/{enriched['mapping_id']}"))
    assert conversation["business_number_id"] == WA_NUMBER
    # The repeat was recorded once and announced once.
    assert broker.take("INBOUND_ENRICHED_QUEUE", where=of_tenant(tenant), timeout=1.5) == []

    # 2. genesys-api-service: Genesys accepted it.
    broker.publish(
        "CORRELATION_QUEUE",
        {
            "tenantId": tenant.id,
            "conversation_id": "gc-queue-flow",
            "communication_id": "comm-queue-flow",
            "whatsapp_message_id": first_wamid,
            "status": "created",
            "timestamp": "2026-01-01T00:00:01Z",
            "correlationId": str(uuid.uuid4()),
        },
    )
    eventually(
        lambda: (
            ok(client.get(f"/v1/conversations/{enriched['mapping_id']}"))["genesys_conversation_id"]
            == "gc-queue-flow"
        )
    )
    broker.publish("INBOUND_QUEUE", inbound(tenant, customer, wamid(), "are you there?"))
    [second] = broker.take("INBOUND_ENRICHED_QUEUE", where=of_tenant(tenant))
    assert (second["conversation_id"], second["is_new_conversation"]) == ("gc-queue-flow", False)
    assert second["mapping_id"] == enriched["mapping_id"]

    # 3. genesys-webhook-service: the agent answers; outbound-transformer's contract comes out.
    agent_message = str(uuid.uuid4())
    broker.publish(
        "OUTBOUND_QUEUE",
        {
            "tenantId": tenant.id,
            "genesysId": agent_message,
            "type": "message",
            "timestamp": "2026-01-01T00:00:05.000Z",
            "payload": {"text": "How can I help?", "to_id": customer, "to_id_type": "Opaque", "media": None},
        },
    )
    [processed] = broker.take("OUTBOUND_PROCESSED_QUEUE", where=of_tenant(tenant))
    assert uuid.UUID(processed["internalId"]).version == 4
    assert WA_ID_RULE.match(processed["waId"])
    assert processed["waId"] == customer
    assert processed["phoneNumberId"].isdigit()
    assert isinstance(processed["timestamp"], int)
    assert 1e9 <= processed["timestamp"] <= 9_999_999_999
    assert processed | {"internalId": None} == {
        "internalId": None,
        "tenantId": tenant.id,
        "conversationId": "gc-queue-flow",
        "genesysId": agent_message,
        "waId": customer,
        "phoneNumberId": WA_NUMBER,
        "timestamp": 1767225605,
        "type": "message",
        "payload": {"text": "How can I help?"},
    }

    # 4. WhatsApp reports on the agent's message before its wamid is linked, read before sent, twice.
    out_wamid = wamid()
    for status, at in [("read", "1767225700"), ("delivered", "1767225650"), ("sent", "1767225610")] * 2:
        broker.publish(
            "STATUS_QUEUE",
            {
                "tenantId": tenant.id,
                "wamid": out_wamid,
                "recipientId": customer,
                "status": status,
                "timestamp": at,
                "errors": [],
                "conversation": {},
            },
        )
    time.sleep(0.5)  # held until the link below; the order of the two must not matter
    ok(client.post(f"/v1/messages/{processed['internalId']}/link", json={"wamid": out_wamid}))
    linked = eventually(lambda: (m := message_by_wamid(client, out_wamid)) and m["status"] == "read" and m)
    assert linked["sent_at"]
    assert linked["delivered_at"]
    assert linked["read_at"]

    # 5. Genesys' receipt for the agent's message: genesys-status-processed with its conversation.
    broker.publish(
        "GENESYS_STATUS_QUEUE",
        {
            "tenantId": tenant.id,
            "genesysId": str(uuid.uuid4()),
            "originalMessageId": agent_message,
            "status": "delivered",
            "timestamp": "2026-01-01T00:00:06Z",
        },
    )
    [status_processed] = broker.take("GENESYS_STATUS_PROCESSED_QUEUE", where=of_tenant(tenant))
    assert status_processed["conversation_id"] == "gc-queue-flow"
    assert status_processed["originalMessageId"] == agent_message


def test_a_failed_delivery_keeps_its_error_code(tenant: Tenant, broker: Broker) -> None:
    customer, message_id = wa_id(), wamid()
    broker.publish("INBOUND_QUEUE", inbound(tenant, customer, message_id, "hi"))
    [enriched] = broker.take("INBOUND_ENRICHED_QUEUE", where=of_tenant(tenant))
    failed_wamid = wamid()
    record = ok(
        tenant.client.post(
            f"/v1/conversations/{enriched['mapping_id']}/messages",
            json={"direction": "outbound", "wamid": failed_wamid, "type": "text", "text": "offer"},
        ),
        201,
    )
    broker.publish(
        "STATUS_QUEUE",
        {
            "tenantId": tenant.id,
            "wamid": failed_wamid,
            "recipientId": customer,
            "status": "failed",
            "timestamp": "1767225700",
            "errors": [{"code": 131047, "title": "Re-engagement message", "message": "More than 24 hours"}],
            "conversation": {},
        },
    )
    failed = eventually(lambda: (m := message_by_wamid(tenant.client, failed_wamid)) and m["failed_at"] and m)
    assert failed["id"] == record["id"]
    assert failed["status"] == "failed"
    assert failed["failure"]["code"] == "131047"


def test_one_customer_writing_to_two_tenants_gets_two_conversations(
    make_tenant: Callable[[], Tenant], broker: Broker
) -> None:
    first, second = make_tenant(), make_tenant()
    customer = wa_id()
    for tenant in (first, second):
        broker.publish("INBOUND_QUEUE", inbound(tenant, customer, wamid(), "hi"))
    # Two tenants' messages are processed side by side: their outputs come in either order.
    outputs = broker.take(
        "INBOUND_ENRICHED_QUEUE", 2, where=lambda body: of_tenant(first)(body) or of_tenant(second)(body)
    )
    [a] = [body for body in outputs if of_tenant(first)(body)]
    [b] = [body for body in outputs if of_tenant(second)(body)]
    assert a["mapping_id"] != b["mapping_id"]
    assert a["is_new_conversation"]
    assert b["is_new_conversation"]
    assert first.client.get(f"/v1/conversations/{b['mapping_id']}").status_code == 404


def test_a_burst_of_one_customer_keeps_its_order(tenant: Tenant, broker: Broker) -> None:
    customer = wa_id()
    sent = [wamid() for _ in range(20)]
    for index, message_id in enumerate(sent):
        broker.publish("INBOUND_QUEUE", inbound(tenant, customer, message_id, f"part {index}"))
    enriched = broker.take("INBOUND_ENRICHED_QUEUE", 20, where=of_tenant(tenant))
    assert [body["wamid"] for body in enriched] == sent
    assert len({body["mapping_id"] for body in enriched}) == 1
    assert [body["is_new_conversation"] for body in enriched] == [True] + [False] * 19
    page = ok(tenant.client.get(f"/v1/conversations/{enriched[0]['mapping_id']}/messages?limit=50"))
    assert sorted(m["wamid"] for m in page["items"]) == sorted(sent)


def test_bad_messages_go_to_the_dlq_at_once_and_are_not_requeued(tenant: Tenant, broker: Broker) -> None:
    broker.publish("INBOUND_QUEUE", inbound(tenant, "0123", wamid(), "bad wa_id"))
    broker.publish(
        "OUTBOUND_QUEUE",
        {
            "tenantId": tenant.id,
            "genesysId": str(uuid.uuid4()),
            "type": "message",
            "timestamp": "2026-01-01T00:00:05Z",
            "payload": {"text": "to nobody", "to_id": wa_id()},
        },
    )
    dead = broker.take("DLQ_NAME", 2, where=dead_letter_of(tenant))
    reasons = sorted((d["reason"], d["retry_count"], d["queue"]) for d in dead)
    assert reasons == [
        ("invalid_payload", 0, broker.queue("INBOUND_QUEUE")),
        ("mapping_not_found", 0, broker.queue("OUTBOUND_QUEUE")),
    ]
    assert all(d["error_message"] and d["timestamp"] for d in dead)
    broker.publish("INBOUND_QUEUE", b"{not json")
    [unreadable] = broker.take("DLQ_NAME", where=lambda d: d["original_payload"] == "{not json")
    assert unreadable["reason"] == "invalid_payload"
    # Acked, not requeued: nothing is left waiting in the input queues.
    eventually(lambda: broker.depth("INBOUND_QUEUE") == 0 and broker.depth("OUTBOUND_QUEUE") == 0)


def test_queues_are_declared_as_the_other_services_declare_them(broker: Broker) -> None:
    for setting in broker.names:
        broker.declare_as_other_services_do(setting)


def test_health_reports_the_consumers(api: Api, broker: Broker) -> None:
    ready = httpx.get(f"{api.base_url}/health/ready").json()["checks"]["queues"]
    assert ready["status"] == "ok"
    assert ready["connected"] is True
    assert {q: s["state"] for q, s in ready["queues"].items()} == {
        broker.queue(name): "consuming" for name in CONSUMED
    }
    old = httpx.get(f"{api.base_url}/health").json()
    assert old["status"] == "healthy"
    assert old["checks"]["rabbitmq"]["status"] == "ok"
    assert old["checks"]["rabbitmq"]["queue_depth"] == broker.depth("INBOUND_QUEUE")


# PostgreSQL only: SQLite has no row locks; a writer there waits the file lock's busy timeout (30 s) instead.
@pytest.mark.parametrize("server", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_a_message_that_keeps_failing_is_retried_then_dead_lettered(
    api: Api, tenant: Tenant, broker: Broker
) -> None:
    """The conversation's row stays locked by someone else: each try times out waiting for it, is retried
    with backoff (RABBITMQ_MAX_RETRIES=2 here), then goes to the DLQ; nothing half-done is left."""
    customer = wa_id()
    broker.publish("INBOUND_QUEUE", inbound(tenant, customer, wamid(), "first"))
    [enriched] = broker.take("INBOUND_ENRICHED_QUEUE", where=of_tenant(tenant))
    stuck = wamid()
    with hold_row_lock(api.server.env["DATABASE_URL"], "conversations", enriched["mapping_id"]):
        broker.publish("INBOUND_QUEUE", inbound(tenant, customer, stuck, "second"))
        [dead] = broker.take("DLQ_NAME", where=dead_letter_of(tenant))
    assert (dead["reason"], dead["retry_count"]) == ("lock_timeout", 2)
    assert dead["original_payload"]["wamid"] == stuck
    assert message_by_wamid(tenant.client, stuck) is None
    # The queue goes on: the next message of the same customer is recorded.
    broker.publish("INBOUND_QUEUE", inbound(tenant, customer, wamid(), "third"))
    [third] = broker.take("INBOUND_ENRICHED_QUEUE", where=of_tenant(tenant))
    assert third["mapping_id"] == enriched["mapping_id"]
    assert broker.depth("INBOUND_QUEUE") == 0
