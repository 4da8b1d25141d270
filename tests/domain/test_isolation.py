"""Tenant isolation over HTTP: another tenant's data answers exactly like data that does not exist.

Tenant A gets a customer, conversation, messages, participants and context. Tenant B (by its own key, by a
service key naming B, by an admin key naming B) then calls every endpoint that takes an ID of A's data: each
answers as a random unknown ID does, and A's data is unchanged afterwards. Then the authentication and
X-Tenant-ID rules.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from .helpers import (
    Tenant,
    assert_problem,
    business_number,
    genesys_id,
    inbound,
    ok,
    record_message,
    wa_id,
    wamid,
)


@dataclass(frozen=True)
class Ids:
    """The IDs a probe uses: tenant A's real ones, or random unknown ones."""

    wa_id: str
    customer_id: str
    conversation_id: str
    genesys_conversation_id: str
    message_id: str
    wamid: str
    genesys_message_id: str
    participant_id: str
    business_number_id: str


def seed(tenant: Tenant) -> Ids:
    client = tenant.client
    wa, business = wa_id(), business_number()
    first = inbound(client, wa, business, status=201, profile_name="Ada")
    conversation_id = first["conversation_id"]
    genesys_conversation = genesys_id()
    ok(
        client.patch(
            f"/v1/conversations/{conversation_id}",
            json={"genesys_conversation_id": genesys_conversation, "metadata": {"queue": "sales"}},
        )
    )
    out_wamid, out_genesys = wamid(), genesys_id()
    outbound = record_message(client, conversation_id, wamid=out_wamid, genesys_message_id=out_genesys)
    receipts = ok(
        client.post(
            "/v1/receipts",
            json={"receipts": [{"wamid": out_wamid, "status": "sent", "at": "2026-01-01T10:00:00Z"}]},
        )
    )
    assert receipts["results"][0]["outcome"] == "applied"
    participant = ok(
        client.post(
            f"/v1/conversations/{conversation_id}/participants",
            json={"role": "agent", "participant_ref": "agent-7", "display_name": "Grace"},
        ),
        201,
    )
    ok(client.patch(f"/v1/conversations/{conversation_id}/context", json={"values": {"intent": "buy"}}))
    ok(client.patch(f"/v1/customers/{first['customer_id']}/context", json={"values": {"tier": "gold"}}))
    ok(client.patch(f"/v1/customers/{first['customer_id']}", json={"attributes": {"vip": True}}))
    ok(
        client.post(
            f"/v1/customers/{first['customer_id']}/identities",
            json={"channel": "email", "external_id": f"{wa}@example.com"},
        ),
        201,
    )
    ok(client.post(f"/v1/conversations/{conversation_id}/transitions", json={"state": "active"}))
    return Ids(
        wa_id=wa,
        customer_id=first["customer_id"],
        conversation_id=conversation_id,
        genesys_conversation_id=genesys_conversation,
        message_id=outbound["id"],
        wamid=out_wamid,
        genesys_message_id=out_genesys,
        participant_id=participant["id"],
        business_number_id=business,
    )


def random_ids() -> Ids:
    return Ids(
        wa_id=wa_id(),
        customer_id=str(uuid.uuid4()),
        conversation_id=str(uuid.uuid4()),
        genesys_conversation_id=genesys_id(),
        message_id=str(uuid.uuid4()),
        wamid=wamid(),
        genesys_message_id=genesys_id(),
        participant_id=str(uuid.uuid4()),
        business_number_id=business_number(),
    )


