"""The open-conversation lookup is answered from a per-process cache: every write must show at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import ServerProcess, cli_json, server_env

from .helpers import Tenant, inbound, ok, record_message, transition, wa_id

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
    cli_json(
        "tenants", "create", tenant, "--organization", tenant, "--name", tenant, "--create-organization",
        env=env, cwd=tmp_path,
    )  # fmt: skip
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
