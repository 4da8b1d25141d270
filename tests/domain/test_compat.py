"""The old Node.js state-manager's HTTP API (`/health`, `/state/...` and the unprefixed aliases), as its
callers use it: the old shapes and status codes, errors as `{"error": ...}`, scoped to the tenant."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import httpx
import pytest

from harness import Api

from .helpers import Tenant, inbound, iso, ok, parse_time, record_message, transition, wa_id, wamid

FORMATTED_KEYS = {
    "waId",
    "conversationId",
    "contactName",
    "phoneNumberId",
    "displayPhoneNumber",
    "communicationId",
    "status",
    "lastActivityAt",
    "isNew",
    "internalId",
    "tenantId",
}
ROW_KEYS = {
    "id",
    "wa_id",
    "conversation_id",
    "communication_id",
    "last_message_id",
    "contact_name",
    "phone_number_id",
    "display_phone_number",
    "status",
    "last_activity_at",
    "created_at",
    "updated_at",
    "metadata",
    "tenant_id",
}
MESSAGE_KEYS = {
    "id",
    "wamid",
    "genesysMessageId",
    "mappingId",
    "direction",
    "status",
    "mediaUrl",
    "text",
    "timestamp",
    "deliveredAt",
    "created_at",
}
EPOCH = 1767225600  # 2026-01-01T00:00:00Z


def legacy_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """An error in the old shape: JSON (not problem+json, not HTML) with an `error` message."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body: dict[str, Any] = response.json()
    assert isinstance(body["error"], str), body
    assert body["error"], body
    return body


def conversation(tenant: Tenant, **extra: Any) -> dict[str, Any]:
    """A customer's conversation, linked to a fresh Genesys conversation."""
    wa, first = wa_id(), wamid()
    recorded = inbound(tenant.client, wa, wamid_=first, status=201, **extra)
    gc = f"gc-{first[-12:]}"
    body = {
        "whatsapp_message_id": first,
        "genesys_conversation_id": gc,
        "genesys_communication_id": gc + "-c",
    }
    ok(tenant.client.post("/v1/correlations", json=body))
    return {"wa_id": wa, "id": recorded["conversation_id"], "genesys_id": gc, "wamid": first}


def test_health_has_the_old_shape(api: Api) -> None:
    for path in ("/health", "/state/health"):
        response = api.get(path)  # no key needed
        body = ok(response)
        assert body.keys() == {"status", "timestamp", "checks", "uptime_seconds"}
        assert body["status"] == "healthy"
        assert parse_time(body["timestamp"]) is not None
        assert isinstance(body["uptime_seconds"], int | float)
        assert body["uptime_seconds"] >= 0
        checks = body["checks"]
        assert checks.keys() == {"database", "redis", "rabbitmq"}
        assert checks["database"]["status"] == "ok"
        assert isinstance(checks["database"]["latency_ms"], int | float)
        assert checks["redis"]["status"] == "ok"
        assert "latency_ms" in checks["redis"]
        assert isinstance(checks["rabbitmq"]["status"], str)


def test_mapping_by_wa_id_is_the_snake_case_row(tenant: Tenant, other_tenant: Tenant) -> None:
    client = tenant.client
    wa, first, second = wa_id(), wamid(), wamid()
    recorded = inbound(
        client,
        wa,
        "bn-77",
        wamid_=first,
        status=201,
        profile_name="Ada",
        business_display_number="+1 555 0100",
    )
    inbound(client, wa, "bn-77", wamid_=second, status=201)
    for _ in range(2):  # one shape always (the old service had two: cache hit and miss)
        row = ok(client.get(f"/state/mapping/{wa}"))
        assert row.keys() == ROW_KEYS
        assert row["id"] == recorded["conversation_id"]
        assert (row["wa_id"], row["contact_name"], row["status"]) == (wa, "Ada", "active")
        assert (row["phone_number_id"], row["display_phone_number"]) == ("bn-77", "+1 555 0100")
        assert (row["conversation_id"], row["communication_id"]) == (None, None)
        assert row["last_message_id"] == second
        assert row["tenant_id"] == tenant.id
    assert ok(client.get(f"/state/mapping/+{wa}"))["id"] == recorded["conversation_id"]

    assert legacy_error(client.get(f"/state/mapping/{wa_id()}"), 404) == {"error": "Mapping not found"}
    assert legacy_error(client.get("/state/mapping/not-a-wa-id"), 404) == {"error": "Mapping not found"}
    # Another tenant's customer is not found.
    assert legacy_error(other_tenant.client.get(f"/state/mapping/{wa}"), 404) == {
        "error": "Mapping not found"
    }
    # A closed conversation is no longer the customer's mapping.
    assert transition(client, recorded["conversation_id"], "closed").status_code == 200
    legacy_error(client.get(f"/state/mapping/{wa}"), 404)


