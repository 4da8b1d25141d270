"""Webhook subscriptions over the API, on every backend: the subscription resource (the secret shown
once), bad input as 4xx problems, a signed delivery and its log, and the wall between tenants.
Retries, order and dead letters need a fast retry schedule: tests/test_webhook_delivery.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from harness import eventually
from webhook_receiver import Receiver

from .helpers import Tenant, assert_problem, inbound, list_all, ok, wa_id

SUBSCRIPTIONS = "/v1/webhooks/subscriptions"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


def subscribe(tenant: Tenant, **fields: Any) -> dict[str, Any]:
    fields.setdefault("url", "http://127.0.0.1:9/hook")
    created: dict[str, Any] = ok(tenant.client.post(SUBSCRIPTIONS, json=fields), 201)
    return created


def test_the_secret_is_shown_on_creation_and_rotation_only(tenant: Tenant) -> None:
    response = tenant.client.post(
        SUBSCRIPTIONS,
        json={"url": "https://example.com/hooks", "description": "crm", "event_types": ["message.recorded"]},
    )
    created = ok(response, 201)
    assert response.headers["etag"] == '"1"'
    assert created["secret"].startswith("whsec_")
    assert len(created["secret"]) > 40
    assert created["secret_hint"] == "whsec_…" + created["secret"][-4:]
    assert created["event_types"] == ["message.recorded"]
    assert created["active"] is True
    assert created["version"] == 1

    path = f"{SUBSCRIPTIONS}/{created['id']}"
    read = ok(tenant.client.get(path))
    assert "secret" not in read
    assert read == {key: value for key, value in created.items() if key != "secret"}
    listed = list_all(tenant.client, SUBSCRIPTIONS, limit=10)
    assert listed == [read]
    assert created["secret"] not in tenant.client.get(SUBSCRIPTIONS).text

    rotated = ok(tenant.client.post(f"{path}/rotate-secret"))
    assert rotated["secret"] != created["secret"]
    assert rotated["secret"].startswith("whsec_")
    assert rotated["version"] == 2
    assert ok(tenant.client.get(path))["secret_hint"] == "whsec_…" + rotated["secret"][-4:]
    chosen = "my-own-secret-0123456789"
    given = ok(
        tenant.client.post(f"{path}/rotate-secret", json={"secret": chosen}, headers={"If-Match": '"2"'})
    )
    assert given["secret"] == chosen
    assert given["secret_hint"] == "…6789"
    assert tenant.client.post(f"{path}/rotate-secret", headers={"If-Match": '"2"'}).status_code == 412


def test_update_with_if_match_and_delete(tenant: Tenant) -> None:
    created = subscribe(tenant, event_types=["customer.created", "customer.created", "customer.updated"])
    assert created["event_types"] == ["customer.created", "customer.updated"]
    path = f"{SUBSCRIPTIONS}/{created['id']}"

    response = tenant.client.patch(
        path, json={"active": False, "event_types": [], "description": "paused"}, headers={"If-Match": '"1"'}
    )
    updated = ok(response)
    assert response.headers["etag"] == '"2"'
    assert (updated["active"], updated["event_types"], updated["description"]) == (False, [], "paused")
    stale = tenant.client.patch(path, json={"active": True}, headers={"If-Match": '"1"'})
    assert assert_problem(stale, 412)["current_version"] == 2
    assert_problem(tenant.client.patch(path, json={"active": True}, headers={"If-Match": "nope"}), 400)
    cleared = ok(tenant.client.patch(path, json={"description": None, "url": "https://example.org/x"}))
    assert (cleared["description"], cleared["url"], cleared["version"]) == (None, "https://example.org/x", 3)

    assert_problem(tenant.client.delete(path, headers={"If-Match": '"2"'}), 412)
    assert tenant.client.delete(path).status_code == 204
    assert_problem(tenant.client.get(path), 404)
    assert_problem(tenant.client.delete(path), 404)
    assert_problem(tenant.client.patch(path, json={"active": True}), 404)
    assert ok(tenant.client.get(SUBSCRIPTIONS))["items"] == []


@pytest.mark.parametrize(
    "body",
    [
        {"url": "ftp://example.com/x"},
        {"url": "https://user:pw@example.com/x"},
        {"url": "https:///nohost"},
        {"url": "https://example.com/x#fragment"},
        {"url": "https://example.com:99999/x"},
        {"url": "https://example.com/" + "a" * 2100},
        {"url": "https://exa mple.com/"},
        {"url": "not a url"},
        {"url": 5},
        {},
        {"url": "https://example.com/", "event_types": ["no.such.type"]},
        {"url": "https://example.com/", "event_types": "message.recorded"},
        {"url": "https://example.com/", "secret": "short"},
        {"url": "https://example.com/", "secret": "has a space in it, see"},
        {"url": "https://example.com/", "unknown": 1},
        {"url": "https://example.com/", "description": "d" * 501},
    ],
)
def test_bad_subscriptions_are_422_and_create_nothing(tenant: Tenant, body: dict[str, Any]) -> None:
    assert_problem(tenant.client.post(SUBSCRIPTIONS, json=body), 422)
    assert ok(tenant.client.get(SUBSCRIPTIONS))["items"] == []


def test_bad_queries_and_ids_are_4xx_problems(tenant: Tenant) -> None:
    created = subscribe(tenant)
    client = tenant.client
    assert_problem(client.patch(f"{SUBSCRIPTIONS}/{created['id']}", json={"url": "gopher://x"}), 422)
    assert_problem(client.get("/v1/webhooks/deliveries", params={"status": "lost"}), 422)
    assert_problem(client.get("/v1/webhooks/deliveries", params={"subscription_id": "x"}), 422)
    assert_problem(client.get("/v1/webhooks/deliveries", params={"limit": 0}), 422)
    assert_problem(client.get("/v1/webhooks/deliveries", params={"cursor": "!!"}), 400)
    assert_problem(client.get("/v1/webhooks/deliveries/not-a-uuid"), 422)
    unknown = "00000000-0000-4000-8000-000000000000"
    assert_problem(client.get(f"/v1/webhooks/deliveries/{unknown}"), 404)
    assert_problem(client.post(f"/v1/webhooks/deliveries/{unknown}/retry"), 404)
    assert_problem(client.post("/v1/webhooks/dead/retry", json={"subscription_id": unknown}), 404)
    assert_problem(client.post(f"{SUBSCRIPTIONS}/{unknown}/rotate-secret"), 404)
    assert_problem(
        client.post(SUBSCRIPTIONS, content=b"{not json", headers={"content-type": "application/json"}), 400
    )


def test_events_are_delivered_signed_and_logged(tenant: Tenant, receiver: Receiver) -> None:
    subscription = subscribe(tenant, url=receiver.url)
    recorded = inbound(tenant.client, wa_id(), "bn-hooks")

    received = eventually(lambda: receiver.accepted() if len(receiver.accepted()) >= 3 else None)
    assert sorted(r.event["type"] for r in received) == [
        "conversation.created",
        "customer.created",
        "message.recorded",
    ]
    for request in received:
        assert request.signed_by(subscription["secret"])
        assert request.event["tenant_id"] == tenant.id
        assert request.event["customer_id"] == recorded["customer_id"]

    def delivered() -> list[dict[str, Any]] | None:
        items: list[dict[str, Any]] = ok(
            tenant.client.get("/v1/webhooks/deliveries", params={"status": "delivered"})
        )["items"]
        return items if len(items) == 3 else None

    logged = eventually(delivered)
    assert {d["subscription_id"] for d in logged} == {subscription["id"]}
    assert {d["attempts"] for d in logged} == {1}
    assert sorted(d["event_seq"] for d in logged) == sorted(r.seq for r in received)
    keys = {d["event_type"]: d["ordering_key"] for d in logged}
    assert keys == {
        "customer.created": f"customer:{recorded['customer_id']}",
        "conversation.created": f"conversation:{recorded['conversation_id']}",
        "message.recorded": f"conversation:{recorded['conversation_id']}",
    }
    paged = list_all(tenant.client, "/v1/webhooks/deliveries", limit=1, subscription_id=subscription["id"])
    assert [d["id"] for d in paged] == [d["id"] for d in logged]  # newest first, page by page
    detail = ok(tenant.client.get(f"/v1/webhooks/deliveries/{logged[0]['id']}"))
    assert detail["event"]["seq"] == logged[0]["event_seq"]
    (attempt,) = detail["attempt_log"]
    assert (attempt["attempt"], attempt["status_code"], attempt["error"]) == (1, 200, None)
    assert attempt["response_excerpt"] == "ok"
    assert_problem(tenant.client.post(f"/v1/webhooks/deliveries/{logged[0]['id']}/retry"), 409)
    assert ok(tenant.client.get("/v1/webhooks/deliveries", params={"status": "dead"}))["items"] == []


def test_another_tenant_neither_sees_nor_receives(
    tenant: Tenant, other_tenant: Tenant, receiver: Receiver
) -> None:
    theirs = Receiver()
    try:
        mine = subscribe(tenant, url=receiver.url)
        subscribe(other_tenant, url=theirs.url)
        inbound(tenant.client, wa_id(), "bn-hooks")
        eventually(lambda: len(receiver.accepted()) >= 3)
        delivery = eventually(lambda: ok(tenant.client.get("/v1/webhooks/deliveries"))["items"])[0]

        other = other_tenant.client
        path = f"{SUBSCRIPTIONS}/{mine['id']}"
        assert_problem(other.get(path), 404)
        assert_problem(other.patch(path, json={"active": False}), 404)
        assert_problem(other.post(f"{path}/rotate-secret"), 404)
        assert_problem(other.delete(path), 404)
        assert_problem(other.get(f"/v1/webhooks/deliveries/{delivery['id']}"), 404)
        assert_problem(other.post(f"/v1/webhooks/deliveries/{delivery['id']}/retry"), 404)
        assert_problem(other.post("/v1/webhooks/dead/retry", json={"subscription_id": mine["id"]}), 404)
        assert ok(other.get("/v1/webhooks/deliveries"))["items"] == []
        assert mine["id"] not in [s["id"] for s in ok(other.get(SUBSCRIPTIONS))["items"]]
        assert theirs.all() == []
        assert ok(tenant.client.get(path))["active"] is True
    finally:
        theirs.close()
