"""The scheduled jobs run by themselves in the servers, one instance at a time: with two instances on
one PostgreSQL database every inactive conversation is expired exactly once, and retention runs too;
the embedded default schedules them in its single process."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from domain.helpers import inbound, ok, wa_id
from harness import ServerProcess, cli_json, create_tenant, eventually, server_env
from owner_db import owner_execute
from state_manager.conversations.models import conversations, state_changes
from state_manager.events.models import events
from state_manager.jobs.models import job_leases
from state_manager.messages.models import messages

UTC = dt.UTC
FAST_JOBS = {"JOBS_ENABLED": "true", "EXPIRY_INTERVAL_SECONDS": "1", "RETENTION_INTERVAL_SECONDS": "1",
             "JOB_LEASE_SECONDS": "5", "CACHE_WARM_LIMIT": "0"}  # fmt: skip


def make_tenant(env: dict[str, str], workdir: Path) -> tuple[str, dict[str, str]]:
    tenant = f"jobs-{uuid.uuid4().hex[:10]}"
    admin = cli_json("keys", "create", "--kind", "admin", "--name", "jobs test", env=env, cwd=workdir)
    create_tenant(tenant, env=env, cwd=workdir)
    return tenant, {"Authorization": f"Bearer {admin['key']}", "X-Tenant-ID": tenant}


def age_everything(url: str, tenant: str, days: float) -> None:
    """Every conversation and message of the tenant as if it happened `days` ago."""
    then = dt.datetime.now(UTC) - dt.timedelta(days=days)
    c, s, m = conversations.c, state_changes.c, messages.c
    owner_execute(
        url,
        update(conversations)
        .where(c.tenant_id == tenant)
        .values(last_activity_at=then, state_changed_at=then),
        update(state_changes).where(s.tenant_id == tenant).values(changed_at=then),
        update(messages).where(m.tenant_id == tenant).values(occurred_at=then),
    )


def expiries(url: str, tenant: str) -> list[Any]:
    s = state_changes.c
    [rows] = owner_execute(
        url,
        select(s.conversation_id, func.count().label("n"))
        .where(s.tenant_id == tenant, s.to_state == "expired")
        .group_by(s.conversation_id),
    )
    return rows


@pytest.fixture
def two_instances(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[list[ServerProcess], str]]:
    url = request.getfixturevalue("postgres_url")
    env = server_env(tmp_path, url, **FAST_JOBS)
    servers = [ServerProcess(f"jobs-{n}", env, tmp_path) for n in range(2)]
    for server in servers:
        server.start()
    try:
        for server in servers:
            server.wait_for("/health/ready")
        yield servers, url
    finally:
        # Every server is stopped before any failure to stop is reported: one left running would outlive
        # the test and load the rest of the session.
        unclean = [server.log_tail() for server in servers if not server.stop()]
        assert not unclean, "\n\n".join(unclean)


@pytest.mark.postgres
def test_two_instances_expire_each_conversation_once(
    two_instances: tuple[list[ServerProcess], str], tmp_path: Path
) -> None:
    servers, url = two_instances
    tenant, headers = make_tenant(servers[0].env, tmp_path)
    with httpx.Client(base_url=servers[0].base_url, headers=headers, timeout=30) as client:
        ok(
            client.patch(
                f"/v1/admin/tenants/{tenant}", json={"settings": {"retention": {"message_content_days": 1}}}
            )
        )
        created = [inbound(client, wa_id(), "bn-jobs", status=201)["conversation_id"] for _ in range(30)]
    age_everything(url, tenant, 2)

    found = eventually(lambda: (rows := expiries(url, tenant)) and len(rows) == 30 and rows, timeout=30)
    assert sorted(str(row["conversation_id"]) for row in found) == sorted(created)
    assert {row["n"] for row in found} == {1}  # never twice, though both instances run the job

    def redacted() -> int:
        m = messages.c
        [[row]] = owner_execute(
            url, select(func.count().label("n")).where(m.tenant_id == tenant, m.redacted_at.is_not(None))
        )
        return int(row["n"])

    eventually(lambda: redacted() == 30, timeout=30)  # retention ran by itself too
    e = events.c
    [[announced]] = owner_execute(
        url,
        select(func.count().label("n")).where(
            e.tenant_id == tenant,
            e.type == "conversation.state_changed",
            e.payload["to"].as_string() == "expired",
        ),
    )
    assert announced["n"] == 30
    [leases] = owner_execute(url, select(job_leases).where(job_leases.c.name.in_(["expiry", "retention"])))
    assert {row["name"] for row in leases} == {"expiry", "retention"}
    for row in leases:
        assert row["last_outcome"]["status"] == "done"


def test_the_embedded_default_schedules_jobs_too(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'sm.db'}"
    server = ServerProcess("jobs-embedded", server_env(tmp_path, url, **FAST_JOBS), tmp_path)
    server.start()
    try:
        server.wait_for("/health/ready")
        key = (tmp_path / "data" / "admin-key").read_text().strip()
        headers = {"Authorization": f"Bearer {key}", "X-Tenant-ID": "default"}
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as client:
            conversation = inbound(client, wa_id(), "bn-jobs", status=201)["conversation_id"]
            age_everything(url, "default", 2)
            eventually(
                lambda: ok(client.get(f"/v1/conversations/{conversation}"))["state"] == "expired", timeout=30
            )
    finally:
        assert server.stop(), server.log_tail()