def test_conversation_by_genesys_id_is_format_mapping(tenant: Tenant, other_tenant: Tenant) -> None:
    conv = conversation(tenant, profile_name="Bo", business_display_number="+1 555 0101")
    for path in (f"/state/conversation/{conv['genesys_id']}", f"/conversation/{conv['genesys_id']}"):
        mapping = ok(tenant.client.get(path))
        assert mapping.keys() == FORMATTED_KEYS
        assert mapping == mapping | {
            "waId": conv["wa_id"],
            "conversationId": conv["genesys_id"],
            "communicationId": conv["genesys_id"] + "-c",
            "contactName": "Bo",
            "phoneNumberId": "bn-1",
            "displayPhoneNumber": "+1 555 0101",
            "status": "active",
            "isNew": False,
            "internalId": conv["id"],
            "tenantId": tenant.id,
        }
        assert parse_time(mapping["lastActivityAt"]) is not None
    missing = {"error": "Mapping not found"}
    assert legacy_error(tenant.client.get("/state/conversation/gc-unknown"), 404) == missing
    assert legacy_error(other_tenant.client.get(f"/state/conversation/{conv['genesys_id']}"), 404) == missing
    assert legacy_error(other_tenant.client.get(f"/conversation/{conv['genesys_id']}"), 404) == missing


def test_tenant_is_taken_from_header_then_query_then_body(
    tenant: Tenant, other_tenant: Tenant, admin: httpx.Client
) -> None:
    conv = conversation(tenant)
    path = f"/state/conversation/{conv['genesys_id']}"
    # An admin (or service) key names the tenant, in any of the three places.
    assert ok(admin.get(path, headers={"X-Tenant-ID": tenant.id}))["tenantId"] == tenant.id
    assert ok(admin.get(path, params={"tenantId": tenant.id}))["tenantId"] == tenant.id
    message = {"wamid": wamid(), "mappingId": conv["id"], "tenantId": tenant.id}
    tracked = ok(admin.post("/state/message", json=message))
    assert ok(tenant.client.get(f"/v1/messages/{tracked['id']}"))["wamid"] == message["wamid"]
    # The header comes first, then the query: here both name the other tenant first, so not found.
    headers = {"X-Tenant-ID": other_tenant.id}
    legacy_error(admin.get(path, headers=headers, params={"tenantId": tenant.id}), 404)
    query_first = admin.request(
        "GET", path, params={"tenantId": other_tenant.id}, json={"tenantId": tenant.id}
    )
    legacy_error(query_first, 404)
    body = {"wamid": wamid(), "mappingId": conv["id"], "tenantId": tenant.id}
    legacy_error(admin.post("/state/message", json=body, params={"tenantId": other_tenant.id}), 404)
    # No tenant at all, an unknown one, or one not the tenant key's own: refused in the old shape.
    legacy_error(admin.get(path), 400)
    legacy_error(admin.get(path, headers={"X-Tenant-ID": "no-such-tenant"}), 404)
    legacy_error(tenant.client.get(path, params={"tenantId": other_tenant.id}), 403)
    legacy_error(admin.post("/state/message", json=body | {"tenantId": 7}), 400)
    # Keys are required as on every route.
    with tenant.new_client() as anonymous:
        legacy_error(anonymous.get(path, headers={"X-Tenant-ID": tenant.id}), 401)