def snapshot(client: httpx.Client, ids: Ids) -> dict[str, Any]:
    """Everything tenant A can read about its seeded data."""
    conversation = f"/v1/conversations/{ids.conversation_id}"
    customer = f"/v1/customers/{ids.customer_id}"
    paths = {
        "customer": customer,
        "customer_context": f"{customer}/context",
        "by_identity": f"/v1/customers/by-identity/whatsapp/{ids.wa_id}",
        "conversation": conversation,
        "by_genesys": f"/v1/conversations/by-genesys-id/{ids.genesys_conversation_id}",
        "history": f"{conversation}/history",
        "participants": f"{conversation}/participants",
        "messages": f"{conversation}/messages",
        "conversation_context": f"{conversation}/context",
        "message": f"/v1/messages/{ids.message_id}",
        "by_wamid": f"/v1/messages/by-wamid/{ids.wamid}",
        "by_genesys_message": f"/v1/messages/by-genesys-id/{ids.genesys_message_id}",
        "customers": "/v1/customers",
        "conversations": "/v1/conversations",
    }
    return {name: ok(client.get(path)) for name, path in paths.items()}


# (name, method, path, json body) for every endpoint that takes an ID of another tenant's data.
Probe = tuple[str, str, str, dict[str, Any] | None]


def probes(ids: Ids) -> list[Probe]:
    conversation = f"/v1/conversations/{ids.conversation_id}"
    customer = f"/v1/customers/{ids.customer_id}"
    message = f"/v1/messages/{ids.message_id}"
    return [
        ("get customer", "GET", customer, None),
        ("patch customer", "PATCH", customer, {"display_name": "Mallory", "attributes": {"vip": None}}),
        ("customer by identity", "GET", f"/v1/customers/by-identity/whatsapp/{ids.wa_id}", None),
        (
            "add identity",
            "POST",
            f"{customer}/identities",
            {"channel": "email", "external_id": "m@evil.test"},
        ),
        ("get customer context", "GET", f"{customer}/context", None),
        ("patch customer context", "PATCH", f"{customer}/context", {"values": {"tier": "stolen"}}),
        (
            "open conversation by customer id",
            "POST",
            "/v1/conversations",
            {"customer_id": ids.customer_id, "business_number_id": ids.business_number_id},
        ),
        (
            "open conversation by identity",
            "POST",
            "/v1/conversations",
            {
                "identity": {"channel": "whatsapp", "external_id": ids.wa_id},
                "business_number_id": ids.business_number_id,
            },
        ),
        ("get conversation", "GET", conversation, None),
        ("patch conversation", "PATCH", conversation, {"metadata": {"queue": None, "x": 1}}),
        (
            "conversation by genesys id",
            "GET",
            f"/v1/conversations/by-genesys-id/{ids.genesys_conversation_id}",
            None,
        ),
        ("open conversation by wa_id", "GET", f"/v1/conversations/open?wa_id={ids.wa_id}", None),
        (
            "open conversation by wa_id and number",
            "GET",
            f"/v1/conversations/open?wa_id={ids.wa_id}&business_number_id={ids.business_number_id}",
            None,
        ),
        ("transition", "POST", f"{conversation}/transitions", {"state": "closed", "reason": "hijack"}),
        ("history", "GET", f"{conversation}/history", None),
        ("list participants", "GET", f"{conversation}/participants", None),
        (
            "add participant",
            "POST",
            f"{conversation}/participants",
            {"role": "agent", "participant_ref": "evil"},
        ),
        ("leave participant", "POST", f"{conversation}/participants/{ids.participant_id}/leave", {}),
        ("list messages", "GET", f"{conversation}/messages", None),
        ("list messages desc", "GET", f"{conversation}/messages?order=desc", None),
        ("record message", "POST", f"{conversation}/messages", {"direction": "outbound", "wamid": wamid()}),
        ("get conversation context", "GET", f"{conversation}/context", None),
        ("patch conversation context", "PATCH", f"{conversation}/context", {"values": {"intent": "steal"}}),
        ("get message", "GET", message, None),
        ("message by wamid", "GET", f"/v1/messages/by-wamid/{ids.wamid}", None),
        ("message by genesys id", "GET", f"/v1/messages/by-genesys-id/{ids.genesys_message_id}", None),
        ("link message ids", "POST", f"{message}/link", {"wamid": wamid()}),
    ]


