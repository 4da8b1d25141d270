"""The cache under real servers on PostgreSQL and a Redis of the test's own: Redis stopped and started in
the middle of traffic, and two instances sharing one Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from domain.helpers import genesys_id, inbound, ok, wa_id, wamid
from harness import RedisServer, ServerProcess, cli_json, create_tenant, eventually, server_env

BUSINESS = "bn-cache"
AGREEMENT_BOUND_SECONDS = 1.0  # docs/design.md, "Lookup cache"


def start_servers(
    workdir: Path, postgres_url: str, redis_url: str, count: int
) -> tuple[list[ServerProcess], dict[str, str]]:
    # No warming: the session's database holds other tests' conversations, and warming them in the
    # background would move the counters these tests read.
    env = server_env(
        workdir, postgres_url, REDIS_URL=redis_url, CACHE_BREAKER_SECONDS="0.5", CACHE_WARM_LIMIT="0"
    )
    tenant = f"cache-{workdir.name[-10:]}".replace("_", "-").lower()
    admin = cli_json("keys", "create", "--kind", "admin", "--name", "cache test", env=env, cwd=workdir)
    create_tenant(tenant, env=env, cwd=workdir)
    servers = [ServerProcess(f"cache-{n}", env, workdir) for n in range(count)]
    for server in servers:
        server.start()
    for server in servers:
        server.wait_for("/health/ready")
    return servers, {"Authorization": f"Bearer {admin['key']}", "X-Tenant-ID": tenant}


@pytest.fixture
def servers(request: pytest.FixtureRequest, tmp_path: Path, own_redis: RedisServer) -> Iterator[Any]:
    started: list[ServerProcess] = []

    def start(count: int) -> tuple[list[ServerProcess], dict[str, str]]:
        found, headers = start_servers(
            tmp_path, request.getfixturevalue("postgres_url"), own_redis.url, count
        )
        started.extend(found)
        return found, headers

    yield start
    for server in started:
        assert server.stop(), server.log_tail()


def open_conversation(client: httpx.Client) -> tuple[str, str, str]:
    """A conversation with a Genesys ID: (WhatsApp ID, conversation ID, Genesys ID)."""
    wa, first, gc = wa_id(), wamid(), genesys_id()
    conversation_id = inbound(client, wa, BUSINESS, wamid_=first, status=201)["conversation_id"]
    ok(client.post("/v1/correlations", json={"whatsapp_message_id": first, "genesys_conversation_id": gc}))
    return wa, conversation_id, gc


def lookups(wa: str, conversation_id: str, gc: str) -> list[tuple[str, dict[str, str]]]:
    return [
        ("/v1/conversations/open", {"wa_id": wa, "business_number_id": BUSINESS}),
        (f"/v1/conversations/by-genesys-id/{gc}", {}),
        (f"/v1/conversations/{conversation_id}/agent-context", {}),
    ]


def conversation_of(path: str, body: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = body["conversation"] if path.endswith("/agent-context") else body
    return found


def test_redis_stopped_and_started_in_the_middle_of_traffic(servers: Any, own_redis: RedisServer) -> None:
    """No request fails and none is answered older than a write acknowledged before it was sent."""
    (server,), headers = servers(1)
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as client:
        wa, conversation_id, gc = open_conversation(client)
        acknowledged = [0]  # the metadata counter of the last acknowledged write
        problems: list[str] = []
        answers = [0]
        stop = threading.Event()

        def read() -> None:
            with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as reader:
                while not stop.is_set():
                    for path, params in lookups(wa, conversation_id, gc):
                        floor = acknowledged[0]
                        response = reader.get(path, params=params)
                        if response.status_code != 200:
                            problems.append(f"{path}: {response.status_code} {response.text[:200]}")
                            continue
                        seen = conversation_of(path, response.json())["metadata"].get("n", 0)
                        if seen < floor:
                            problems.append(f"{path}: stale, n={seen} after n={floor} was acknowledged")
                        answers[0] += 1

        readers = [threading.Thread(target=read) for _ in range(3)]
        for thread in readers:
            thread.start()
        try:
            for n in range(1, 91):
                if n == 30:
                    own_redis.stop()
                    eventually(lambda: client.get("/health/ready").json()["status"] == "degraded")
                if n == 60:
                    own_redis.start()
                    eventually(lambda: client.get("/health/ready").json()["status"] == "ok")
                response = client.patch(f"/v1/conversations/{conversation_id}", json={"metadata": {"n": n}})
                assert response.status_code == 200, response.text
                acknowledged[0] = n
                for path, params in lookups(wa, conversation_id, gc):
                    body = ok(client.get(path, params=params))
                    assert conversation_of(path, body)["metadata"]["n"] == n, path
        finally:
            stop.set()
            for thread in readers:
                thread.join()
        assert problems == []
        assert answers[0] > 100
        stats = ok(client.get("/v1/admin/cache"))
        assert stats["status"] == "ok"
        assert stats["caches"]["open_conversation"]["hits_local"] > 0


def test_two_instances_on_one_redis_agree(servers: Any) -> None:
    """A write through one instance is seen through the other; an entry one loaded, the other reads from
    Redis."""
    (one, two), headers = servers(2)
    with (
        httpx.Client(base_url=one.base_url, headers=headers, timeout=30) as first,
        httpx.Client(base_url=two.base_url, headers=headers, timeout=30) as second,
    ):
        wa, conversation_id, gc = open_conversation(first)
        for path, params in lookups(wa, conversation_id, gc):
            ok(first.get(path, params=params))  # loaded by the first, into both tiers
        redis_hits = ok(second.get("/v1/admin/cache"))["caches"]["conversation_by_genesys_id"]["hits_redis"]
        for path, params in lookups(wa, conversation_id, gc):
            ok(second.get(path, params=params))
        after = ok(second.get("/v1/admin/cache"))["caches"]["conversation_by_genesys_id"]["hits_redis"]
        assert after == redis_hits + 1

        slowest = 0.0
        for n in range(1, 21):
            writer, reader = (first, second) if n % 2 else (second, first)
            response = writer.patch(f"/v1/conversations/{conversation_id}", json={"metadata": {"n": n}})
            assert response.status_code == 200, response.text
            written = time.monotonic()
            for path, params in lookups(wa, conversation_id, gc):
                while conversation_of(path, ok(reader.get(path, params=params)))["metadata"].get("n") != n:
                    assert time.monotonic() - written < AGREEMENT_BOUND_SECONDS, f"{path} still old"
                    time.sleep(0.001)
            slowest = max(slowest, time.monotonic() - written)
        assert slowest < AGREEMENT_BOUND_SECONDS
