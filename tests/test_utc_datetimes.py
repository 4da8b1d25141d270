"""Timestamps read back are aware and in UTC on both backends (db/types.py, `UTCDateTime`): on PostgreSQL
the driver's own datetimes are used as they come, whatever the session's time zone."""

from __future__ import annotations

import asyncio
import datetime as dt

from sqlalchemy import Column, Integer, MetaData, Table, insert, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from state_manager.db.types import UTCDateTime

SAO_PAULO = dt.timezone(dt.timedelta(hours=-3))
table = Table("utc_check", MetaData(), Column("id", Integer, primary_key=True), Column("at", UTCDateTime))


def test_timestamps_come_back_aware_and_in_utc(fresh_database_url: str) -> None:
    async def scenario() -> list[dt.datetime | None]:
        engine = create_async_engine(fresh_database_url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(table.metadata.create_all)
                if conn.dialect.name == "postgresql":
                    await conn.execute(text("SET TIME ZONE 'America/Sao_Paulo'"))
                sent = dt.datetime(2026, 12, 5, 9, 30, 15, 123456, tzinfo=SAO_PAULO)
                await conn.execute(insert(table), [{"id": 1, "at": sent}, {"id": 2, "at": None}])
                return list((await conn.execute(select(table.c.at).order_by(table.c.id))).scalars())
        finally:
            await engine.dispose()

    read, missing = asyncio.run(scenario())
    assert missing is None
    assert read == dt.datetime(2026, 12, 5, 12, 30, 15, 123456, tzinfo=dt.UTC)
    assert read is not None
    assert read.utcoffset() == dt.timedelta(0)
