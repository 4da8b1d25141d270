"""Hot lookups are answered from the cache (local tier, and Redis on the PostgreSQL backend): every write
must show in the next lookup, whichever lookup it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import ServerProcess, cli_json, create_tenant, server_env

from .helpers import Tenant, genesys_id, inbound, ok, record_message, transition, wa_id, wamid

BUSINESS = "bn-1"


def lookup(client: httpx.Client, wa: str, status: int = 200) -> dict[str, Any]:
    response = client.get("/v1/conversations/open", params={"wa_id": wa, "business_number_id": BUSINESS})
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    if status == 200:
        assert response.headers["ETag"] == f'"{body["version"]}"'
    return body


def test_every_write_shows_in_the_next_lookup(tenant: Tenant) -> None:
    client = tenant.client
    wa = wa_id()
    first = inbound(client, wa, BUSINESS, status=201)
    conversation_id = first["conversation_id"]
    seen = lookup(client, wa)
    assert lookup(client, wa) == seen  # answered from the cache now

    assert transition(client, conversation_id, "active", "agent joined").status_code == 200
    after_transition = lookup(client, wa)
    assert after_transition["state"] == "active"
    assert after_transition["version"] > seen["version"]

    record_message(client, conversation_id, genesys_message_id="g-" + wa)
    after_outbound = lookup(client, wa)
    assert after_outbound["last_outbound_at"] is not None
    assert after_outbound["version"] > after_transition["version"]

    inbound(client, wa, BUSINESS, status=201)  # appended (on PostgreSQL by the stored function)
    after_inbound = lookup(client, wa)
    assert after_inbound["version"] > after_outbound["version"]

    ok(client.patch(f"/v1/conversations/{conversation_id}", json={"genesys_conversation_id": "gc-" + wa}))
    assert lookup(client, wa)["genesys_conversation_id"] == "gc-" + wa

    assert transition(client, conversation_id, "closed", "resolved").status_code == 200
    lookup(client, wa, status=404)
    reopened = inbound(client, wa, BUSINESS, status=201)
    assert lookup(client, wa)["id"] == reopened["conversation_id"] != conversation_id


def twice(client: httpx.Client, path: str, **params: Any) -> dict[str, Any]:
    """A lookup asked twice (the second from the cache): both answers must agree."""
    first = ok(client.get(path, params=params))
    assert ok(client.get(path, params=params)) == first
    return first


def test_every_cached_lookup_shows_each_write(tenant: Tenant) -> None:
    client = tenant.client
    wa, the_wamid, gc = wa_id(), wamid(), genesys_id()
    conversation_id = inbound(client, wa, BUSINESS, wamid_=the_wamid, status=201)["conversation_id"]
    by_wamid = f"/v1/messages/by-wamid/{the_wamid}"
    customer_path = f"/v1/customers/by-identity/whatsapp/{wa}"
    context_path = f"/v1/conversations/{conversation_id}/agent-context"

    # Message by wamid and by Genesys ID: linking and receipts.
    assert twice(client, by_wamid)["genesys_message_id"] is None
    message_id = twice(client, by_wamid)["id"]
    agent_before = twice(client, context_path)
    ok(
        client.post(
            "/v1/correlations", json={"whatsapp_message_id": the_wamid, "genesys_conversation_id": gc}
        )
    )
    reply = record_message(client, conversation_id, genesys_message_id="gm-" + wa)
    by_genesys_message = f"/v1/messages/by-genesys-id/gm-{wa}"
    assert twice(client, by_genesys_message)["status"] == "queued"
    ok(
        client.post(
            "/v1/receipts",
            json={
                "receipts": [
                    {"genesys_message_id": "gm-" + wa, "status": "read", "at": "2026-04-01T08:00:00Z"}
                ]
            },
        )
    )
    assert twice(client, by_genesys_message)["status"] == "read"
    ok(client.post(f"/v1/messages/{reply['id']}/link", json={"wamid": "wamid.reply-" + wa}))
    assert twice(client, f"/v1/messages/by-wamid/wamid.reply-{wa}")["id"] == reply["id"]
    assert twice(client, by_genesys_message)["wamid"] == "wamid.reply-" + wa
    assert twice(client, by_wamid)["id"] == message_id

    # Conversation by Genesys ID: correlation (above), then a state change.
    by_genesys = f"/v1/conversations/by-genesys-id/{gc}"
    assert twice(client, by_genesys)["id"] == conversation_id
    assert transition(client, conversation_id, "active").status_code == 200
    assert twice(client, by_genesys)["state"] == "active"

    # Customer by identity: profile and identities.
    customer = twice(client, customer_path)
    ok(client.patch(f"/v1/customers/{customer['id']}", json={"display_name": "Ana"}))
    assert twice(client, customer_path)["display_name"] == "Ana"
    email = f"{wa}@example.com"
    ok(
        client.post(
            f"/v1/customers/{customer['id']}/identities", json={"channel": "email", "external_id": email}
        ),
        201,
    )
    assert email in {i["external_id"] for i in twice(client, customer_path)["identities"]}

    # Agent context: every part of it.
    agent = twice(client, context_path)
    assert (
        agent["conversation"]["genesys_conversation_id"]
        == gc
        != agent_before["conversation"]["genesys_conversation_id"]
    )
    assert agent["customer"]["display_name"] == "Ana"
    assert [m["status"] for m in agent["messages"]][-1] == "read"
    ok(
        client.post(
            f"/v1/conversations/{conversation_id}/participants",
            json={"role": "agent", "participant_ref": "a-1"},
        ),
        201,
    )
    assert [p["participant_ref"] for p in twice(client, context_path)["participants"]] == ["a-1"]
    ok(client.patch(f"/v1/conversations/{conversation_id}/context", json={"values": {"topic": "refund"}}))
    assert twice(client, context_path)["conversation_context"]["values"] == {"topic": "refund"}
    ok(client.patch(f"/v1/customers/{customer['id']}/context", json={"values": {"tier": "gold"}}))
    assert twice(client, context_path)["customer_context"]["values"] == {"tier": "gold"}
    inbound(client, wa, BUSINESS, status=201)
    assert len(twice(client, context_path)["messages"]) == 3

    # Closed conversations leave the cache: every lookup of them reads the database.
    assert transition(client, conversation_id, "closed", "resolved").status_code == 200
    assert twice(client, by_genesys)["state"] == "closed"
    assert twice(client, context_path)["conversation"]["state"] == "closed"
    assert twice(client, by_wamid)["id"] == message_id


def loads(admin: httpx.Client, cache: str) -> int:
    found: int = ok(admin.get("/v1/admin/cache"))["caches"][cache]["loads"]["found"]
    return found


def test_open_conversations_are_kept_and_closed_ones_leave_the_cache(
    tenant: Tenant, admin: httpx.Client
) -> None:
    client, gc = tenant.client, genesys_id()
    the_wamid = wamid()
    conversation_id = inbound(client, wa_id(), BUSINESS, wamid_=the_wamid, status=201)["conversation_id"]
    ok(
        client.post(
            "/v1/correlations", json={"whatsapp_message_id": the_wamid, "genesys_conversation_id": gc}
        )
    )
    lookups = {
        "conversation_by_genesys_id": f"/v1/conversations/by-genesys-id/{gc}",
        "message_by_wamid": f"/v1/messages/by-wamid/{the_wamid}",
        "agent_context": f"/v1/conversations/{conversation_id}/agent-context",
    }
    for cache, path in lookups.items():
        before = loads(admin, cache)
        for _ in range(3):
            ok(client.get(path))
        assert loads(admin, cache) == before + 1, cache  # loaded once, then answered from the cache
    assert transition(client, conversation_id, "closed", "resolved").status_code == 200
    for cache, path in lookups.items():
        before = loads(admin, cache)
        for _ in range(3):
            ok(client.get(path))
        assert loads(admin, cache) == before + 3, cache  # never kept


@pytest.mark.parametrize("backend", ["postgres-with-redis", "sqlite-without-redis"])
def test_two_workers_never_answer_from_a_stale_cache(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Each worker caches lookups; a write through one must reach the other's cache (through Redis), or
    the cache must be off (several workers and no Redis)."""
    if backend == "postgres-with-redis":
        redis_url = request.getfixturevalue("redis_url")
        if redis_url is None:
            pytest.skip("needs Redis")
        env = server_env(tmp_path, request.getfixturevalue("postgres_url"), REDIS_URL=redis_url)
    else:
        env = server_env(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'sm.db'}")
    tenant = f"cache-{tmp_path.name[-8:]}".replace("_", "-")
    created = cli_json("keys", "create", "--kind", "admin", "--name", "cache test", env=env, cwd=tmp_path)
    create_tenant(tenant, env=env, cwd=tmp_path)
    process = ServerProcess("cache", env, tmp_path, serve_args=("--workers", "2"))
    process.start()
    try:
        process.wait_for("/health/ready")
        headers = {"Authorization": f"Bearer {created['key']}", "X-Tenant-ID": tenant}
        with httpx.Client(base_url=process.base_url, headers=headers, timeout=30) as client:
            wa = wa_id()
            conversation_id = inbound(client, wa, BUSINESS, status=201)["conversation_id"]
            for state in ("active", "waiting", "active", "waiting"):
                # A new connection per request, so that both workers answer (and cache) it.
                for _ in range(16):
                    with httpx.Client(base_url=process.base_url, headers=headers, timeout=30) as fresh:
                        lookup(fresh, wa)
                assert transition(client, conversation_id, state).status_code == 200
                for _ in range(16):
                    with httpx.Client(base_url=process.base_url, headers=headers, timeout=30) as fresh:
                        assert lookup(fresh, wa)["state"] == state
    finally:
        assert process.stop(), process.log_tail()