def outcome(response: httpx.Response) -> tuple[int, str | None, str]:
    content_type = response.headers.get("content-type", "").split(";")[0]
    code = response.json().get("code") if content_type.endswith("json") else None
    return response.status_code, code, content_type


@pytest.fixture(params=["tenant_key", "service_key", "admin_key"])
def as_tenant_b(
    request: pytest.FixtureRequest, api: Any, other_tenant: Tenant, service_key: str
) -> Callable[[], httpx.Client]:
    """A client acting for tenant B: with B's own key, or a service/admin key naming B."""
    key, header = {
        "tenant_key": (other_tenant.key, {}),
        "service_key": (service_key, {"X-Tenant-ID": other_tenant.id}),
        "admin_key": (api.admin_key, {"X-Tenant-ID": other_tenant.id}),
    }[request.param]
    return lambda: other_tenant.new_client(Authorization=f"Bearer {key}", **header)


def test_another_tenants_ids_answer_exactly_like_unknown_ids(
    tenant: Tenant, as_tenant_b: Callable[[], httpx.Client]
) -> None:
    ids = seed(tenant)
    before = snapshot(tenant.client, ids)
    unknown = random_ids()
    mismatches = []
    with as_tenant_b() as b:
        assert ok(b.get("/v1/customers"))["items"] == []
        for (name, method, path, body), (_, _, unknown_path, unknown_body) in zip(
            probes(ids), probes(unknown), strict=True
        ):
            seen = outcome(b.request(method, path, json=body))
            baseline = outcome(b.request(method, unknown_path, json=unknown_body))
            if seen != baseline or seen[:2] != (404, "not-found"):
                mismatches.append((name, "A's id:", seen, "unknown id:", baseline))
        # Receipts never answer 404: another tenant's wamid is just an unknown one, and is held.
        for kind, value in (("wamid", ids.wamid), ("genesys_message_id", ids.genesys_message_id)):
            receipt = {kind: value, "status": "read", "at": "2026-01-01T10:05:00Z"}
            results = ok(b.post("/v1/receipts", json={"receipts": [receipt]}))["results"]
            assert results == [{"outcome": "held", "message_id": None, "status": None}], (kind, results)
        # Lists of B show nothing of A.
        assert ok(b.get("/v1/conversations", params={"customer_id": ids.customer_id}))["items"] == []
        assert ok(b.get("/v1/conversations"))["items"] == []
        assert ok(b.get("/v1/customers"))["items"] == []
    assert not mismatches, "\n".join(map(str, mismatches))
    after = snapshot(tenant.client, ids)
    assert after == before
    message = after["message"]
    assert message["status"] == "sent"
    assert message["read_at"] is None


