"""Webhook deliveries end to end, on servers of the test's own with a fast retry schedule, on SQLite (the
embedded default) and PostgreSQL: retries until delivered, the signature, order per conversation, dead
letters and their retry, the attempt log, type filters, inactive and deleted subscriptions."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from domain.helpers import inbound, ok, wa_id
from harness import (
    Api,
    Server,
    ServerProcess,
    Tenant,
    clean_env,
    cli_json,
    create_database,
    drop_database,
    eventually,
    run_cli,
    server_env,
)
from webhook_receiver import Receiver

MAX_ATTEMPTS = 3
FAST = {
    "WEBHOOK_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
    "WEBHOOK_RETRY_BASE_SECONDS": "0.2",
    "WEBHOOK_RETRY_MAX_SECONDS": "0.4",
    # A long poll and sweep: deliveries go out because the dispatcher is woken (by the relay, a send
    # ending, the API) or a backoff ended, not because it happened to look.
    "WEBHOOK_POLL_SECONDS": "30",
    "WEBHOOK_SWEEP_SECONDS": "30",
    "WEBHOOK_TIMEOUT_SECONDS": "5",
    "EVENTS_SWEEP_SECONDS": "1",
    "CACHE_WARM_LIMIT": "0",
}


def _sqlite(workdir: Path) -> Iterator[Server]:
    env = server_env(workdir, f"sqlite+aiosqlite:///{workdir / 'sm.db'}", **FAST)
    process = ServerProcess("webhooks-sqlite", env, workdir)
    process.start()
    try:
        process.wait_for("/health/ready")
        admin_key = (workdir / "data" / "admin-key").read_text().strip()
        yield Server("sqlite", process, admin_key=admin_key, default_tenant_id="default")
    finally:
        assert process.stop(), process.log_tail()


def _postgres(workdir: Path) -> Iterator[Server]:
    # A database of its own: another server on the same one would send (and retry) these deliveries too.
    name = f"sm_test_{os.getpid()}_hooks_{uuid.uuid4().hex[:6]}"
    url = create_database(name)
    try:
        done = run_cli("migrate", env=clean_env(DATABASE_URL=url), cwd=workdir)
        assert done.returncode == 0, done.stderr
        env = server_env(workdir, url, **FAST)
        created = cli_json("keys", "create", "--kind", "admin", "--name", "hooks", env=env, cwd=workdir)
        process = ServerProcess("webhooks-postgres", env, workdir)
        process.start()
        try:
            process.wait_for("/health/ready")
            yield Server("postgres", process, admin_key=created["key"], default_tenant_id="")
        finally:
            assert process.stop(), process.log_tail()
    finally:
        drop_database(name)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def hook_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp(f"webhooks-{request.param}")
    if request.param == "sqlite":
        yield from _sqlite(workdir)
    else:
        request.getfixturevalue("postgres_available")
        yield from _postgres(workdir)


@pytest.fixture
def api(hook_server: Server) -> Iterator[Api]:
    with httpx.Client(base_url=hook_server.base_url, timeout=30.0) as client:
        yield Api(hook_server, client)


@pytest.fixture
def tenant_client(api: Api) -> Iterator[Callable[[], tuple[Tenant, httpx.Client]]]:
    clients: list[httpx.Client] = []

    def make() -> tuple[Tenant, httpx.Client]:
        tenant = api.new_tenant()
        client = httpx.Client(base_url=api.base_url, headers=tenant.headers, timeout=30.0)
        clients.append(client)
        return tenant, client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(tenant_client: Callable[[], tuple[Tenant, httpx.Client]]) -> httpx.Client:
    return tenant_client()[1]


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(
        fail_first: int = 0, *, failing: bool = False, answer: bytes = b"ok", delay: float = 0.0
    ) -> Receiver:
        receiver = Receiver(fail_first, failing=failing, answer=answer, delay=delay)
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        receiver.close()


def subscribe(client: httpx.Client, url: str, **fields: Any) -> dict[str, Any]:
    created: dict[str, Any] = ok(client.post("/v1/webhooks/subscriptions", json={"url": url, **fields}), 201)
    return created


def deliveries(client: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    page = ok(client.get("/v1/webhooks/deliveries", params={"limit": 500, **params}))
    items: list[dict[str, Any]] = page["items"]
    return items


def delivery(client: httpx.Client, delivery_id: str) -> dict[str, Any]:
    found: dict[str, Any] = ok(client.get(f"/v1/webhooks/deliveries/{delivery_id}"))
    return found


def new_customer(client: httpx.Client, name: str = "Ana") -> str:
    customer_id: str = ok(client.post("/v1/customers", json={"display_name": name}), 201)["id"]
    return customer_id


def test_a_failed_delivery_is_retried_signed_and_holds_its_conversation_in_order(
    client: httpx.Client, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers(fail_first=2)
    types = ["conversation.created", "message.recorded"]
    subscription = subscribe(client, receiver.url, event_types=types)
    wa = wa_id()
    first = inbound(client, wa, "bn-order")
    inbound(client, wa, "bn-order", text="second")
    inbound(client, wa, "bn-order", text="third")

    accepted = eventually(lambda: receiver.accepted() if len(receiver.accepted()) >= 4 else None)
    received = receiver.all()
    # Nothing of the conversation went out while its first delivery was failing, and all in seq order.
    assert [r.status for r in received] == [500, 500, 200, 200, 200, 200]
    assert [r.event["type"] for r in accepted] == [
        "conversation.created",
        "message.recorded",
        "message.recorded",
        "message.recorded",
    ]
    seqs = [r.seq for r in received]
    assert seqs == sorted(seqs)
    assert len({r.seq for r in accepted}) == 4
    for request in received:
        assert request.signed_by(subscription["secret"])
        assert not request.signed_by(subscription["secret"] + "x")
        assert request.headers["content-type"] == "application/json"
        assert request.headers["x-statemanager-event-type"] == request.event["type"]
        assert request.headers["x-statemanager-event-seq"] == str(request.seq)
        assert request.event["conversation_id"] == first["conversation_id"]

    head = received[0]
    log = delivery(client, head.headers["x-statemanager-delivery-id"])
    assert log["status"] == "delivered"
    assert log["attempts"] == 3
    assert log["event"] == head.event
    assert [(a["attempt"], a["status_code"]) for a in log["attempt_log"]] == [(1, 500), (2, 500), (3, 200)]
    assert log["attempt_log"][0]["error"] == "HTTP 500"
    assert log["attempt_log"][0]["response_excerpt"] == '{"error":"not now"}'
    assert all(a["duration_ms"] >= 0 for a in log["attempt_log"])
    # Each request carried its own delivery's ID; the same delivery three times, then three others.
    ids = [r.headers["x-statemanager-delivery-id"] for r in received]
    assert ids[:3] == [ids[0]] * 3
    assert len(set(ids)) == 4


def test_dead_after_the_last_attempt_listed_and_sent_again_by_retry(
    client: httpx.Client, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers(failing=True)
    subscription = subscribe(client, receiver.url)
    customer_id = new_customer(client)

    dead = eventually(lambda: deliveries(client, status="dead"))
    assert len(dead) == 1
    assert dead[0]["event_type"] == "customer.created"
    assert dead[0]["subscription_id"] == subscription["id"]
    assert dead[0]["attempts"] == MAX_ATTEMPTS
    assert dead[0]["last_status_code"] == 500
    assert dead[0]["next_attempt_at"] is None
    assert len(receiver.all()) == MAX_ATTEMPTS
    detail = delivery(client, dead[0]["id"])
    assert [a["status_code"] for a in detail["attempt_log"]] == [500] * MAX_ATTEMPTS

    # A dead delivery does not hold back later ones of the same customer.
    receiver.failing = False
    ok(client.patch(f"/v1/customers/{customer_id}", json={"display_name": "Ana B"}))
    updated = eventually(lambda: [r for r in receiver.accepted() if r.event["type"] == "customer.updated"])
    assert len(updated) == 1

    retried = ok(client.post(f"/v1/webhooks/deliveries/{dead[0]['id']}/retry"))
    assert retried["status"] in ("pending", "delivered")
    again = eventually(lambda: [r for r in receiver.accepted() if r.event["type"] == "customer.created"])
    assert again[0].headers["x-statemanager-delivery-id"] == dead[0]["id"]
    assert again[0].signed_by(subscription["secret"])
    done = eventually(lambda: (found := delivery(client, dead[0]["id"]))["status"] == "delivered" and found)
    assert [a["status_code"] for a in done["attempt_log"]] == [500] * MAX_ATTEMPTS + [200]
    assert deliveries(client, status="dead") == []
    # Only a dead delivery can be retried.
    conflict = client.post(f"/v1/webhooks/deliveries/{dead[0]['id']}/retry")
    assert conflict.status_code == 409
    assert conflict.json()["delivery_status"] == "delivered"


def test_every_dead_delivery_of_a_subscription_is_retried_at_once(
    client: httpx.Client, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers(failing=True)
    subscription = subscribe(client, receiver.url, event_types=["customer.created"])
    for name in ("a", "b", "c"):
        new_customer(client, name)
    eventually(lambda: len(deliveries(client, status="dead")) == 3)
    receiver.failing = False
    retried = ok(client.post("/v1/webhooks/dead/retry", json={"subscription_id": subscription["id"]}))
    assert retried == {"retried": 3}
    eventually(lambda: len(deliveries(client, status="delivered", subscription_id=subscription["id"])) == 3)
    assert sorted(r.event["payload"]["display_name"] for r in receiver.accepted()) == ["a", "b", "c"]


def test_types_filter_inactive_and_deleted_subscriptions(
    client: httpx.Client, receivers: Callable[..., Receiver]
) -> None:
    canary, created_only, paused, deleted = receivers(), receivers(), receivers(), receivers()
    subscribe(client, canary.url)
    only = subscribe(client, created_only.url, event_types=["customer.created"])
    pause = subscribe(client, paused.url)
    gone = subscribe(client, deleted.url)

    customer_id = new_customer(client)
    ok(client.patch(f"/v1/customers/{customer_id}", json={"display_name": "Ana B"}))
    eventually(
        lambda: len(canary.accepted()) == 2 and len(paused.accepted()) == 2 and len(deleted.accepted()) == 2
    )
    assert [r.event["type"] for r in created_only.accepted()] == ["customer.created"]
    assert [r.event["type"] for r in paused.accepted()] == ["customer.created", "customer.updated"]

    ok(client.patch(f"/v1/webhooks/subscriptions/{pause['id']}", json={"active": False}))
    assert client.delete(f"/v1/webhooks/subscriptions/{gone['id']}").status_code == 204
    new_customer(client, "Bea")
    third = eventually(
        lambda: [r for r in canary.accepted() if r.event["payload"].get("display_name") == "Bea"]
    )
    eventually(lambda: len(created_only.accepted()) == 2)
    time.sleep(1.0)  # a delivery to the others, if one had been written, would have gone by now
    assert len(paused.all()) == 2
    assert len(deleted.all()) == 2
    # Nothing was even written for them: deliveries are written when the event is numbered.
    held = deliveries(client, subscription_id=pause["id"])
    assert len(held) == 2
    assert all(d["event_seq"] < third[0].seq for d in held)
    assert deliveries(client, subscription_id=gone["id"]) == []
    assert len(deliveries(client, subscription_id=only["id"])) == 2


def test_an_inactive_subscription_holds_its_pending_deliveries_until_reactivated(
    client: httpx.Client, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers(failing=True)
    subscription = subscribe(client, receiver.url, event_types=["customer.created"])
    new_customer(client, "first")
    eventually(lambda: receiver.all())
    ok(client.patch(f"/v1/webhooks/subscriptions/{subscription['id']}", json={"active": False}))
    receiver.failing = False
    time.sleep(0.5)  # an attempt under way when it was paused ends
    seen = len(receiver.all())
    time.sleep(1.0)
    assert len(receiver.all()) == seen  # nothing is sent while it is inactive
    (held,) = deliveries(client, subscription_id=subscription["id"])
    ok(client.patch(f"/v1/webhooks/subscriptions/{subscription['id']}", json={"active": True}))
    if held["status"] == "pending":  # paused before its last attempt (the usual case)
        eventually(lambda: receiver.accepted())
        eventually(lambda: deliveries(client, subscription_id=subscription["id"])[0]["status"] == "delivered")


def test_another_tenants_subscription_never_gets_this_tenants_events(
    tenant_client: Callable[[], tuple[Tenant, httpx.Client]], receivers: Callable[..., Receiver]
) -> None:
    (_, mine), (_, theirs) = tenant_client(), tenant_client()
    my_receiver, their_receiver = receivers(), receivers()
    subscribe(mine, my_receiver.url)
    subscribe(theirs, their_receiver.url)
    new_customer(mine)
    eventually(lambda: my_receiver.accepted())
    time.sleep(1.0)
    assert their_receiver.all() == []
    assert deliveries(theirs) == []
    delivery_id = deliveries(mine)[0]["id"]
    assert theirs.get(f"/v1/webhooks/deliveries/{delivery_id}").status_code == 404
    assert theirs.post(f"/v1/webhooks/deliveries/{delivery_id}/retry").status_code == 404


def test_an_answer_that_cannot_be_stored_as_text_is_logged_readably(
    client: httpx.Client, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers(answer=b"ok\x00\xff" + b"x" * 5000)
    subscribe(client, receiver.url)
    new_customer(client)
    (done,) = eventually(lambda: deliveries(client, status="delivered"))
    (attempt,) = delivery(client, done["id"])["attempt_log"]
    assert attempt["response_excerpt"] == "ok\ufffd\ufffd" + "x" * 1020


def test_different_conversations_go_concurrently_and_one_conversation_one_at_a_time(
    client: httpx.Client, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers(delay=1.0)
    subscribe(client, receiver.url, event_types=["customer.created", "customer.updated"])
    customers = [new_customer(client, name) for name in ("a", "b", "c")]
    ok(client.patch(f"/v1/customers/{customers[0]}", json={"display_name": "a2"}))
    received = eventually(lambda: receiver.accepted() if len(receiver.accepted()) == 4 else None)
    created = [r.at for r in received if r.event["type"] == "customer.created"]
    assert max(created) - min(created) < 0.8  # three customers: sent together, not one after another
    first = next(r.at for r in received if r.event["payload"].get("display_name") == "a")
    update = next(r.at for r in received if r.event["type"] == "customer.updated")
    assert update - first >= 0.9  # the same customer: only once the first was answered
