"""`POST /v1/inbound/whatsapp` with Meta's real webhook bodies (tests/payloads, from ../shared/reference)."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

from harness import Api

from .helpers import Tenant, assert_problem, ok, parse_time

PAYLOADS = Path(__file__).resolve().parent.parent / "payloads"
CUSTOMER = "14155550123"
NUMBER = "109876543210987"
OUTBOUND_WAMID = "wamid.HBgLMTQxNTU1NTAxMjMVAgARGBI5QTNGMkIxQzBERTRGNUE2QjcA"  # sent, delivered, read
FAILED_WAMID = "wamid.HBgLMTQxNTU1NTAxMjMVAgARGBJCRDcxOUUyQTNGNEMwNUQ2RTcA"


def payload(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((PAYLOADS / f"{name}.json").read_text())
    return loaded


def post(tenant: Tenant, body: Any, status: int = 200) -> Any:
    return ok(tenant.client.post("/v1/inbound/whatsapp", json=body), status)


def test_messages_from_meta_are_recorded_once(tenant: Tenant) -> None:
    first = post(tenant, payload("wa_inbound_text"))
    [text] = first["items"]
    assert (text["kind"], text["outcome"]) == ("message", "created")
    assert (text["customer_created"], text["conversation_created"]) == (True, True)
    assert text["needs_genesys_conversation"] is True
    assert text["conversation_state"] == "pending"

    message = ok(tenant.client.get(f"/v1/messages/{text['message_id']}"))
    assert message["text"] == "Hi, my order #48213 has not arrived yet. Can you help?"
    assert message["sender_id"] == CUSTOMER
    assert parse_time(message["occurred_at"]) == dt.datetime.fromtimestamp(1767261600, dt.UTC)
    customer = ok(tenant.client.get(f"/v1/customers/{text['customer_id']}"))
    assert customer["display_name"] == "Maria Lopez"
    conversation = ok(tenant.client.get(f"/v1/conversations/{text['conversation_id']}"))
    assert (conversation["business_number_id"], conversation["business_display_number"]) == (
        NUMBER,
        "15550001111",
    )

    [image] = post(tenant, payload("wa_inbound_image"))["items"]
    assert image["outcome"] == "created"
    assert image["conversation_id"] == text["conversation_id"]
    assert image["customer_created"] is False
    stored = ok(tenant.client.get(f"/v1/messages/{image['message_id']}"))
    assert stored["type"] == "image"
    assert stored["media"]["mime_type"] == "image/jpeg"
    assert stored["media"]["caption"] == "Photo of the damaged box"
    assert stored["media"]["url"].startswith("https://lookaside.fbsbx.com/")
    # What the row has no column for (the media ID, its hash) is kept, not dropped.
    assert stored["metadata"]["whatsapp"]["image"]["id"] == "1234567890123456"

    # Meta delivers the same webhook again: same IDs, nothing changes.
    version = ok(tenant.client.get(f"/v1/conversations/{text['conversation_id']}"))["version"]
    again = post(tenant, payload("wa_inbound_text"))
    assert again["event_id"] != first["event_id"]  # each delivery's raw body is kept
    [repeat] = again["items"]
    assert (repeat["outcome"], repeat["message_id"]) == ("duplicate", text["message_id"])
    assert ok(tenant.client.get(f"/v1/conversations/{text['conversation_id']}"))["version"] == version


def test_statuses_in_any_order_even_before_their_message(tenant: Tenant) -> None:
    [inbound] = post(tenant, payload("wa_inbound_text"))["items"]
    # `read` arrives first, before the outbound message it names is known: held.
    [read] = post(tenant, payload("wa_status_read"))["items"]
    assert (read["kind"], read["status"], read["outcome"]) == ("status", "read", "held")
    outbound = ok(
        tenant.client.post(
            f"/v1/conversations/{inbound['conversation_id']}/messages",
            json={"direction": "outbound", "wamid": OUTBOUND_WAMID, "text": "We are on it"},
        ),
        201,
    )
    assert outbound["status"] == "read"  # the held receipt was applied when the message appeared
    [delivered] = post(tenant, payload("wa_status_delivered"))["items"]
    [sent] = post(tenant, payload("wa_status_sent"))["items"]
    assert delivered["message_status"] == sent["message_status"] == "read"
    final = ok(tenant.client.get(f"/v1/messages/{outbound['id']}"))
    assert final["status"] == "read"
    assert final["sent_at"] is not None
    assert final["delivered_at"] is not None

    # A failed delivery keeps Meta's error code, title and details.
    ok(
        tenant.client.post(
            f"/v1/conversations/{inbound['conversation_id']}/messages",
            json={"direction": "outbound", "wamid": FAILED_WAMID, "text": "Are you there?"},
        ),
        201,
    )
    [failed] = post(tenant, payload("wa_status_failed"))["items"]
    assert (failed["outcome"], failed["message_status"]) == ("applied", "failed")
    message = ok(tenant.client.get(f"/v1/messages/by-wamid/{FAILED_WAMID}"))
    assert message["failure"]["code"] == "131047"
    assert message["failure"]["title"] == "Re-engagement message"
    assert "24 hours" in message["failure"]["details"]


def test_a_batch_of_messages_and_statuses_answers_item_by_item_in_order(tenant: Tenant) -> None:
    body = payload("wa_inbound_text")
    value = body["entry"][0]["changes"][0]["value"]
    second = copy.deepcopy(value["messages"][0]) | {"id": "wamid.batch.2", "timestamp": "1767261700"}
    value["messages"].append(second)
    value["statuses"] = [
        {
            "id": "wamid.batch.unknown",
            "status": "delivered",
            "timestamp": "1767261701",
            "recipient_id": CUSTOMER,
        },
        {"id": "wamid.batch.2", "status": "deleted", "timestamp": "1767261702", "recipient_id": CUSTOMER},
    ]
    other_number = payload("wa_inbound_text")["entry"][0]
    other_value = other_number["changes"][0]["value"]
    other_value["metadata"]["phone_number_id"] = "222222222222222"
    other_value["messages"][0]["id"] = "wamid.batch.other-number"
    body["entry"].append(other_number)

    items = post(tenant, body)["items"]
    assert [(i["kind"], i["wamid"], i["outcome"]) for i in items] == [
        ("message", value["messages"][0]["id"], "created"),
        ("message", "wamid.batch.2", "created"),
        ("status", "wamid.batch.unknown", "held"),
        ("status", "wamid.batch.2", "ignored"),
        ("message", "wamid.batch.other-number", "created"),
    ]
    # One customer, two business numbers: two conversations.
    assert items[0]["customer_id"] == items[4]["customer_id"]
    assert items[0]["conversation_id"] == items[1]["conversation_id"] != items[4]["conversation_id"]


def test_the_flattened_queue_message_is_accepted(tenant: Tenant) -> None:
    queued = {
        "tenantId": tenant.id,
        "wamid": "wamid.queued.1",
        "wa_id": "919876543210",
        "contact_name": "Unknown",  # what the producer writes when WhatsApp gave no name
        "timestamp": "1700000000",
        "message_text": "hi",
        "media_url": None,
        "phone_number_id": "100000001",
        "display_phone_number": "+91 98765",
    }
    [item] = post(tenant, queued)["items"]
    assert item["outcome"] == "created"
    assert ok(tenant.client.get(f"/v1/customers/{item['customer_id']}"))["display_name"] is None
    message = ok(tenant.client.get(f"/v1/messages/{item['message_id']}"))
    assert (message["text"], message["occurred_at"][:10]) == ("hi", "2023-11-14")
    assert_problem(
        tenant.client.post("/v1/inbound/whatsapp", json=queued | {"tenantId": "someone-else"}), 403
    )


def test_bad_webhooks_are_refused_whole(tenant: Tenant) -> None:
    no_metadata = payload("wa_inbound_text")
    del no_metadata["entry"][0]["changes"][0]["value"]["metadata"]
    bad_sender = payload("wa_inbound_text")
    bad_sender["entry"][0]["changes"][0]["value"]["messages"][0]["from"] = "not-a-number"
    too_many = payload("wa_status_read")
    status = too_many["entry"][0]["changes"][0]["value"]["statuses"][0]
    too_many["entry"][0]["changes"][0]["value"]["statuses"] = [
        status | {"id": f"wamid.many.{n}"} for n in range(1001)
    ]
    # A good message before the bad one in the same body must not be recorded either.
    good_then_bad = payload("wa_inbound_text")
    messages = good_then_bad["entry"][0]["changes"][0]["value"]["messages"]
    messages.append(messages[0] | {"id": "wamid.second", "from": "12ab"})
    for body in (no_metadata, bad_sender, too_many, good_then_bad, {"object": "page", "entry": []}):
        assert_problem(tenant.client.post("/v1/inbound/whatsapp", json=body), 422)
    assert ok(tenant.client.get("/v1/customers"))["items"] == []


def test_stored_webhooks_can_be_replayed(api: Api, tenant: Tenant) -> None:
    first = post(tenant, payload("wa_inbound_text"))
    post(tenant, payload("wa_status_read"))
    done = api.server.cli("replay", "--tenant", tenant.id, "--event", first["event_id"])
    assert done.returncode == 0, done.stderr
    assert first["event_id"] in done.stdout
    assert "duplicate 1" in done.stdout  # recorded once: replaying changes nothing
    everything = api.server.cli("replay", "--tenant", tenant.id, "--since", "2000-01-01T00:00:00Z")
    assert everything.returncode == 0, everything.stderr
    assert "held 1" in everything.stdout  # the status still waits for its message
    unknown = api.server.cli(
        "replay", "--tenant", tenant.id, "--event", "6c1a3f0e-64a5-4a43-9c6f-4ff2b7a1d8d1"
    )
    assert unknown.returncode != 0
    assert "no stored webhook" in unknown.stderr
    # Another tenant's webhooks are not this tenant's to replay.
    other = api.server.cli("replay", "--tenant", api.server.default_tenant_id, "--event", first["event_id"])
    assert other.returncode != 0
    assert "no stored webhook" in other.stderr
