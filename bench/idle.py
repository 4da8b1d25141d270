"""What an idle server costs with many tenants: its CPU, PostgreSQL's, and PostgreSQL's transactions.

    .venv/bin/python -m bench.idle                       # 1,500 empty tenants, 1 worker, 30 s measured
    .venv/bin/python -m bench.idle --tenants 10000 --window 60

Creates a fresh PostgreSQL database, migrates it, writes `--tenants` tenants straight into the directory
tables, and starts `state-manager serve` (DATABASE_URL, REDIS_URL on a Redis database of its own) with
every other setting at its default. No request is sent. After `--settle` seconds (start-up, warming, the
first sweeps) it measures `--window` seconds: the CPU of the server's processes and of this database's
PostgreSQL backends (% of one core, from /proc), and pg_stat_database's transactions. What runs then is
the background work alone: the sweeps of the event relay (every EVENTS_SWEEP_SECONDS), the queue outbox
(OUTBOX_SWEEP_SECONDS), the webhook dispatcher (WEBHOOK_SWEEP_SECONDS) and the analytics projector
(ANALYTICS_SWEEP_SECONDS), and the scheduled jobs. The result is printed and written to
bench/results/idle-<UTC>.json. See docs/benchmarks.md, "An idle server with many tenants".
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import redis

from bench import sysstat
from bench.report import git_commit, machine_info, write_json
from bench.server import (
    REPO_ROOT,
    ManagedServer,
    create_database,
    database_dsn,
    drop_database,
    free_port,
    sqlalchemy_url,
)

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/4"
RESULTS_DIR = Path(__file__).resolve().parent / "results"


async def add_tenants(dsn: str, count: int) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(
            "INSERT INTO organizations (id, name, created_at) VALUES ('bench-idle', 'idle', now())"
        )
        await conn.execute(
            "INSERT INTO tenants (id, organization_id, name, settings, created_at, updated_at)"
            " SELECT 'idle-' || n, 'bench-idle', 'idle ' || n, '{}', now(), now()"
            " FROM generate_series(1, $1) n",
            count,
        )
    finally:
        await conn.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__.split("\n\n")[0])
    p.add_argument("--tenants", type=int, default=1500)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--settle", type=float, default=15.0, help="seconds after the server is ready")
    p.add_argument("--window", type=float, default=30.0, help="seconds measured")
    p.add_argument("--pg-admin-dsn", default=ADMIN_DSN)
    p.add_argument("--redis-url", default=REDIS_URL, help="emptied before and after")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    if args.tenants < 1 or args.window <= 0 or args.settle < 0:
        p.error("--tenants must be >= 1, --window > 0, --settle >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    database = f"bench_idle_{started:%Y%m%d%H%M%S}"
    dsn = database_dsn(args.pg_admin_dsn, database)
    asyncio.run(create_database(args.pg_admin_dsn, database))
    flushed = redis.Redis.from_url(args.redis_url)
    flushed.flushdb()
    server = ManagedServer(
        port=free_port(),
        workers=args.workers,
        database_url=sqlalchemy_url(dsn),
        redis_url=args.redis_url,
        extra_env={},
        log_path=Path(tempfile.gettempdir()) / f"state-manager-{database}.log",
    )
    try:
        server.migrate()
        asyncio.run(add_tenants(dsn, args.tenants))
        server.start()
        assert server.process is not None
        print(f"{args.tenants:,} tenants, {args.workers} worker(s); settling {args.settle:.0f} s", flush=True)
        time.sleep(args.settle)
        stop = sysstat.cpu_window(server.port, server.process.pid, args.pg_admin_dsn)()
        time.sleep(args.window)
        cpu = stop()
    finally:
        server.stop()
        asyncio.run(drop_database(args.pg_admin_dsn, database))
        flushed.flushdb()
    transactions = cpu.get("pg_stat_database", {}).get("xact_commit", 0)
    result = {
        "server_cpu_percent": cpu.get("server"),
        "postgres_cpu_percent": cpu.get("postgres"),
        "postgres_transactions_per_second": round(transactions / args.window, 1),
        "machine_cpu_percent": cpu.get("machine"),
        "busiest_others": cpu.get("busiest_others"),
    }
    document: dict[str, Any] = {
        "started_at": started.isoformat(),
        "command": " ".join([Path(sys.executable).name, "-m", "bench.idle", *(argv or sys.argv[1:])]),
        "machine": machine_info(),
        "git_commit": git_commit(REPO_ROOT),
        "settings": {"tenants": args.tenants, "workers": args.workers, "settle_s": args.settle},
        "window_s": args.window,
        "result": result,
    }
    path = args.results_dir / f"idle-{started:%Y%m%dT%H%M%SZ}.json"
    write_json(path, document)
    print(
        f"idle, {args.window:.0f} s: server {result['server_cpu_percent']} % of a core, PostgreSQL "
        f"{result['postgres_cpu_percent']} %, {result['postgres_transactions_per_second']} transactions/s "
        f"(machine {result['machine_cpu_percent']} %); {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
