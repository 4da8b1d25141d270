"""PostgreSQL's second wall: every table with a tenant_id is row-level secured, and the service's role
sees only the tenant its transaction names, even for rows the application would never ask for."""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest

from harness import Server, ServerProcess, create_tenant, server_env
from state_manager.db.postgres import APP_ROLE


def _dsn(server: Server) -> str:
    return server.env["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")


async def _tables_with_tenant_id(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        """
        SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
               (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) AS policies
          FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
         WHERE c.relkind = 'r'
           AND EXISTS (SELECT 1 FROM pg_attribute a
                        WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
         ORDER BY c.relname
        """
    )


def test_every_tenant_table_is_row_level_secured_and_the_app_role_sees_one_tenant(
    postgres_server: Server,
) -> None:
    # Data of one tenant, written through the API.
    with httpx.Client(base_url=postgres_server.base_url, timeout=30) as client:
        admin = {"Authorization": f"Bearer {postgres_server.admin_key}", "X-Tenant-ID": "harness"}
        response = client.post(
            "/v1/messages/inbound",
            headers=admin,
            json={
                "wa_id": "4915112345678",
                "business_number_id": "rls-1",
                "wamid": "wamid.rls.1",
                "text": "x",
            },
        )
        assert response.status_code in (200, 201), response.text

    async def check() -> None:
        conn = await asyncpg.connect(_dsn(postgres_server))
        try:
            tables = await _tables_with_tenant_id(conn)
            names = [t["relname"] for t in tables]
            assert {"customers", "conversations", "messages", "customer_identities"} <= set(names)
            unsecured = [
                t["relname"]
                for t in tables
                if t["relname"] != "api_keys"  # the key table is read before any tenant is known
                and not (t["relrowsecurity"] and t["relforcerowsecurity"] and t["policies"] >= 1)
            ]
            assert unsecured == []
            async with conn.transaction():
                await conn.execute(f"SET LOCAL ROLE {APP_ROLE}")
                for table in ("customers", "conversations", "messages", "customer_identities"):
                    assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
                await conn.execute("SELECT set_config('app.tenant_id', 'someone-else', true)")
                assert await conn.fetchval("SELECT count(*) FROM messages") == 0
                await conn.execute("SELECT set_config('app.tenant_id', 'harness', true)")
                assert await conn.fetchval("SELECT count(*) FROM messages WHERE wamid = 'wamid.rls.1'") == 1
                # Writing another tenant's row is refused by the policy's WITH CHECK.
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(
                        "UPDATE messages SET tenant_id = 'someone-else' WHERE wamid = 'wamid.rls.1'"
                    )
        finally:
            await conn.close()

    asyncio.run(check())


def test_a_freshly_grown_pool_keeps_every_write(
    workdir: Path, postgres_url: str, postgres_server: Server
) -> None:
    """Concurrent inbound messages on a new server: the stored function is the first use of most pool
    connections. Every message must be kept (the app role's SET ROLE once went back to the pool
    uncommitted, taking the writes made on it along)."""
    tenant = f"pool-{uuid.uuid4().hex[:8]}"
    env = server_env(workdir, postgres_url) | {"AUTH_MODE": "disabled"}
    create_tenant(tenant, env=env, cwd=workdir)
    process = ServerProcess("fresh-pool", env, workdir)
    process.start()
    try:
        process.wait_for("/health/ready")
        wa_ids = [f"4917{n:08d}" for n in range(40)]

        def send(wa: str) -> int:
            body = {"wa_id": wa, "business_number_id": "bn-1", "wamid": f"wamid.pool.{wa}", "text": "hi"}
            with httpx.Client(base_url=process.base_url, headers={"X-Tenant-ID": tenant}, timeout=30) as c:
                return c.post("/v1/messages/inbound", json=body).status_code

        with concurrent.futures.ThreadPoolExecutor(max_workers=40) as pool:
            assert set(pool.map(send, wa_ids)) == {201}
    finally:
        assert process.stop(), process.log_tail()

    async def stored() -> int:
        conn = await asyncpg.connect(_dsn(postgres_server))
        try:
            found: int = await conn.fetchval("SELECT count(*) FROM messages WHERE tenant_id = $1", tenant)
            return found
        finally:
            await conn.close()

    assert asyncio.run(stored()) == len(wa_ids)