def test_message_pages_count_every_message(tenant: Tenant, other_tenant: Tenant) -> None:
    client = tenant.client
    conv = conversation(tenant)
    outbound = []
    base = int(time.time()) + 1  # after the inbound message
    for n in range(3):
        outbound.append(wamid())
        body = {
            "wamid": outbound[-1],
            "mappingId": conv["id"],
            "direction": "outbound",
            "status": "queued",
            "text": f"reply {n}",
            "timestamp": base + 60 * (n + 1),
        }
        assert ok(client.post("/state/message", json=body))["duplicate"] is False
    by_genesys = f"/state/conversation/{conv['genesys_id']}/messages"
    by_mapping = f"/state/mapping/{conv['id']}/messages"
    first = ok(client.get(by_genesys, params={"limit": 2}))
    assert (first["total"], first["limit"], first["offset"]) == (4, 2, 0)
    assert [m["wamid"] for m in first["messages"]] == [outbound[2], outbound[1]]  # newest first
    item = first["messages"][0]
    assert item.keys() == MESSAGE_KEYS
    assert item == item | {
        "mappingId": conv["id"],
        "direction": "OUTBOUND",
        "status": "queued",
        "text": "reply 2",
        "genesysMessageId": None,
        "mediaUrl": None,
        "deliveredAt": None,
    }
    assert parse_time(item["timestamp"]) == dt.datetime.fromtimestamp(base + 180, dt.UTC)
    assert parse_time(item["created_at"]) is not None
    rest = ok(client.get(by_mapping, params={"limit": 2, "offset": 2}))
    assert (rest["total"], rest["offset"]) == (4, 2)
    assert [m["wamid"] for m in rest["messages"]] == [outbound[0], conv["wamid"]]
    assert rest["messages"][1]["direction"] == "INBOUND"
    assert rest["messages"][1]["text"] == "hi"
    # The defaults, and a count without messages (limit=0).
    assert ok(client.get(by_mapping)) | {"messages": []} == {
        "messages": [],
        "total": 4,
        "limit": 50,
        "offset": 0,
    }
    assert ok(client.get(by_genesys, params={"limit": 0}))["total"] == 4

    assert "limit" in legacy_error(client.get(by_genesys, params={"limit": "abc"}), 400)["error"]
    legacy_error(client.get(by_mapping, params={"offset": "-1"}), 400)
    assert legacy_error(client.get("/state/conversation/gc-none/messages"), 404) == {
        "error": "Conversation not found"
    }
    assert legacy_error(client.get("/state/mapping/not-a-uuid/messages"), 404) == {
        "error": "Mapping not found"
    }
    legacy_error(other_tenant.client.get(by_genesys), 404)
    legacy_error(other_tenant.client.get(by_mapping), 404)


def test_post_message_records_once(tenant: Tenant, other_tenant: Tenant) -> None:
    client = tenant.client
    conv = conversation(tenant)
    body = {"wamid": wamid(), "mappingId": conv["id"], "direction": "OUTBOUND", "status": "sent"}
    for path in ("/state/message", "/message"):
        created = ok(client.post(path, json=body))
        assert created.keys() == {"success", "duplicate", "id"}
        assert created["success"] is True
    first = ok(client.post("/state/message", json=body | {"wamid": wamid()}))
    assert first["duplicate"] is False
    again = ok(client.post("/state/message", json=body))
    assert again == {"success": True, "duplicate": True, "id": created["id"]}
    stored = ok(client.get(f"/v1/messages/by-wamid/{body['wamid']}"))
    assert (stored["direction"], stored["status"]) == ("outbound", "sent")

    # Defaults: inbound and received; an epoch-seconds string as the time; the text from metadata.
    plain = {"wamid": wamid(), "mappingId": conv["id"], "timestamp": str(EPOCH), "metadata": {"text": "yo"}}
    recorded = ok(client.post("/state/message", json=plain))
    message = ok(client.get(f"/v1/messages/{recorded['id']}"))
    assert (message["direction"], message["status"], message["text"]) == ("inbound", "received", "yo")
    assert parse_time(message["occurred_at"]) == parse_time("2026-01-01T00:00:00Z")

    required = {"error": "wamid and mappingId are required"}
    assert legacy_error(client.post("/state/message", json={"wamid": wamid()}), 400) == required
    assert legacy_error(client.post("/message", json={"mappingId": conv["id"]}), 400) == required
    assert legacy_error(client.post("/state/message"), 400) == required  # no body at all
    for bad in (
        {"mappingId": "not-a-uuid"},
        {"direction": "sideways"},
        {"status": "bogus"},
        {"timestamp": "yesterday"},
        {"mediaUrl": "ftp://example.com/a.png"},
    ):
        legacy_error(client.post("/state/message", json=body | {"wamid": wamid()} | bad), 400)
    # An unknown mapping, or another tenant's: not found.
    missing = {"error": "Mapping not found"}
    other = body | {"wamid": wamid(), "mappingId": "00000000-0000-4000-8000-000000000000"}
    assert legacy_error(client.post("/state/message", json=other), 404) == missing
    assert (
        legacy_error(other_tenant.client.post("/state/message", json=body | {"wamid": wamid()}), 404)
        == missing
    )


