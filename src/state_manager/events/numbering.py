"""How the relay numbers events, chosen once per database: three statements on any backend, one call of
the stored function `sm_number_events` (migration 0006) on PostgreSQL, where the relay runs after almost
every commit and its round trips were most of what events cost a writer's instance."""

from __future__ import annotations

from sqlalchemy import RowMapping, text
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.db import Database
from state_manager.db.locks import lock_key, lock_names
from state_manager.db.postgres import PostgresDatabase
from state_manager.events import repository as repo
from state_manager.events.models import events


def lease(tenant_id: str) -> str:
    """The lock that makes one relay at a time number a tenant's events."""
    return f"events-relay:{tenant_id}"


class Numberer:
    async def number(self, conn: AsyncConnection, tenant_id: str, limit: int) -> list[RowMapping]:
        """Takes the lease (until the caller's transaction ends) and numbers up to `limit` events of the
        tenant, in the order they were written, after the tenant's last number; returns them in order."""
        await lock_names(conn, [lease(tenant_id)])
        last = await repo.last_numbered(conn, tenant_id)
        numbered = await repo.number_pending(conn, tenant_id, last, limit)
        if numbered:
            await repo.save_last_numbered(conn, tenant_id, numbered[-1]["seq"])
        return numbered


_NUMBER_EVENTS = text("SELECT * FROM sm_number_events(:tenant_id, :lock_key, :limit)").columns(*events.c)


class PostgresNumberer(Numberer):
    async def number(self, conn: AsyncConnection, tenant_id: str, limit: int) -> list[RowMapping]:
        parameters = {"tenant_id": tenant_id, "lock_key": lock_key(lease(tenant_id)), "limit": limit}
        return list((await conn.execute(_NUMBER_EVENTS, parameters)).mappings().all())


def numberer_for(db: Database) -> Numberer:
    """The numberer for this database; called once, at start-up."""
    return PostgresNumberer() if isinstance(db, PostgresDatabase) else Numberer()
