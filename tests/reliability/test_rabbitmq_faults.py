"""The queue consumers through failures, on the real RabbitMQ: a dropped connection, a second instance, a
killed instance, and output that a process committed but never published.

Each test runs its own servers on the embedded default, with their own queues; the consumers reach RabbitMQ
through a TCP relay that the test can cut.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from harness import Broker, ServerProcess, TcpProxy, eventually, queue_env, server_env

CONSUMED = ("INBOUND_QUEUE", "STATUS_QUEUE", "OUTBOUND_QUEUE", "GENESYS_STATUS_QUEUE", "CORRELATION_QUEUE")


def inbound(customer: str, wamid: str) -> dict[str, Any]:
    # No tenantId: the default tenant, as a single-tenant deployment's producer sends it.
    return {
        "wamid": wamid,
        "wa_id": customer,
        "contact_name": "Unknown",
        "timestamp": "1767225600",
        "message_text": "hi",
        "media_url": None,
        "phone_number_id": "15550001234",
        "display_phone_number": "+1 555 000 1234",
    }


def queue_states(server: ServerProcess) -> set[str]:
    checks = httpx.get(f"{server.base_url}/health/ready", timeout=5).json()["checks"]["queues"]
    return {queue["state"] for queue in checks["queues"].values()}


def outbox_settled(database: Path) -> bool:
    """Every output row is marked published. Until then the broker's confirm of the last one may still be
    on its way, and cutting the connection (or killing the process) there publishes it again, by design
    (at least once): the tests below wait for this so that a second copy would be a real fault."""
    with sqlite3.connect(database) as db:
        return db.execute("SELECT count(*) FROM broker_outbox WHERE published_at IS NULL").fetchone() == (0,)


def wamids(bodies: list[dict[str, Any]]) -> list[str]:
    return [body["wamid"] for body in bodies]


@pytest.fixture
def queues(rabbitmq: str) -> Iterator[tuple[str, dict[str, str], Broker]]:
    """This test's own queue names, a broker client on them, and the queues deleted afterwards."""
    env = queue_env(f"smtest-{os.getpid()}-{uuid.uuid4().hex[:8]}.", rabbitmq)
    broker = Broker(env, rabbitmq)
    try:
        yield rabbitmq, env, broker
    finally:
        broker.delete_queues()
        broker.close()


@pytest.fixture
def proxy(rabbitmq: str) -> Iterator[TcpProxy]:
    parts = urlsplit(rabbitmq)
    relay = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    try:
        yield relay
    finally:
        relay.close()


def via(proxy: TcpProxy, url: str) -> str:
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    return urlunsplit((parts.scheme, f"{credentials}@127.0.0.1:{proxy.port}", parts.path, "", ""))


def start(name: str, workdir: Path, database: Path, queue_settings: dict[str, str]) -> ServerProcess:
    env = server_env(workdir / name, f"sqlite+aiosqlite:///{database}", **queue_settings)
    server = ServerProcess(name, env, workdir / name)
    server.start()
    server.wait_for("/health/ready")
    return server


def test_consumers_come_back_after_the_connection_drops(
    workdir: Path, queues: tuple[str, dict[str, str], Broker], proxy: TcpProxy
) -> None:
    url, env, broker = queues
    server = start("reconnect", workdir, workdir / "sm.db", env | {"RABBITMQ_URL": via(proxy, url)})
    try:
        eventually(lambda: queue_states(server) == {"consuming"})
        customer = "14155550100"
        broker.publish("INBOUND_QUEUE", inbound(customer, "wamid.before"))
        assert wamids(broker.take("INBOUND_ENRICHED_QUEUE")) == ["wamid.before"]
        eventually(lambda: outbox_settled(workdir / "sm.db"))

        proxy.refusing = True
        proxy.cut()
        eventually(lambda: queue_states(server) == {"disconnected"})
        broker.publish("INBOUND_QUEUE", inbound(customer, "wamid.during.1"))
        broker.publish("INBOUND_QUEUE", inbound(customer, "wamid.during.2"))
        time.sleep(1.0)
        assert broker.depth("INBOUND_QUEUE") == 2  # nobody consumes while the link is down

        proxy.refusing = False
        eventually(lambda: queue_states(server) == {"consuming"})  # every consumer registered again
        assert wamids(broker.take("INBOUND_ENRICHED_QUEUE", 2)) == ["wamid.during.1", "wamid.during.2"]
        assert broker.take("INBOUND_ENRICHED_QUEUE", timeout=1.5) == []  # nothing doubled
    finally:
        assert server.stop(), server.log_tail()


def test_committed_output_left_unpublished_is_published_in_order(
    workdir: Path, queues: tuple[str, dict[str, str], Broker]
) -> None:
    """Rows a process committed and then died before publishing: the next sweep publishes them once."""
    _, env, broker = queues
    database = workdir / "sm.db"
    server = start("sweeper", workdir, database, env)
    try:
        eventually(lambda: queue_states(server) == {"consuming"})
        with sqlite3.connect(database) as db:
            db.executemany(
                "INSERT INTO broker_outbox (tenant_id, id, seq, destination, body, created_at, published_at)"
                " VALUES ('default', ?, ?, 'inbound_enriched', ?, '2026-01-01 00:00:00.000000', NULL)",
                [
                    (uuid.uuid4().hex, seq, f'{{"wamid": "wamid.left.{seq}"}}')
                    for seq in (3, 1, 2)  # inserted out of order; published by seq
                ],
            )
        published = broker.take("INBOUND_ENRICHED_QUEUE", 3)
        assert wamids(published) == ["wamid.left.1", "wamid.left.2", "wamid.left.3"]
        eventually(lambda: outbox_settled(database))
        assert broker.take("INBOUND_ENRICHED_QUEUE", timeout=2.5) == []  # and only once
    finally:
        assert server.stop(), server.log_tail()


def test_a_second_instance_stands_by_and_takes_over_when_the_first_dies(
    workdir: Path, queues: tuple[str, dict[str, str], Broker]
) -> None:
    _, env, broker = queues
    database = workdir / "sm.db"
    first = start("first", workdir, database, env)
    second = None
    try:
        eventually(lambda: queue_states(first) == {"consuming"})
        second = start("second", workdir, database, env)
        # Exclusive consumers: the second is refused each queue and waits.
        eventually(lambda: queue_states(second) == {"standby"})
        customer = "14155550101"
        before = [f"wamid.first.{n}" for n in range(5)]
        for message_id in before:
            broker.publish("INBOUND_QUEUE", inbound(customer, message_id))
        assert wamids(broker.take("INBOUND_ENRICHED_QUEUE", 5)) == before
        eventually(lambda: outbox_settled(database))

        assert first.process is not None
        os.killpg(first.process.pid, signal.SIGKILL)
        first.process.wait(10)
        after = [f"wamid.second.{n}" for n in range(5)]
        for message_id in after:
            broker.publish("INBOUND_QUEUE", inbound(customer, message_id))
        eventually(lambda: queue_states(second) == {"consuming"})
        assert wamids(broker.take("INBOUND_ENRICHED_QUEUE", 5)) == after
        assert broker.take("INBOUND_ENRICHED_QUEUE", timeout=1.5) == []
    finally:
        first.stop()
        if second is not None:
            assert second.stop(), second.log_tail()
