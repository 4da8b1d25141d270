"""The RabbitMQ connection dropped in the middle of a stream of messages, on PostgreSQL (issue 8, "Faults").

test_rabbitmq_faults.py drops the connection of a server on the embedded default while it is idle. Here the
server runs on PostgreSQL, in a database of its own, and the connection is cut while the consumers are
busy: some messages are being handled, others wait unacked in the prefetch, more are published while the
link is down. The consumers come back by themselves, and:

- every message is recorded exactly once (a redelivered one finds its wamid and changes nothing), each
  customer with one open conversation;
- every enriched output is published, in each customer's order. A second copy of an output is possible by
  design (a confirm lost with the connection: at least once, docs/design.md, "RabbitMQ"), and is then the
  same body; the count of such copies is not asserted beyond that.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from harness import Broker, ServerProcess, TcpProxy, create_tenant, eventually, run_cli, server_env
from reliability.faults import assert_each_once, assert_one_open_conversation_each, query, stored_wamids
from reliability.test_rabbitmq_faults import inbound, proxy, queue_states, queues, via

__all__ = ["proxy", "queues"]  # fixtures, used by name

BUSINESS = "15550001234"  # inbound()'s phone_number_id
CUSTOMERS = [f"1415555{n:04d}" for n in range(4)]


def unpublished(database: str, tenant: str) -> int:
    rows = query(
        database,
        "SELECT count(*) AS n FROM broker_outbox WHERE tenant_id = $1 AND published_at IS NULL",
        tenant,
    )
    return int(rows[0]["n"])


@pytest.mark.postgres
def test_the_connection_dropped_mid_stream_on_postgres(
    fresh_postgres_url: str,
    workdir: Path,
    queues: tuple[str, dict[str, str], Broker],
    proxy: TcpProxy,
) -> None:
    url, env, broker = queues
    # Not the session's database: the session's servers sweep its outboxes too, and publish what they find
    # to their own queues (an output's destination is a logical name, which each instance resolves).
    database = fresh_postgres_url
    tenant = "drop"
    settings = server_env(
        workdir, database, DEFAULT_TENANT_ID=tenant, **(env | {"RABBITMQ_URL": via(proxy, url)})
    )
    migrated = run_cli("migrate", env=settings, cwd=workdir)
    assert migrated.returncode == 0, migrated.stderr
    create_tenant(tenant, env=settings, cwd=workdir)
    server = ServerProcess("drop-pg", settings, workdir)
    server.start()
    try:
        server.wait_for("/health/ready")
        eventually(lambda: queue_states(server) == {"consuming"}, timeout=60)
        sent: dict[str, list[str]] = defaultdict(list)

        def publish(count: int, label: str) -> None:
            for n in range(count):
                customer = CUSTOMERS[n % len(CUSTOMERS)]
                message_id = f"wamid.{label}.{n}"
                sent[customer].append(message_id)
                broker.publish("INBOUND_QUEUE", inbound(customer, message_id))

        publish(60, "before")
        outputs = broker.take("INBOUND_ENRICHED_QUEUE", 5)  # the stream is under way
        proxy.refusing = True
        proxy.cut()
        eventually(lambda: queue_states(server) == {"disconnected"}, timeout=60)
        publish(20, "during")
        time.sleep(1.0)
        proxy.refusing = False
        eventually(lambda: queue_states(server) == {"consuming"}, timeout=60)
        every = {message_id for ids in sent.values() for message_id in ids}

        def all_out() -> bool:
            outputs.extend(broker.take("INBOUND_ENRICHED_QUEUE", 100, timeout=0.5))
            return {body["wamid"] for body in outputs} == every

        try:
            eventually(all_out, timeout=60)
        except AssertionError:
            missing = every - {body["wamid"] for body in outputs}
            stored = set(stored_wamids(database, tenant))
            raise AssertionError(
                f"{len(missing)} outputs missing: {sorted(missing)}; of them not stored: "
                f"{sorted(missing - stored)}; unpublished outbox rows: {unpublished(database, tenant)}; "
                f"inbound queue depth: {broker.depth('INBOUND_QUEUE')}; queues: {queue_states(server)}\n"
                f"{server.log_tail(60)}"
            ) from None
        eventually(lambda: unpublished(database, tenant) == 0, timeout=60)
        outputs += broker.take("INBOUND_ENRICHED_QUEUE", 100, timeout=1.5)
    finally:
        assert server.stop(), server.log_tail()

    assert_each_once(database, tenant, every)
    assert_one_open_conversation_each(database, tenant, [(customer, BUSINESS) for customer in CUSTOMERS])
    first: dict[str, dict[str, Any]] = {}
    order: dict[str, list[str]] = defaultdict(list)
    for body in outputs:
        if body["wamid"] in first:
            assert body == first[body["wamid"]], "a second copy of an output differs from the first"
            continue
        first[body["wamid"]] = body
        order[body["wa_id"]].append(body["wamid"])
    assert order == sent  # each customer's messages, in the order they were published
