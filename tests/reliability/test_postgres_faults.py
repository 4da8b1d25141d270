"""PostgreSQL stopped and started again under writers (issue 8, "Faults"), on a cluster of the test's own.

A server on that cluster (with a Redis of its own) takes inbound messages from several clients at once while
the cluster is stopped for a few seconds, cleanly (`pg_ctl stop -m fast`) or as a crash (`-m immediate`:
no checkpoint, WAL replayed at the next start), and started again. Checked:

- every answer is 201/200 or, while the database is away, 503 with Retry-After and a problem+json body;
  never a 500, never no answer at all;
- every acknowledged message is in the database exactly once; sending the 503'd ones again stores each
  once; nothing else is stored;
- the server recovers by itself (`/health/ready` answers ok again, no restart);
- every committed event is numbered and served by `GET /v1/events`: 1..n, no gap, none twice.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from domain.helpers import PROBLEM_JSON
from harness import (
    PostgresCluster,
    RedisServer,
    ServerProcess,
    cli_json,
    create_tenant,
    eventually,
    server_env,
)
from reliability.faults import (
    Answer,
    Writer,
    assert_each_once,
    assert_events_whole,
    assert_one_open_conversation_each,
    customers,
    send,
    unnumbered,
)

TENANT = "pg-outage"
OUTAGE_SECONDS = 4.0


@pytest.fixture
def outage_server(
    tmp_path: Path, own_postgres: PostgresCluster, own_redis: RedisServer
) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    """One server on the test's own cluster; stopped before the cluster is removed."""
    env = server_env(
        tmp_path, own_postgres.url(), REDIS_URL=own_redis.url, CACHE_WARM_LIMIT="0", DB_POOL_SIZE="8",
        EVENTS_SWEEP_SECONDS="1",
    )  # fmt: skip
    admin = cli_json("keys", "create", "--kind", "admin", "--name", "outage", env=env, cwd=tmp_path)
    create_tenant(TENANT, env=env, cwd=tmp_path)
    server = ServerProcess("pg-outage", env, tmp_path)
    server.start()
    try:
        server.wait_for("/health/ready")
        yield server, {"Authorization": f"Bearer {admin['key']}", "X-Tenant-ID": TENANT}
    finally:
        assert server.stop(), f"the server did not shut down cleanly:\n{server.log_tail()}"


def unacceptable(answer: Answer) -> str | None:
    """Why this answer may not be given while the database comes and goes; None when it may."""
    if answer.acknowledged:
        return None
    if answer.status != 503:
        return f"{answer.status} {answer.error or ''}"
    if answer.retry_after is None or not answer.content_type.startswith(PROBLEM_JSON):
        return f"503 without Retry-After or problem+json ({answer.retry_after!r}, {answer.content_type!r})"
    if answer.code != "unavailable":
        return f"503 {answer.code}"
    return None


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restarted_under_writers(
    outage_server: tuple[ServerProcess, dict[str, str]], own_postgres: PostgresCluster, mode: str
) -> None:
    server, headers = outage_server
    pool = customers(5, ("bn-a", "bn-b"))
    phase = ["up"]
    writers = [Writer([server.base_url], headers, pool, phase=phase) for _ in range(4)]

    def acknowledged(since: str) -> int:
        return sum(a.acknowledged and a.phase == since for writer in writers for a in writer.answers)

    with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as client:
        for writer in writers:
            writer.start()
        try:
            eventually(lambda: acknowledged("up") >= 40, timeout=60)
            phase[0] = "stopping"
            own_postgres.stop(mode)
            phase[0] = "down"
            down_since = time.monotonic()
            # Readiness says so while the database is away (and stays up itself).
            eventually(lambda: client.get("/health/ready").status_code == 503, timeout=10)
            time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_since)))
            phase[0] = "starting"
            assert own_postgres.start() is None, own_postgres.log_tail()
            phase[0] = "back"
            eventually(lambda: client.get("/health/ready").json()["status"] == "ok", timeout=30)
            eventually(lambda: acknowledged("back") >= 40, timeout=60)
        finally:
            for writer in writers:
                writer.stop()

        answers = [answer for writer in writers for answer in writer.answers]
        wrong = [(a.phase, why) for a in answers if (why := unacceptable(a)) is not None]
        assert not wrong, wrong[:20]
        during = [a for a in answers if a.phase == "down"]
        assert len(during) >= 10, "too few requests while the database was away"
        assert all(a.status == 503 for a in during), [a.status for a in during]

        # The refused ones, sent again now: each recorded once (200 would mean the first try had
        # committed after all: allowed, but then it must not be stored twice either).
        bodies = {key: body for writer in writers for key, body in writer.bodies.items()}
        acked = {a.wamid for a in answers if a.acknowledged}
        refused = set(bodies) - acked
        assert refused, "no request was refused"
        with concurrent.futures.ThreadPoolExecutor(4) as retrying:
            retried = list(retrying.map(lambda key: send(client, bodies[key]), sorted(refused)))
        assert all(a.status in (200, 201) for a in retried), [(a.status, a.code) for a in retried][:10]

        dsn = own_postgres.url()
        assert_each_once(dsn, TENANT, set(bodies))
        assert_one_open_conversation_each(dsn, TENANT, pool)
        eventually(lambda: unnumbered(dsn, TENANT) == 0, timeout=30)
        assert_events_whole(dsn, TENANT, client, messages=len(bodies))