def test_status_updates_apply_in_any_order(tenant: Tenant) -> None:
    client = tenant.client
    conv = conversation(tenant)
    sent = wamid()
    ok(client.post("/message", json={"wamid": sent, "mappingId": conv["id"], "direction": "outbound"}))

    read = ok(client.patch(f"/state/message/{sent}/status", json={"status": "read", "timestamp": EPOCH + 20}))
    assert read == {"success": True, "wamid": sent, "previousStatus": "queued", "status": "read"}
    # A late `delivered` (epoch seconds as a string, uppercase) does not take it back.
    late = {"status": "DELIVERED", "timestamp": str(EPOCH + 10), "genesysMessageId": "gm-" + sent[-8:]}
    delivered = ok(client.patch(f"/message/{sent}/status", json=late))
    assert (delivered["previousStatus"], delivered["status"]) == ("read", "read")
    message = ok(client.get(f"/v1/messages/by-wamid/{sent}"))
    assert message["status"] == "read"
    assert parse_time(message["delivered_at"]) == parse_time("2026-01-01T00:00:10Z")
    assert parse_time(message["read_at"]) == parse_time("2026-01-01T00:00:20Z")
    assert message["genesys_message_id"] == late["genesysMessageId"]
    page = ok(client.get(f"/state/conversation/{conv['genesys_id']}/messages"))
    assert parse_time(page["messages"][0]["deliveredAt"]) == parse_time("2026-01-01T00:00:10Z")
    # Repeated, or a status no receipt reports: accepted, nothing changes.
    assert ok(client.patch(f"/state/message/{sent}/status", json={"status": "read"}))["status"] == "read"
    assert ok(client.patch(f"/state/message/{sent}/status", json={"status": "queued"}))["status"] == "read"

    assert legacy_error(client.patch(f"/state/message/{sent}/status", json={}), 400) == {
        "error": "status is required"
    }
    unknown = client.patch(f"/state/message/{wamid()}/status", json={"status": "sent"})
    assert legacy_error(unknown, 400) == {"success": False, "error": "Message not found"}
    assert (
        legacy_error(client.patch(f"/state/message/{sent}/status", json={"status": "bogus"}), 400)["success"]
        is False
    )
    bad_time = {"status": "sent", "timestamp": "soon"}
    legacy_error(client.patch(f"/state/message/{sent}/status", json=bad_time), 400)
    other_id = {"status": "read", "genesysMessageId": "gm-other"}
    legacy_error(client.patch(f"/state/message/{sent}/status", json=other_id), 409)


def test_correlate_links_the_genesys_conversation(tenant: Tenant, admin: httpx.Client) -> None:
    client = tenant.client
    wa, first = wa_id(), wamid()
    recorded = inbound(client, wa, wamid_=first, status=201)
    inbound(client, wa, status=201)  # a later message: the earlier wamid still correlates
    assert ok(client.get(f"/state/mapping/{wa}"))["conversation_id"] is None
    body = {
        "conversation_id": "gc-" + first[-10:],
        "communication_id": "comm-1",
        "whatsapp_message_id": first,
    }
    linked = ok(client.post("/state/correlate", json=body))
    assert linked.keys() == FORMATTED_KEYS
    assert linked == linked | {
        "conversationId": body["conversation_id"],
        "communicationId": "comm-1",
        "isNew": False,
        "internalId": recorded["conversation_id"],
        "waId": wa,
    }
    # Again, on the other path and naming the tenant in the body: the same, nothing changes.
    assert ok(admin.post("/state/correlation", json=body | {"tenantId": tenant.id})) == linked
    assert ok(client.get(f"/state/conversation/{body['conversation_id']}")) == linked

    required = {"error": "conversation_id, communication_id, and whatsapp_message_id are required"}
    assert legacy_error(client.post("/state/correlate", json={"conversation_id": "gc-x"}), 400) == required
    legacy_error(client.post("/state/correlate", json=body | {"conversation_id": "bad id!"}), 400)
    conflict = "Conversation already correlated or message not found"
    assert (
        legacy_error(client.post("/state/correlate", json=body | {"conversation_id": "gc-2"}), 409)["error"]
        == conflict
    )
    unknown = body | {"whatsapp_message_id": wamid()}
    assert legacy_error(client.post("/state/correlation", json=unknown), 409)["error"] == conflict


