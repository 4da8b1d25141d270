"""An instance killed with SIGKILL in the middle of writes (issue 8, "Faults").

Two instances on PostgreSQL and a Redis of the test's own, as docs/scale-out.md runs them; writers on both,
sharing one pool of customers. One instance is killed (its whole process group, SIGKILL: no shutdown, no
relay batch finished, connections dropped mid-statement). Its clients send every message that got no
answer again, with the same wamid, to the survivor, as a client of a load balancer would. Checked:

- the survivor never fails a request; the killed one's requests either were answered or got no answer;
- every message sent is stored exactly once (a message whose first try committed before the kill is
  answered 200 by the survivor, not stored again); each customer has one customer row and one open
  conversation per business number;
- every event committed, by either, is numbered: the survivor numbers what the killed one left, also an
  event left unnumbered on purpose once all traffic has stopped (its sweep, with no write to wake it); the
  event log is 1..n with no gap and no number twice; a WebSocket subscriber on the survivor receives every
  event once, in order; the tenant's Redis stream holds 1..n.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from harness import RedisServer, ServerProcess, cli_json, create_tenant, eventually, server_env
from reliability.faults import (
    Writer,
    assert_each_once,
    assert_events_whole,
    assert_one_open_conversation_each,
    customers,
    query,
    unnumbered,
)
from test_events_live import Subscriber

Instances = tuple[list[ServerProcess], dict[str, str], str, str]


@pytest.fixture
def instances(request: pytest.FixtureRequest, tmp_path: Path, own_redis: RedisServer) -> Iterator[Instances]:
    """Two instances on the session's database, a tenant of their own; every one still running is stopped
    before anything is reported."""
    database = request.getfixturevalue("postgres_url")
    env = server_env(
        tmp_path, database, REDIS_URL=own_redis.url, CACHE_WARM_LIMIT="0", DB_POOL_SIZE="8",
        EVENTS_SWEEP_SECONDS="1",
    )  # fmt: skip
    tenant = f"kill-{tmp_path.name[-10:]}".replace("_", "-").lower()
    admin = cli_json("keys", "create", "--kind", "admin", "--name", "kill test", env=env, cwd=tmp_path)
    create_tenant(tenant, env=env, cwd=tmp_path)
    servers = [ServerProcess(f"kill-{n}", env, tmp_path) for n in range(2)]
    for server in servers:
        server.start()
    try:
        for server in servers:
            server.wait_for("/health/ready")
        yield servers, {"Authorization": f"Bearer {admin['key']}", "X-Tenant-ID": tenant}, tenant, database
    finally:
        # The killed one has ended already (stop() then only reports how: not cleanly).
        unclean = [server.log_tail() for server in servers if not server.stop() and server is servers[1]]
        assert not unclean, "\n\n".join(unclean)


@pytest.mark.postgres
@pytest.mark.redis
def test_an_instance_killed_mid_write(instances: Instances, own_redis: RedisServer) -> None:
    (doomed, survivor), headers, tenant, database = instances
    pool = customers(6, ("bn-a", "bn-b"))
    subscriber = Subscriber(survivor.base_url, headers, after=0)
    phase = ["both"]
    writers = [
        Writer([doomed.base_url, survivor.base_url], headers, pool, retry_elsewhere=True, phase=phase)
        for _ in range(3)
    ] + [Writer([survivor.base_url], headers, pool, phase=phase) for _ in range(3)]

    def acknowledged(since: str) -> int:
        return sum(a.acknowledged and a.phase == since for writer in writers for a in writer.answers)

    for writer in writers:
        writer.start()
    try:
        eventually(lambda: acknowledged("both") >= 100, timeout=60)
        assert doomed.process is not None
        os.killpg(doomed.process.pid, signal.SIGKILL)
        doomed.process.wait(10)
        phase[0] = "one"
        eventually(lambda: acknowledged("one") >= 100, timeout=60)
    finally:
        for writer in writers:
            writer.stop()

    answers = [a for writer in writers for a in writer.answers]
    wrong = [
        (a.base_url, a.status, a.error)
        for a in answers
        if not a.acknowledged and not (a.status is None and a.base_url.rstrip("/") == doomed.base_url)
    ]
    assert not wrong, wrong[:10]
    unanswered = [a for a in answers if a.status is None]
    assert unanswered, "no request of the killed instance went unanswered: it was not killed mid-write"
    bodies = {key: body for writer in writers for key, body in writer.bodies.items()}
    acked = {a.wamid for a in answers if a.acknowledged}
    assert acked == set(bodies), "a message was never acknowledged, by either instance"
    # Sent again after no answer: 200 where the first try had committed, 201 where it had not.
    resent = [a for a in answers if a.wamid in {u.wamid for u in unanswered} and a.acknowledged]
    assert len(resent) == len({u.wamid for u in unanswered})

    # What a process killed between its commit and its relay's numbering leaves: a committed event with
    # no number (the kill above may or may not have hit that moment). Nothing writes any more: the
    # survivor's sweep alone must number it, and its subscriber receive it.
    query(
        database,
        "INSERT INTO events (tenant_id, type, conversation_id, customer_id, payload, occurred_at)"
        " SELECT tenant_id, 'context.changed', id, customer_id, $2::jsonb, now() FROM conversations"
        " WHERE tenant_id = $1 LIMIT 1",
        tenant,
        '{"scope": "conversation", "values": {"left": "by the killed instance"}}',
    )
    assert_each_once(database, tenant, set(bodies))
    assert_one_open_conversation_each(database, tenant, pool)
    eventually(lambda: unnumbered(database, tenant) == 0, timeout=30)
    with httpx.Client(base_url=survivor.base_url, headers=headers, timeout=30) as client:
        log = assert_events_whole(database, tenant, client, messages=len(bodies))
    head = log[-1]["seq"]
    assert log[-1]["payload"]["values"] == {"left": "by the killed instance"}

    try:
        received = subscriber.wait_for_seq(head, timeout=30)
        time.sleep(0.5)  # nothing more: no duplicate after the last one either
    finally:
        subscriber.stop()
    assert [event["seq"] for event in subscriber.events] == list(range(1, head + 1))
    assert subscriber.events == received
    stream = redis.Redis.from_url(own_redis.url)
    try:

        def on_stream() -> list[int]:
            return [int(entry_id.split(b"-")[0]) for entry_id, _ in stream.xrange(f"sm:{{{tenant}}}:events")]

        eventually(lambda: on_stream() == list(range(1, head + 1)), timeout=30)
    finally:
        stream.close()
