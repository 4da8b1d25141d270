"""Transaction-scoped locks on names, for races that no row can guard (a row that does not exist yet)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from sqlalchemy import BigInteger, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

# unnest walks the array in order, so every transaction takes its locks in the same (sorted) order
# and two of them cannot deadlock on these locks.
_LOCK_ALL = text("SELECT pg_advisory_xact_lock(key) FROM unnest(:keys) AS key").bindparams(
    bindparam("keys", type_=ARRAY(BigInteger))
)


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


async def lock_names(conn: AsyncConnection, names: Iterable[str]) -> None:
    """Holds a lock on each name until the transaction ends.

    PostgreSQL: advisory locks. SQLite needs none: a write transaction there already excludes every
    other writer (BEGIN IMMEDIATE).
    """
    if conn.dialect.name != "postgresql":
        return
    keys = sorted({_lock_key(name) for name in names})
    if keys:
        await conn.execute(_LOCK_ALL, {"keys": keys})


_TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(:key)")


async def try_lock_name(conn: AsyncConnection, name: str) -> bool:
    """Takes the lock on `name` until the transaction ends, unless another transaction holds it.

    SQLite: always True, for the reason `lock_names` gives.
    """
    if conn.dialect.name != "postgresql":
        return True
    return bool((await conn.execute(_TRY_LOCK, {"key": _lock_key(name)})).scalar_one())