def test_context_is_replaced_whole(tenant: Tenant, other_tenant: Tenant) -> None:
    client = tenant.client
    conv = conversation(tenant)
    path = f"/state/context/{conv['genesys_id']}"
    assert ok(client.get(path)) == {"context": None}
    assert ok(client.post(path, json={"context": {"intent": "billing", "step": 1}})) == {"success": True}
    assert ok(client.get(path)) == {"context": {"intent": "billing", "step": 1}}
    assert ok(client.post(path, json={"context": ["any", "json"]})) == {"success": True}
    assert ok(client.get(path)) == {"context": ["any", "json"]}

    assert legacy_error(client.post(path, json={}), 400) == {"error": "context is required"}
    legacy_error(client.post(path, content=b"{not json", headers={"content-type": "application/json"}), 400)
    legacy_error(client.post(path, json=[1, 2]), 400)
    assert legacy_error(client.get("/state/context/gc-none"), 404) == {"error": "Conversation not found"}
    legacy_error(other_tenant.client.get(path), 404)
    legacy_error(other_tenant.client.post(path, json={"context": {}}), 404)


def test_stats_count_the_tenant_only(tenant: Tenant, other_tenant: Tenant) -> None:
    client = tenant.client
    first = inbound(client, wa_id(), status=201)
    inbound(client, wa_id(), status=201)
    ok(client.post("/state/message", json={"wamid": wamid(), "mappingId": first["conversation_id"]}))
    assert transition(client, first["conversation_id"], "closed").status_code == 200
    expected = {
        "totalMappings": 2,
        "totalMessages": 3,
        "activeConversations": 1,
        "activeConversationsRaw": "1",
        "waitingConversations": 0,
        "totalMessagesToday": 3,
        "avgResponseTime": 0,  # nobody answered yet
        "tenantId": tenant.id,
    }
    for path in ("/state/stats", "/state/stats/summary", "/stats/summary"):
        found = ok(client.get(path))
        assert parse_time(found.pop("timestamp")) is not None
        assert found == expected
    # An agent answers the second customer 90 s after the customer wrote: today's average.
    second = inbound(
        client, wa_id(), status=201, occurred_at=iso(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=100))
    )
    record_message(
        client,
        second["conversation_id"],
        wamid=wamid(),
        occurred_at=iso(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=10)),
    )
    assert ok(client.get("/state/stats"))["avgResponseTime"] == pytest.approx(90, abs=1)
    empty = ok(other_tenant.client.get("/state/stats"))
    assert (empty["totalMappings"], empty["totalMessages"], empty["tenantId"]) == (0, 0, other_tenant.id)


def test_analytics_metrics_are_the_tenants_figures(tenant: Tenant, other_tenant: Tenant) -> None:
    for moment in ("2026-01-05T10:00:00Z", "2026-01-05T11:00:00Z", "2026-01-07T09:00:00Z"):
        inbound(tenant.client, wa_id(), status=201, occurred_at=moment)
    query = {"metric": "messages", "interval": "day", "from": "2026-01-05", "to": "2026-01-08"}
    for client, counts in ((tenant.client, [2, 0, 1]), (other_tenant.client, [0, 0, 0])):
        for path in ("/state/analytics/metrics", "/analytics/metrics"):
            found = ok(client.get(path, params=query))
            assert (found["metric"], found["interval"], found["timezone"]) == ("messages", "day", "UTC")
            assert found["from"] == "2026-01-05T00:00:00+00:00"
            assert found["to"] == "2026-01-08T00:00:00+00:00"
            assert [point["timestamp"][:10] for point in found["data"]] == [
                "2026-01-05",
                "2026-01-06",
                "2026-01-07",
            ]
            assert [point["value"] for point in found["data"]] == counts
    weekly = ok(
        tenant.client.get(
            "/state/analytics/metrics", params=query | {"metric": "started", "interval": "week"}
        )
    )
    assert [point["value"] for point in weekly["data"]] == [3]
    assert (
        "unknown metric 'm'"
        in legacy_error(tenant.client.get("/analytics/metrics", params={"metric": "m"}), 400)["error"]
    )
    legacy_error(tenant.client.get("/analytics/metrics", params={"interval": "minute"}), 400)
    legacy_error(tenant.client.get("/analytics/metrics", params={"from": "soon"}), 400)