def test_a_new_message_drops_only_what_it_changed(tenant: Tenant, admin: httpx.Client) -> None:
    """Tags are narrow: another message with the same profile name leaves the customer's profile and the
    conversation's other messages cached; a new profile name drops the profile."""
    client, wa, first = tenant.client, wa_id(), wamid()
    inbound(client, wa, BUSINESS, wamid_=first, status=201, profile_name="Ana")
    cached = {
        "customer_by_identity": f"/v1/customers/by-identity/whatsapp/{wa}",
        "message_by_wamid": f"/v1/messages/by-wamid/{first}",
    }
    before = {cache: loads(admin, cache) for cache in cached}
    for path in cached.values():
        ok(client.get(path))
    inbound(client, wa, BUSINESS, status=201, profile_name="Ana")
    for path in cached.values():
        ok(client.get(path))
    assert {cache: loads(admin, cache) - before[cache] for cache in cached} == dict.fromkeys(cached, 1)

    inbound(client, wa, BUSINESS, status=201, profile_name="Ana Maria")
    assert ok(client.get(cached["customer_by_identity"]))["display_name"] == "Ana Maria"
    assert loads(admin, "customer_by_identity") == before["customer_by_identity"] + 2


def test_the_legacy_mapping_is_cached_and_shows_each_write(tenant: Tenant, admin: httpx.Client) -> None:
    """`GET /state/mapping/:waId`, which today's callers ask for every message."""
    client, wa = tenant.client, wa_id()
    first = wamid()
    conversation_id = inbound(client, wa, BUSINESS, wamid_=first, status=201, profile_name="Ana")[
        "conversation_id"
    ]
    before = loads(admin, "legacy_mapping")
    for _ in range(3):
        assert ok(client.get(f"/state/mapping/{wa}"))["last_message_id"] == first
    assert loads(admin, "legacy_mapping") == before + 1
    second = wamid()
    inbound(client, wa, BUSINESS, wamid_=second, status=201, profile_name="Ana Maria")
    row = ok(client.get(f"/state/mapping/{wa}"))
    assert (row["last_message_id"], row["contact_name"]) == (second, "Ana Maria")
    assert transition(client, conversation_id, "closed").status_code == 200
    assert client.get(f"/state/mapping/{wa}").status_code == 404