def test_the_same_external_ids_in_another_tenant_are_separate_data(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    ids = seed(tenant)
    before = snapshot(tenant.client, ids)
    a_inbound_wamid = ok(tenant.client.get(f"/v1/conversations/{ids.conversation_id}/messages"))["items"][0]
    # B receives a message from the same wa_id with the same wamid: new data of B's, not a duplicate.
    recorded = inbound(
        other_tenant.client, ids.wa_id, ids.business_number_id, wamid_=a_inbound_wamid["wamid"]
    )
    assert recorded["duplicate"] is False
    assert recorded["customer_created"] is True
    assert recorded["conversation_created"] is True
    assert recorded["customer_id"] != ids.customer_id
    assert recorded["conversation_id"] != ids.conversation_id
    # B records an outbound message with A's wamid and Genesys ID, then sets A's Genesys conversation ID.
    message = record_message(
        other_tenant.client,
        recorded["conversation_id"],
        wamid=ids.wamid,
        genesys_message_id=ids.genesys_message_id,
    )
    assert message["id"] != ids.message_id
    assert message["status"] == "queued"
    patched = ok(
        other_tenant.client.patch(
            f"/v1/conversations/{recorded['conversation_id']}",
            json={"genesys_conversation_id": ids.genesys_conversation_id},
        )
    )
    assert patched["genesys_conversation_id"] == ids.genesys_conversation_id
    applied = ok(
        other_tenant.client.post(
            "/v1/receipts", json={"receipts": [{"wamid": ids.wamid, "status": "delivered", "at": 1767261600}]}
        )
    )["results"]
    assert applied[0]["message_id"] == message["id"]
    assert applied[0]["status"] == "delivered"
    assert snapshot(tenant.client, ids) == before


# --- Keys and X-Tenant-ID --------------------------------------------------------------------------------


def test_tenant_key_naming_its_own_tenant_works_and_another_is_403(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    assert ok(tenant.client.get("/v1/tenant", headers={"X-Tenant-ID": tenant.id}))["id"] == tenant.id
    assert ok(tenant.client.get("/v1/tenant"))["id"] == tenant.id
    for method, path, body in (
        ("GET", "/v1/customers", None),
        ("POST", "/v1/customers", {"display_name": "x"}),
        ("GET", "/v1/tenant", None),
    ):
        response = tenant.client.request(method, path, json=body, headers={"X-Tenant-ID": other_tenant.id})
        assert_problem(response, 403, "forbidden")
    # A tenant that does not exist is also refused with 403 for a tenant key (it may name only its own).
    assert_problem(tenant.client.get("/v1/customers", headers={"X-Tenant-ID": "no-such-tenant"}), 403)
    assert ok(tenant.client.get("/v1/customers"))["items"] == []
    assert ok(other_tenant.client.get("/v1/customers"))["items"] == []


def test_service_key_needs_x_tenant_id(tenant: Tenant, service_key: str) -> None:
    with tenant.new_client(Authorization=f"Bearer {service_key}") as service:
        assert_problem(service.get("/v1/customers"), 400, "bad-request")
        assert_problem(service.post("/v1/customers", json={"display_name": "x"}), 400, "bad-request")
        assert_problem(
            service.get("/v1/customers", headers={"X-Tenant-ID": "t-does-not-exist"}), 404, "not-found"
        )
        created = ok(
            service.post("/v1/customers", json={"display_name": "x"}, headers={"X-Tenant-ID": tenant.id}), 201
        )
    # What the service key wrote went to the tenant it named.
    assert [c["id"] for c in ok(tenant.client.get("/v1/customers"))["items"]] == [created["id"]]


INVALID_TENANT_IDS: list[str | bytes] = [
    "a b",
    "../x",
    "*",
    "",
    "-leading-dash",
    ".hidden",
    "a/b",
    "t1;DROP TABLE",
    "x" * 65,
    "t%00",
    "tenant\t2",
    "t\u00e9nant".encode(),
    b"t\xff",
]


@pytest.mark.parametrize("key_kind", ["service", "tenant"])
def test_invalid_x_tenant_id_is_400(tenant: Tenant, service_key: str, key_kind: str) -> None:
    key = service_key if key_kind == "service" else tenant.key
    bad = []
    with tenant.new_client(Authorization=f"Bearer {key}") as client:
        for value in INVALID_TENANT_IDS:
            for method, path, body in (("GET", "/v1/customers", None), ("POST", "/v1/customers", {"x": 1})):
                response = client.request(method, path, json=body, headers={"X-Tenant-ID": value})
                if (
                    response.status_code != 400
                    or not response.headers.get("content-type", "").startswith("application/problem+json")
                    or response.json().get("code") != "bad-request"
                ):
                    bad.append((value, method, response.status_code, response.text[:120]))
        # A header that smuggles another header: httpx refuses to send it; if it ever does, it is a 400.
        try:
            response = client.get("/v1/customers", headers={"X-Tenant-ID": f"{tenant.id}\r\nX-Injected: y"})
        except (httpx.LocalProtocolError, ValueError):
            pass
        else:
            assert_problem(response, 400)
        # 64 characters is the longest valid form.
        longest = client.get("/v1/customers", headers={"X-Tenant-ID": "a" * 64})
        assert longest.status_code == (404 if key_kind == "service" else 403), longest.text
    assert not bad, "\n".join(map(str, bad))
    assert ok(tenant.client.get("/v1/customers"))["items"] == []


def test_missing_or_unknown_keys_are_401(tenant: Tenant) -> None:
    real_prefix = tenant.key.split("_")[1]
    attempts: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer garbage"},
        {"Authorization": "Bearer smk_"},
        {"Authorization": "Bearer smk_0123456789abcdef_"},
        {"Authorization": "Bearer smk_0123456789abcdef_not-a-real-secret"},
        {"Authorization": f"Bearer smk_{real_prefix}_wrong-secret"},
        {"Authorization": f"Bearer {tenant.key}x"},
        {"Authorization": f"Bearer smk_{real_prefix}_" + "a" * 200},
        {"Authorization": f"Basic {tenant.key}"},
        {"X-API-Key": "garbage"},
        {"X-API-Key": ""},
        {"X-Tenant-ID": tenant.id},
    ]
    bad = []
    with tenant.new_client() as anonymous:
        for headers in attempts:
            for method, path, body in (
                ("GET", "/v1/customers", None),
                ("POST", "/v1/customers", {"display_name": "x"}),
                ("GET", "/v1/admin/tenants", None),
            ):
                response = anonymous.request(method, path, json=body, headers=headers)
                if response.status_code != 401 or response.json().get("code") != "unauthorized":
                    bad.append((headers, method, path, response.status_code))
                assert response.headers["content-type"].startswith("application/problem+json")
        # The same key works as a bearer token and as X-API-Key.
        assert ok(anonymous.get("/v1/tenant", headers={"X-API-Key": tenant.key}))["id"] == tenant.id
        assert (
            ok(anonymous.get("/v1/tenant", headers={"Authorization": f"bearer {tenant.key}"}))["id"]
            == tenant.id
        )
    assert not bad, "\n".join(map(str, bad))
    assert ok(tenant.client.get("/v1/customers"))["items"] == []


def test_admin_routes_refuse_tenant_and_service_keys(
    api: Any, tenant: Tenant, service_key: str, admin: httpx.Client
) -> None:
    name = ok(tenant.client.get("/v1/tenant"))["name"]
    keys_before = ok(admin.get("/v1/admin/keys"))
    tenants_before = ok(admin.get("/v1/admin/tenants"))
    own_key = next(k for k in keys_before if k["tenant_id"] == tenant.id)
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/v1/admin/organizations", None),
        ("POST", "/v1/admin/organizations", {"id": "evil-org", "name": "evil"}),
        ("GET", "/v1/admin/tenants", None),
        ("POST", "/v1/admin/tenants", {"id": "evil", "organization_id": "evil-org", "name": "evil"}),
        ("GET", f"/v1/admin/tenants/{tenant.id}", None),
        ("PATCH", f"/v1/admin/tenants/{tenant.id}", {"name": "renamed"}),
        ("GET", "/v1/admin/keys", None),
        ("POST", "/v1/admin/keys", {"kind": "admin", "name": "escalate"}),
        ("POST", "/v1/admin/keys", {"kind": "tenant", "name": "more", "tenant_id": tenant.id}),
        ("DELETE", f"/v1/admin/keys/{own_key['id']}", None),
    ]
    bad = []
    for key, headers in ((tenant.key, {}), (service_key, {}), (service_key, {"X-Tenant-ID": tenant.id})):
        with tenant.new_client(Authorization=f"Bearer {key}", **headers) as client:
            for method, path, body in calls:
                response = client.request(method, path, json=body)
                if response.status_code != 403 or response.json().get("code") != "forbidden":
                    bad.append((key[:8], headers, method, path, response.status_code))
    assert not bad, "\n".join(map(str, bad))
    assert ok(admin.get("/v1/admin/keys")) == keys_before
    assert ok(admin.get("/v1/admin/tenants")) == tenants_before
    assert ok(tenant.client.get("/v1/tenant"))["name"] == name
