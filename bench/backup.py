"""Backup and restore at scale: seed N messages straight into a fresh database, then time
`state-manager backup`, `backup verify` and `restore` (into another fresh database) as subprocesses.

    .venv/bin/python -m bench.backup                          # PostgreSQL, 1,000,000 messages
    .venv/bin/python -m bench.backup --backend sqlite --messages 200000
    .venv/bin/python -m bench.backup --messages 100000 --keep  # keep the databases and files

Each message has its conversation (ten messages each), customer and identity, and a `message.recorded`
event (numbered, as the relay leaves them). The restored database is backed up again and its per-table
SHA-256 compared with the first backup's (the audit log aside: the restore adds its own entry). Wall time
and peak RSS (wait4) of each subprocess; see docs/benchmarks.md, "Backup and restore".
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sqlite3
import subprocess
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import orjson

from bench.server import (
    create_database,
    database_dsn,
    drop_database,
    sqlalchemy_url,
    state_manager_executable,
)

ADMIN_DSN = os.environ.get("BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
TENANTS = 4
MESSAGES_PER_CONVERSATION = 10


@dataclass
class Step:
    name: str
    seconds: float
    peak_rss_mib: float
    rows: int
    detail: str = ""


def run_measured(name: str, args: list[str], env: dict[str, str], rows: int, cwd: Path) -> Step:
    """Runs `state-manager <args>`; wall time and the peak RSS of that process (wait4's rusage)."""
    started = time.monotonic()
    with (cwd / f"{name}.log").open("wb") as log:
        process = subprocess.Popen(
            [state_manager_executable(), *args], env=env, stdout=log, stderr=log, cwd=cwd
        )
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(
            f"{name} failed ({process.returncode}):\n{(cwd / f'{name}.log').read_text()[-3000:]}"
        )
    return Step(name, seconds, usage.ru_maxrss / 1024, rows)


def cli_env(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DATA_DIR")}
    env["DATABASE_URL"] = database_url
    return env


# --- Seeding -------------------------------------------------------------------------------------------

_PG_SEED = """
INSERT INTO organizations VALUES ('bench', 'Bench', now());
INSERT INTO tenants (id, organization_id, name, settings, created_at, updated_at)
SELECT 'bench-' || t, 'bench', 'Bench ' || t, '{"timezone": "UTC", "inactivity_timeout_seconds": 86400}',
       now(), now()
  FROM generate_series(1, $tenants) AS t;
CREATE TEMP TABLE seed_customers AS
SELECT c, 'bench-' || (c % $tenants + 1) AS tenant_id, md5('customer' || c)::uuid AS id,
       md5('conversation' || c)::uuid AS conversation_id,
       (100000000000 + c)::text AS wa_id
  FROM generate_series(1, $conversations) AS c;
INSERT INTO customers (tenant_id, id, display_name, language, preferences, consent, attributes, version,
                       created_at, updated_at)
SELECT tenant_id, id, 'Customer ' || c, 'pt-BR', '{}', '{"marketing": false}', '{"tier": "gold"}', 1,
       now() - interval '30 days', now()
  FROM seed_customers;
INSERT INTO customer_identities (tenant_id, channel, external_id, customer_id, created_at)
SELECT tenant_id, 'whatsapp', wa_id, id, now() - interval '30 days' FROM seed_customers;
INSERT INTO conversations (tenant_id, id, customer_id, channel, business_number_id, business_display_number,
                           genesys_conversation_id, state, state_changed_at, started_at, last_activity_at,
                           last_inbound_at, metadata, version, created_at, updated_at)
SELECT tenant_id, conversation_id, id, 'whatsapp', 'bn-1', '+55 11 4000-0000', md5('genesys' || c),
       'active', now() - interval '1 day', now() - interval '1 day', now(), now(), '{"queue": "sales"}', 3,
       now() - interval '1 day', now()
  FROM seed_customers;
INSERT INTO messages (tenant_id, id, conversation_id, direction, wamid, genesys_message_id, type, text,
                      sender_type, sender_id, occurred_at, created_at, updated_at, queued_at, sent_at,
                      delivered_at, read_at, metadata)
SELECT s.tenant_id, md5('message' || m)::uuid, s.conversation_id,
       CASE WHEN m % 2 = 0 THEN 'inbound' ELSE 'outbound' END,
       'wamid.HBgL' || md5('wamid' || m), CASE WHEN m % 2 = 1 THEN md5('gmsg' || m) END, 'text',
       'Hello, this is message ' || m || ': could you tell me where my order is? Thanks a lot!',
       CASE WHEN m % 2 = 0 THEN 'customer' ELSE 'agent' END, CASE WHEN m % 2 = 1 THEN 'agent-7' END,
       ts, ts, ts, CASE WHEN m % 2 = 1 THEN ts END, CASE WHEN m % 2 = 1 THEN ts + interval '1 s' END,
       CASE WHEN m % 2 = 1 THEN ts + interval '2 s' END, CASE WHEN m % 4 = 1 THEN ts + interval '9 s' END,
       '{"source": "bench", "context": {"campaign": null, "referral": false}}'
  FROM generate_series(1, $messages) AS m
  JOIN seed_customers AS s ON s.c = (m - 1) % $conversations + 1
 CROSS JOIN LATERAL (SELECT now() - (($messages - m) * interval '1 second') AS ts) AS t;
INSERT INTO events (tenant_id, seq, type, conversation_id, customer_id, message_id, payload, occurred_at)
SELECT msg.tenant_id, row_number() OVER (PARTITION BY msg.tenant_id ORDER BY msg.occurred_at, msg.id),
       'message.recorded', msg.conversation_id, s.id, msg.id,
       jsonb_build_object('message', jsonb_build_object('id', msg.id, 'direction', msg.direction,
                          'type', msg.type, 'text', msg.text, 'wamid', msg.wamid,
                          'occurred_at', msg.occurred_at)),
       msg.occurred_at
  FROM messages AS msg JOIN seed_customers AS s ON s.conversation_id = msg.conversation_id
 ORDER BY msg.tenant_id, msg.occurred_at, msg.id;
INSERT INTO event_relay (tenant_id, last_seq, updated_at)
SELECT tenant_id, max(seq), now() FROM events GROUP BY tenant_id;
"""


async def seed_postgres(dsn: str, messages: int) -> None:
    conversations = max(1, messages // MESSAGES_PER_CONVERSATION)
    sql = (
        _PG_SEED.replace("$tenants", str(TENANTS))
        .replace("$conversations", str(conversations))
        .replace("$messages", str(messages))
    )
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(sql)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


def seed_sqlite(path: Path, messages: int) -> None:
    """The same rows as on PostgreSQL, in SQLAlchemy's SQLite storage (UUIDs as 32 hex digits, datetimes as
    naive UTC text)."""
    conversations = max(1, messages // MESSAGES_PER_CONVERSATION)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)

    def at(moment: dt.datetime) -> str:
        return moment.strftime("%Y-%m-%d %H:%M:%S.%f")

    def hexid(kind: str, n: int) -> str:
        return uuid.uuid5(uuid.NAMESPACE_OID, f"{kind}{n}").hex

    db = sqlite3.connect(path)
    db.execute("PRAGMA foreign_keys=ON")
    with db:
        db.execute("INSERT INTO organizations VALUES ('bench', 'Bench', ?)", (at(now),))
        settings = '{"timezone": "UTC", "inactivity_timeout_seconds": 86400}'
        db.executemany(
            "INSERT INTO tenants VALUES (?, 'bench', ?, ?, ?, ?)",
            [(f"bench-{t}", f"Bench {t}", settings, at(now), at(now)) for t in range(1, TENANTS + 1)],
        )
        tenant_of = {c: f"bench-{c % TENANTS + 1}" for c in range(1, conversations + 1)}
        db.executemany(
            "INSERT INTO customers (tenant_id, id, display_name, language, preferences, consent, attributes,"
            " version, created_at, updated_at) VALUES (?, ?, ?, 'pt-BR', '{}', '{\"marketing\": false}',"
            ' \'{"tier": "gold"}\', 1, ?, ?)',
            [(tenant_of[c], hexid("customer", c), f"Customer {c}", at(now), at(now)) for c in tenant_of],
        )
        db.executemany(
            "INSERT INTO customer_identities VALUES (?, 'whatsapp', ?, ?, ?)",
            [(tenant_of[c], str(100000000000 + c), hexid("customer", c), at(now)) for c in tenant_of],
        )
        db.executemany(
            "INSERT INTO conversations (tenant_id, id, customer_id, channel, business_number_id, state,"
            " state_changed_at, started_at, last_activity_at, metadata, version, created_at, updated_at)"
            " VALUES (?, ?, ?, 'whatsapp', 'bn-1', 'active', ?, ?, ?, '{\"queue\": \"sales\"}', 3, ?, ?)",
            [
                (tenant_of[c], hexid("conversation", c), hexid("customer", c), *[at(now)] * 5)
                for c in tenant_of
            ],
        )
        seq: dict[str, int] = {}
        batch_messages, batch_events = [], []
        for m in range(1, messages + 1):
            c = (m - 1) % conversations + 1
            tenant = tenant_of[c]
            moment = at(now - dt.timedelta(seconds=messages - m))
            text = f"Hello, this is message {m}: could you tell me where my order is? Thanks a lot!"
            message_id = hexid("message", m)
            inbound = m % 2 == 0
            batch_messages.append(
                (tenant, message_id, hexid("conversation", c), "inbound" if inbound else "outbound",
                 f"wamid.HBgL{message_id}", text, "customer" if inbound else "agent", moment, moment, moment)
            )  # fmt: skip
            seq[tenant] = seq.get(tenant, 0) + 1
            payload = orjson.dumps({"message": {"id": str(uuid.UUID(message_id)), "text": text}}).decode()
            batch_events.append(
                (tenant, m, seq[tenant], "message.recorded", hexid("conversation", c),
                 hexid("customer", c), message_id, payload, moment)
            )  # fmt: skip
            if len(batch_messages) == 10000 or m == messages:
                db.executemany(
                    "INSERT INTO messages (tenant_id, id, conversation_id, direction, wamid, type, text,"
                    " sender_type, occurred_at, created_at, updated_at, metadata)"
                    " VALUES (?, ?, ?, ?, ?, 'text', ?, ?, ?, ?, ?, '{\"source\": \"bench\"}')",
                    batch_messages,
                )
                db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", batch_events)
                batch_messages, batch_events = [], []
        db.executemany(
            "INSERT INTO event_relay (tenant_id, last_seq, updated_at) VALUES (?, ?, ?)",
            [(tenant, last, at(now)) for tenant, last in seq.items()],
        )
    db.close()


# --- Checks ---------------------------------------------------------------------------------------------


def table_digests(path: Path) -> dict[str, str]:
    manifest = orjson.loads(zipfile.ZipFile(path).read("manifest.json"))
    return {table["name"]: table["sha256"] for table in manifest["tables"]}


def row_count(path: Path) -> int:
    manifest = orjson.loads(zipfile.ZipFile(path).read("manifest.json"))
    return sum(table["rows"] for table in manifest["tables"])


# --- Run ------------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.backup", description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--backend", choices=("postgres", "sqlite"), default="postgres")
    p.add_argument("--keep", action="store_true", help="keep the databases and files (paths are printed)")
    args = p.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    suffix = f"{os.getpid()}"
    source_db, target_db = f"sm_bench_backup_{suffix}", f"sm_bench_restore_{suffix}"
    if args.backend == "postgres":
        source_url = sqlalchemy_url(database_dsn(ADMIN_DSN, source_db))
        target_url = sqlalchemy_url(database_dsn(ADMIN_DSN, target_db))
        asyncio.run(create_database(ADMIN_DSN, source_db))
        asyncio.run(create_database(ADMIN_DSN, target_db))
    else:
        source_url = f"sqlite+aiosqlite:///{workdir / 'source.db'}"
        target_url = f"sqlite+aiosqlite:///{workdir / 'target.db'}"
    steps: list[Step] = []
    try:
        migrated = run_measured("migrate", ["migrate"], cli_env(source_url), 0, workdir)
        started = time.monotonic()
        if args.backend == "postgres":
            asyncio.run(seed_postgres(database_dsn(ADMIN_DSN, source_db), args.messages))
        else:
            seed_sqlite(workdir / "source.db", args.messages)
        seeded = time.monotonic() - started
        print(f"seeded {args.messages} messages in {seeded:.1f} s (migration {migrated.seconds:.1f} s)")

        first, second = workdir / "backup.zip", workdir / "again.zip"
        step = run_measured("backup", ["backup", "--out", str(first)], cli_env(source_url), 0, workdir)
        step.rows = row_count(first)
        step.detail = f"file {first.stat().st_size / 2**20:.0f} MiB"
        steps.append(step)
        steps.append(
            run_measured(
                "backup verify", ["backup", "verify", str(first)], cli_env(source_url), step.rows, workdir
            )
        )
        restore = run_measured("restore", ["restore", str(first)], cli_env(target_url), step.rows, workdir)
        restore.detail = "into an empty database, migration included"
        steps.append(restore)
        again = run_measured("backup of the restore", ["backup", "--out", str(second)], cli_env(target_url),
                             step.rows, workdir)  # fmt: skip
        steps.append(again)
        before, after = table_digests(first), table_digests(second)
        differing = [name for name in before if name != "audit_log" and before[name] != after.get(name)]
        print()
        print(f"{'step':<24}{'wall s':>9}{'peak RSS MiB':>14}{'rows/s':>11}  detail")
        for s in steps:
            rate = f"{s.rows / s.seconds:,.0f}" if s.rows else ""
            print(f"{s.name:<24}{s.seconds:>9.1f}{s.peak_rss_mib:>14.0f}{rate:>11}  {s.detail}")
        print()
        print(f"{step.rows} rows ({args.messages} messages), {args.backend}")
        print(
            "checksums after backup → restore → backup:", "equal" if not differing else f"DIFFER: {differing}"
        )
        if args.keep:
            print(f"kept: {workdir}, {source_url}, {target_url}")
    finally:
        if not args.keep:
            for path in workdir.iterdir():
                path.unlink()
            workdir.rmdir()
            if args.backend == "postgres":
                asyncio.run(drop_database(ADMIN_DSN, source_db))
                asyncio.run(drop_database(ADMIN_DSN, target_db))


if __name__ == "__main__":
    main()