def test_patch_conversation_drives_its_state(tenant: Tenant, other_tenant: Tenant) -> None:
    client = tenant.client
    conv = conversation(tenant)
    path = f"/state/conversation/{conv['genesys_id']}"
    active = ok(client.patch(path, json={"status": "active"}))
    assert (active["status"], active["updated"], active["success"]) == ("active", True, True)
    assert ok(client.get(f"/v1/conversations/{conv['id']}"))["state"] == "active"
    legacy_error(other_tenant.client.patch(path, json={"status": "closed"}), 404)

    closed = ok(
        client.patch(f"/conversation/{conv['genesys_id']}", json={"status": "CLOSED", "reason": "done"})
    )
    assert closed.keys() == FORMATTED_KEYS | {"success", "updated"}
    assert (closed["status"], closed["updated"], closed["internalId"]) == ("closed", True, conv["id"])
    assert ok(client.get(f"/v1/conversations/{conv['id']}"))["state"] == "closed"
    assert ok(client.patch(path, json={"status": "closed"}))["updated"] is False
    legacy_error(client.patch(path, json={"status": "active"}), 409)  # closed is final

    assert legacy_error(client.patch(path, json={}), 400) == {"error": "status is required"}
    legacy_error(client.patch(path, json={"status": "archived"}), 400)
    assert legacy_error(client.patch("/state/conversation/gc-none", json={"status": "closed"}), 404) == {
        "error": "Conversation not found"
    }


def test_post_mapping_is_deprecated_not_a_500(tenant: Tenant) -> None:
    assert legacy_error(tenant.client.post("/state/mapping", json={}), 400) == {"error": "waId is required"}
    assert (
        "deprecated"
        in legacy_error(tenant.client.post("/state/mapping", json={"waId": wa_id()}), 410)["error"]
    )


def test_errors_are_old_json_never_html(tenant: Tenant) -> None:
    client = tenant.client
    body = legacy_error(client.get("/state/no/such/route"), 404)
    assert body == {"error": "Cannot GET /state/no/such/route"}
    legacy_error(client.delete("/state/stats"), 404)
    bad_json = client.post("/state/message", content=b"{", headers={"content-type": "application/json"})
    assert legacy_error(bad_json, 400) == {"error": "the body is not valid JSON"}
    legacy_error(client.post("/state/message", json="a string"), 400)
    # The rest of the service keeps its problem+json errors.
    response = client.get("/v1/messages/not-a-uuid")
    assert response.headers["content-type"].startswith("application/problem+json")


def test_inputs_found_by_review_are_400_or_409_never_500(tenant: Tenant) -> None:
    client = tenant.client
    conv = conversation(tenant)
    # Nested too deep to be read back once stored: refused before anything is written.
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    legacy_error(client.post(f"/state/context/{conv['genesys_id']}", json={"context": deep}), 400)
    assert ok(client.get(f"/state/context/{conv['genesys_id']}")) == {"context": None}
    very_deep = "[" * 5000 + "1" + "]" * 5000
    raw = '{"wamid": "w.deep", "mappingId": "%s", "metadata": {"a": %s, "n": 12345678901234567890123}}'
    body = raw % (conv["id"], very_deep)
    headers = {"Content-Type": "application/json"}
    legacy_error(client.post("/state/message", content=body, headers=headers), 400)
    # An offset beyond any page.
    path = f"/state/conversation/{conv['genesys_id']}/messages"
    legacy_error(client.get(path, params={"offset": "99999999999999999999"}), 400)
    # A Genesys message ID already tracked under another wamid: refused, nothing recorded or held.
    first = {"wamid": wamid(), "mappingId": conv["id"], "genesysMessageId": "gm-review-1"}
    ok(client.post("/state/message", json=first))
    second = first | {"wamid": wamid(), "status": "read"}
    legacy_error(client.post("/state/message", json=second), 409)
    assert client.get(f"/v1/messages/by-wamid/{second['wamid']}").status_code == 404
