"""One analytics projection step, as the background projector runs it: `project()` over N random
conversations of a kept database, in one transaction, round after round. Reports per round the wall time,
this process's CPU, PostgreSQL's CPU (every `postgres` process of the machine), the longest time the
event loop went without a turn (a ticker in the same loop; the requests of a server worker wait that long)
and the garbage collections meanwhile, with the longest one.

    .venv/bin/python -m bench.analytics --messages 100000 --keep        # ten messages a conversation
    .venv/bin/python -m bench.projection --reuse sm_bench_analytics_1234
    .venv/bin/python -m bench.projection --reuse sm_bench_analytics_1234 --rounds 20 --conversations 300

A step writes only the rows that differ from what is stored: on a database projected just before, and
with nothing else writing, it reads and computes but writes little (reply windows that ended since the
last projection, for instance). See docs/benchmarks.md, "Analytics".
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import time

import asyncpg

from bench.server import database_dsn, sqlalchemy_url
from bench.sysstat import CLK_TCK, all_stats
from state_manager.analytics import projector
from state_manager.db import open_database
from state_manager.settings import Settings

ADMIN_DSN = os.environ.get("BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
TICK_SECONDS = 0.001


def postgres_cpu_seconds() -> float:
    return sum(ticks for comm, _, ticks in all_stats().values() if comm == "postgres") / CLK_TCK


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reuse", required=True, help="a database kept by `bench.analytics --keep`")
    p.add_argument("--rounds", type=int, default=20, help="measured rounds, after one that is not")
    p.add_argument("--conversations", type=int, default=300, help="conversations per round")
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    dsn = database_dsn(ADMIN_DSN, args.reuse)
    raw = await asyncpg.connect(dsn)
    try:
        tenant = await raw.fetchval("SELECT tenant_id FROM conversations LIMIT 1")
        ids = [row[0] for row in await raw.fetch("SELECT id FROM conversations WHERE tenant_id = $1", tenant)]
        messages = await raw.fetchval("SELECT count(*) FROM messages WHERE tenant_id = $1", tenant)
    finally:
        await raw.close()
    db = open_database(Settings(database_url=sqlalchemy_url(dsn)))
    picked = random.Random(args.seed)
    size = min(args.conversations, len(ids))

    async def step() -> None:
        async with db.transaction(tenant, write=True) as conn:
            await projector.project(conn, tenant, picked.sample(ids, size))

    longest_wait = 0.0
    collections = {0: 0, 1: 0, 2: 0}
    longest_collection = 0.0
    started = 0.0

    def timed_collection(phase: str, info: dict[str, int]) -> None:
        nonlocal longest_collection, started
        if phase == "start":
            started = time.perf_counter()
        else:
            collections[info["generation"]] += 1
            longest_collection = max(longest_collection, time.perf_counter() - started)

    async def ticker() -> None:
        nonlocal longest_wait
        while True:
            before = time.monotonic()
            await asyncio.sleep(TICK_SECONDS)
            longest_wait = max(longest_wait, time.monotonic() - before - TICK_SECONDS)

    try:
        await step()  # connections, prepared statements, imports
        ticking = asyncio.create_task(ticker())
        gc.callbacks.append(timed_collection)
        wall, cpu, pg = time.monotonic(), time.process_time(), postgres_cpu_seconds()
        for _ in range(args.rounds):
            await step()
        wall, cpu = time.monotonic() - wall, time.process_time() - cpu
        pg = postgres_cpu_seconds() - pg
        ticking.cancel()
        gc.callbacks.remove(timed_collection)
    finally:
        await db.dispose()
    per_round = 1000 / args.rounds
    print(
        f"{args.reuse}: {len(ids):,} conversations, {messages / len(ids):.1f} messages each on average\n"
        f"{args.rounds} rounds of {size} conversations: per round {wall * per_round:.1f} ms wall, "
        f"{cpu * per_round:.1f} ms CPU here, {pg * per_round:.1f} ms CPU in PostgreSQL; "
        f"longest wait of the event loop {longest_wait * 1000:.0f} ms\n"
        f"garbage collections by generation {collections[0]}/{collections[1]}/{collections[2]}, "
        f"the longest {longest_collection * 1000:.1f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    asyncio.run(run(parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
