"""Analytics at scale (issue 7): seed one tenant with N messages over the last 30 days straight into a fresh
database, time `state-manager analytics rebuild` (the projection built from the tables), an incremental
`analytics refresh` after late read receipts, and every report over the last 30 days through real HTTP.

    .venv/bin/python -m bench.analytics                      # PostgreSQL, 1,000,000 messages
    .venv/bin/python -m bench.analytics --messages 100000 --keep
    .venv/bin/python -m bench.analytics --reuse sm_bench_analytics_1234   # the reports again, on a kept one
    .venv/bin/python -m bench.analytics --analyze-every 0    # the projection without statistics
    .venv/bin/python -m bench.analytics --backend sqlite     # the embedded default, 100,000 messages

One tenant, three business numbers, 50 agents and a bot. Conversations of ten messages each (customer and
reply in turn, seconds to minutes apart), spread evenly over the last 30 days; each has its customer (60 %
as many customers as conversations: 40 % come back about 18 days later), an agent participant (joined,
left at the close), receipts on its outbound messages (about 95 % delivered, 70 % read, 3 % failed with a
WhatsApp error code), its close (most), expiry (some) or none (the open ones of the last 12 hours), and
one numbered event. Wall time and peak RSS (wait4) of each CLI process; the median, p95 and max of
`--runs` sequential requests per report, after one warm-up. The projection's sums and the reports' totals
are checked against counts from the live tables. See docs/benchmarks.md, "Analytics".
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http.client
import os
import random
import re
import sqlite3
import statistics
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import orjson

from bench.backup import Step, cli_env, run_measured
from bench.report import git_commit
from bench.server import (
    REPO_ROOT,
    ManagedServer,
    create_database,
    database_dsn,
    drop_database,
    free_port,
    sqlalchemy_url,
)
from bench.sysstat import CLK_TCK, _machine_busy_ticks, machine_busy_percent
from state_manager.analytics.models import PROJECTION_TABLES as projection_tables

ADMIN_DSN = os.environ.get("BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
TENANT = "bench-analytics"
MESSAGES_PER_CONVERSATION = 10
CUSTOMER_SHARE = 0.6  # customers per conversation: conversation c and c + customers share one
AGENTS = 50
TARGET_MS = 1000.0
PROJECTION_TABLES = tuple(table.name for table in projection_tables)
FAILURES = (  # (code, title, weight out of 10)
    ("131047", "Re-engagement message", 4),
    ("131026", "Message undeliverable", 3),
    ("130472", "User's number is part of an experiment", 2),
    ("131049", "Meta chose not to deliver", 1),
)


# --- Seeding: PostgreSQL ---------------------------------------------------------------------------------

# The shape of the data, on both backends (SQLite's seeding below follows the same rules in Python):
# - conversation c starts at an even spacing over [now - 30 days + 2 h, now - 2 h]; its pace (0.25-3)
#   stretches its gaps: message j comes pace x ((j - 1) x 120 s + up to 100 s) after the start, so gaps
#   run from about 5 s to 11 minutes;
# - odd messages are the customer's, even ones the replies: in half the conversations a bot greets
#   first (message 2), the rest is the conversation's agent (50 agents, the low numbers busier);
# - outbound receipts: sent 1 s after; 3 % failed, 2 % sent only, 25 % delivered, 70 % read;
# - open (active, waiting, pending): half of those started in the last 12 hours; expired: 8 % of those
#   started before the last 27 hours (24 h after their last message); closed: the rest, a little after
#   their last message.
_PG_SEED = """
SELECT setseed(0.42);
INSERT INTO organizations VALUES ('bench', 'Bench', now() - interval '31 days');
INSERT INTO tenants (id, organization_id, name, settings, created_at, updated_at)
VALUES ('$tenant', 'bench', 'Bench analytics', '{"timezone": "UTC", "inactivity_timeout_seconds": 86400}',
        now() - interval '31 days', now() - interval '31 days');

CREATE TEMP TABLE seed_conversations AS
SELECT c, md5('conversation' || c)::uuid AS id, (c - 1) % $customers + 1 AS customer_n,
       'bn-' || (c % 3 + 1) AS number,
       'agent-' || (1 + floor($agents * power(random(), 1.5)))::int AS agent,
       random() < 0.5 AS bot_first,
       now() - interval '30 days' + interval '2 hours'
         + (c - 1) * ((interval '30 days' - interval '4 hours') / $conversations) AS started_at,
       0.25 + 2.75 * random() AS pace, random() AS fate, random() AS close_pick
  FROM generate_series(1, $conversations) AS c;

CREATE TEMP TABLE seed_messages AS
SELECT m, s.c, k.j,
       s.started_at
         + make_interval(secs => s.pace * CASE WHEN k.j > 1 THEN (k.j - 1) * 120 + random() * 100 ELSE 0 END)
         AS at,
       random() AS receipt, 2 + 8 * random() AS deliver_secs, 5 + 1800 * power(random(), 2) AS read_secs,
       floor(random() * 10)::int AS code_pick
  FROM generate_series(1, $messages) AS m
 CROSS JOIN LATERAL (SELECT (m - 1) / 10 + 1 AS c, (m - 1) % 10 + 1 AS j) AS k
  JOIN seed_conversations AS s ON s.c = k.c;

CREATE TEMP TABLE seed_final AS
SELECT s.*, e.last_at, e.last_inbound_at,
       CASE WHEN s.bot_first THEN e.fourth_at ELSE e.second_at END
         - make_interval(secs => 2 + 3 * s.pace) AS agent_joined_at,
       st.state,
       CASE st.state WHEN 'closed' THEN e.last_at + make_interval(secs => s.pace * (30 + 150 * s.close_pick))
                     WHEN 'expired' THEN e.last_at + interval '24 hours' END AS closed_at
  FROM seed_conversations AS s
  JOIN (SELECT c, max(at) AS last_at, max(at) FILTER (WHERE j = 9) AS last_inbound_at,
               max(at) FILTER (WHERE j = 2) AS second_at, max(at) FILTER (WHERE j = 4) AS fourth_at
          FROM seed_messages GROUP BY c) AS e ON e.c = s.c
 CROSS JOIN LATERAL (
       SELECT CASE WHEN s.started_at > now() - interval '12 hours' AND s.fate < 0.5 THEN
                        CASE WHEN s.fate < 0.35 THEN 'active' WHEN s.fate < 0.45 THEN 'waiting'
                             ELSE 'pending' END
                   WHEN s.fate >= 0.92 AND s.started_at < now() - interval '27 hours' THEN 'expired'
                   ELSE 'closed' END AS state) AS st;

INSERT INTO customers (tenant_id, id, display_name, language, preferences, consent, attributes, version,
                       created_at, updated_at)
SELECT '$tenant', md5('customer' || n)::uuid, 'Customer ' || n, 'pt-BR', '{}', '{"marketing": false}', '{}',
       1, now() - interval '31 days', now() - interval '31 days'
  FROM generate_series(1, $customers) AS n;
INSERT INTO customer_identities (tenant_id, channel, external_id, customer_id, created_at)
SELECT '$tenant', 'whatsapp', (5511900000000 + n)::text, md5('customer' || n)::uuid,
       now() - interval '31 days'
  FROM generate_series(1, $customers) AS n;

INSERT INTO conversations (tenant_id, id, customer_id, channel, business_number_id, business_display_number,
                           genesys_conversation_id, state, state_reason, state_changed_at, started_at,
                           last_activity_at, last_inbound_at, last_outbound_at, reply_window_ends_at,
                           closed_at, close_reason, metadata, version, created_at, updated_at)
SELECT '$tenant', id, md5('customer' || customer_n)::uuid, 'whatsapp', number,
       '+55 11 4000-000' || substr(number, 4), md5('genesys' || c), state,
       CASE state WHEN 'closed' THEN 'resolved' WHEN 'expired' THEN 'inactivity' END,
       coalesce(closed_at, agent_joined_at), started_at, last_at, last_inbound_at, last_at,
       last_inbound_at + interval '24 hours', closed_at,
       CASE state WHEN 'closed' THEN 'resolved' WHEN 'expired' THEN 'inactivity' END,
       '{"queue": "support"}', CASE WHEN closed_at IS NULL THEN 3 ELSE 4 END, started_at,
       coalesce(closed_at, last_at)
  FROM seed_final;

INSERT INTO conversation_participants (tenant_id, id, conversation_id, role, participant_ref, display_name,
                                       joined_at, left_at, metadata)
SELECT '$tenant', md5('participant' || c)::uuid, id, 'agent', agent, 'Agent ' || substr(agent, 7),
       agent_joined_at, closed_at, '{}'
  FROM seed_final;

INSERT INTO messages (tenant_id, id, conversation_id, direction, wamid, genesys_message_id, type, text,
                      sender_type, sender_id, occurred_at, created_at, updated_at, queued_at, sent_at,
                      delivered_at, read_at, failed_at, failure_code, failure_title, metadata)
SELECT '$tenant', md5('message' || m.m)::uuid, f.id, d.direction, 'wamid.HBgL' || md5('wamid' || m.m),
       CASE WHEN d.direction = 'outbound' THEN md5('gmsg' || m.m) END, 'text',
       CASE WHEN d.direction = 'inbound' THEN 'Hi, where is my order ' || f.c || '? (' || m.j || ')'
            ELSE 'Thanks for waiting: order ' || f.c || ' left our warehouse today.' END,
       d.sender_type, d.sender_id, m.at, m.at, coalesce(r.read_at, r.delivered_at, r.failed_at, m.at),
       r.queued_at, r.sent_at, r.delivered_at, r.read_at, r.failed_at, r.failure_code, r.failure_title,
       '{"source": "bench"}'
  FROM seed_messages AS m
  JOIN seed_final AS f ON f.c = m.c
 CROSS JOIN LATERAL (
       SELECT CASE WHEN m.j % 2 = 1 THEN 'inbound' ELSE 'outbound' END AS direction,
              CASE WHEN m.j % 2 = 1 THEN 'customer' WHEN m.j = 2 AND f.bot_first THEN 'bot' ELSE 'agent' END
                AS sender_type,
              CASE WHEN m.j % 2 = 1 THEN (5511900000000 + f.customer_n)::text
                   WHEN m.j = 2 AND f.bot_first THEN 'helper' ELSE f.agent END AS sender_id) AS d
 CROSS JOIN LATERAL (
       SELECT CASE WHEN d.direction = 'outbound' THEN m.at END AS queued_at,
              CASE WHEN d.direction = 'outbound' AND m.receipt >= 0.03 THEN m.at + interval '1 second' END
                AS sent_at,
              CASE WHEN d.direction = 'outbound' AND m.receipt >= 0.05
                   THEN m.at + make_interval(secs => m.deliver_secs) END AS delivered_at,
              CASE WHEN d.direction = 'outbound' AND m.receipt >= 0.30
                   THEN m.at + make_interval(secs => m.deliver_secs + m.read_secs) END AS read_at,
              CASE WHEN d.direction = 'outbound' AND m.receipt < 0.03
                   THEN m.at + make_interval(secs => m.deliver_secs) END AS failed_at,
              CASE WHEN d.direction = 'outbound' AND m.receipt < 0.03 THEN
                   CASE WHEN m.code_pick < 4 THEN '131047' WHEN m.code_pick < 7 THEN '131026'
                        WHEN m.code_pick < 9 THEN '130472' ELSE '131049' END END AS failure_code,
              CASE WHEN d.direction = 'outbound' AND m.receipt < 0.03 THEN
                   CASE WHEN m.code_pick < 4 THEN 'Re-engagement message'
                        WHEN m.code_pick < 7 THEN 'Message undeliverable'
                        WHEN m.code_pick < 9 THEN 'User''s number is part of an experiment'
                        ELSE 'Meta chose not to deliver' END END AS failure_title) AS r;

INSERT INTO events (tenant_id, seq, type, conversation_id, customer_id, payload, occurred_at)
SELECT '$tenant', row_number() OVER (ORDER BY at, c), type, id, md5('customer' || customer_n)::uuid,
       payload, at
  FROM (SELECT c, id, customer_n, coalesce(closed_at, started_at) AS at,
               CASE WHEN closed_at IS NULL THEN 'conversation.created' ELSE 'conversation.state_changed' END
                 AS type,
               CASE WHEN closed_at IS NULL
                    THEN jsonb_build_object('state', state, 'channel', 'whatsapp',
                                            'business_number_id', number)
                    ELSE jsonb_build_object('from', 'active', 'to', state, 'version', 4,
                                            'reason', CASE state WHEN 'closed' THEN 'resolved'
                                                                 ELSE 'inactivity' END) END AS payload
          FROM seed_final) AS e;
INSERT INTO event_relay (tenant_id, last_seq, updated_at)
SELECT '$tenant', max(seq), now() FROM events WHERE tenant_id = '$tenant';
"""


def _sql(template: str, conversations: int) -> str:
    values: dict[str, object] = {
        "tenant": TENANT,
        "conversations": conversations,
        "customers": customers_for(conversations),
        "messages": conversations * MESSAGES_PER_CONVERSATION,
        "agents": AGENTS,
    }
    for name in sorted(values, key=len, reverse=True):  # longest first: no name is cut by a shorter one
        template = template.replace(f"${name}", str(values[name]))
    return template


def customers_for(conversations: int) -> int:
    return max(1, round(conversations * CUSTOMER_SHARE))


async def seed_postgres(dsn: str, conversations: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(_sql(_PG_SEED, conversations))
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


# --- Seeding: SQLite (the same rules, in Python) ----------------------------------------------------------


def seed_sqlite(path: Path, conversations: int) -> None:
    """SQLAlchemy's SQLite storage: UUIDs as 32 hex digits, datetimes as naive UTC text."""
    rng = random.Random(42)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    first = now - dt.timedelta(days=30) + dt.timedelta(hours=2)
    spacing = (dt.timedelta(days=30) - dt.timedelta(hours=4)) / conversations
    customers = customers_for(conversations)

    def at(moment: dt.datetime | None) -> str | None:
        return None if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S.%f")

    def hexid(kind: str, n: int) -> str:
        return uuid.uuid5(uuid.NAMESPACE_OID, f"{kind}{n}").hex

    def wa_id(n: int) -> str:
        return str(5511900000000 + n)

    db = sqlite3.connect(path)
    db.execute("PRAGMA foreign_keys=ON")
    with db:
        month_ago = at(now - dt.timedelta(days=31))
        db.execute("INSERT INTO organizations VALUES ('bench', 'Bench', ?)", (month_ago,))
        db.execute(
            "INSERT INTO tenants VALUES (?, 'bench', 'Bench analytics', ?, ?, ?)",
            (TENANT, '{"timezone": "UTC", "inactivity_timeout_seconds": 86400}', month_ago, month_ago),
        )
        db.executemany(
            "INSERT INTO customers (tenant_id, id, display_name, language, preferences, consent,"
            " attributes, version, created_at, updated_at)"
            " VALUES (?, ?, ?, 'pt-BR', '{}', '{\"marketing\": false}', '{}', 1, ?, ?)",
            [
                (TENANT, hexid("customer", n), f"Customer {n}", month_ago, month_ago)
                for n in range(1, customers + 1)
            ],
        )
        db.executemany(
            "INSERT INTO customer_identities VALUES (?, 'whatsapp', ?, ?, ?)",
            [(TENANT, wa_id(n), hexid("customer", n), month_ago) for n in range(1, customers + 1)],
        )
        conversation_rows: list[tuple[Any, ...]] = []
        participant_rows: list[tuple[Any, ...]] = []
        message_rows: list[tuple[Any, ...]] = []
        event_rows: list[tuple[Any, ...]] = []
        for c in range(1, conversations + 1):
            customer_n = (c - 1) % customers + 1
            number = f"bn-{c % 3 + 1}"
            agent = f"agent-{1 + int(AGENTS * rng.random() ** 1.5)}"
            bot_first = rng.random() < 0.5
            started = first + (c - 1) * spacing
            pace = 0.25 + 2.75 * rng.random()
            fate = rng.random()
            times = [
                started + dt.timedelta(seconds=pace * ((j - 1) * 120 + (rng.random() * 100 if j > 1 else 0)))
                for j in range(1, MESSAGES_PER_CONVERSATION + 1)
            ]
            if started > now - dt.timedelta(hours=12) and fate < 0.5:
                state = "active" if fate < 0.35 else "waiting" if fate < 0.45 else "pending"
            elif fate >= 0.92 and started < now - dt.timedelta(hours=27):
                state = "expired"
            else:
                state = "closed"
            closed_at = (
                times[-1] + dt.timedelta(seconds=pace * (30 + 150 * rng.random()))
                if state == "closed"
                else times[-1] + dt.timedelta(hours=24)
                if state == "expired"
                else None
            )
            joined = times[3 if bot_first else 1] - dt.timedelta(seconds=2 + 3 * pace)
            conversation_id = hexid("conversation", c)
            reason = {"closed": "resolved", "expired": "inactivity"}.get(state)
            conversation_rows.append(
                (TENANT, conversation_id, hexid("customer", customer_n), number,
                 f"+55 11 4000-000{number[3:]}", uuid.uuid5(uuid.NAMESPACE_OID, f"genesys{c}").hex, state,
                 reason, at(closed_at or joined), at(started), at(times[-1]), at(times[-2]), at(times[-1]),
                 at(times[-2] + dt.timedelta(hours=24)), at(closed_at), reason, 3 if closed_at is None else 4,
                 at(started), at(closed_at or times[-1]))
            )  # fmt: skip
            participant_rows.append(
                (TENANT, hexid("participant", c), conversation_id, agent, f"Agent {agent[6:]}", at(joined),
                 at(closed_at))
            )  # fmt: skip
            for j, moment in enumerate(times, start=1):
                m = (c - 1) * MESSAGES_PER_CONVERSATION + j
                inbound = j % 2 == 1
                bot = j == 2 and bot_first
                receipt, deliver = rng.random(), 2 + 8 * rng.random()
                read_secs, code_pick = 5 + 1800 * rng.random() ** 2, int(rng.random() * 10)
                sent = delivered = read = failed = None
                code = title = None
                if not inbound:
                    sent = moment + dt.timedelta(seconds=1) if receipt >= 0.03 else None
                    delivered = moment + dt.timedelta(seconds=deliver) if receipt >= 0.05 else None
                    read = moment + dt.timedelta(seconds=deliver + read_secs) if receipt >= 0.30 else None
                    if receipt < 0.03:
                        failed = moment + dt.timedelta(seconds=deliver)
                        code, title = _failure(code_pick)
                message_id = hexid("message", m)
                text = (
                    f"Hi, where is my order {c}? ({j})"
                    if inbound
                    else f"Thanks for waiting: order {c} left our warehouse today."
                )
                message_rows.append(
                    (TENANT, message_id, conversation_id, "inbound" if inbound else "outbound",
                     f"wamid.HBgL{message_id}", None if inbound else hexid("gmsg", m), text,
                     "customer" if inbound else "bot" if bot else "agent",
                     wa_id(customer_n) if inbound else "helper" if bot else agent,
                     at(moment), at(moment), at(read or delivered or failed or moment),
                     None if inbound else at(moment), at(sent), at(delivered), at(read), at(failed), code,
                     title)
                )  # fmt: skip
            payload: dict[str, Any]
            if closed_at is None:
                payload = {"state": state, "channel": "whatsapp", "business_number_id": number}
                event = ("conversation.created", started)
            else:
                payload = {"from": "active", "to": state, "version": 4, "reason": reason}
                event = ("conversation.state_changed", closed_at)
            event_rows.append(
                (event[1], c, event[0], conversation_id, hexid("customer", customer_n),
                 orjson.dumps(payload).decode())
            )  # fmt: skip
        db.executemany(
            "INSERT INTO conversations (tenant_id, id, customer_id, channel, business_number_id,"
            " business_display_number, genesys_conversation_id, state, state_reason, state_changed_at,"
            " started_at, last_activity_at, last_inbound_at, last_outbound_at, reply_window_ends_at,"
            " closed_at, close_reason, metadata, version, created_at, updated_at)"
            " VALUES (?, ?, ?, 'whatsapp', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '{\"queue\": \"support\"}',"
            " ?, ?, ?)",
            conversation_rows,
        )
        db.executemany(
            "INSERT INTO conversation_participants (tenant_id, id, conversation_id, role, participant_ref,"
            " display_name, joined_at, left_at, metadata) VALUES (?, ?, ?, 'agent', ?, ?, ?, ?, '{}')",
            participant_rows,
        )
        db.executemany(
            "INSERT INTO messages (tenant_id, id, conversation_id, direction, wamid, genesys_message_id,"
            " type, text, sender_type, sender_id, occurred_at, created_at, updated_at, queued_at, sent_at,"
            " delivered_at, read_at, failed_at, failure_code, failure_title, metadata)"
            " VALUES (?, ?, ?, ?, ?, ?, 'text', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
            ' \'{"source": "bench"}\')',
            message_rows,
        )
        event_rows.sort()
        db.executemany(
            "INSERT INTO events (tenant_id, id, seq, type, conversation_id, customer_id, payload,"
            " occurred_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (TENANT, seq, seq, kind, conversation_id, customer_id, payload, at(moment))
                for seq, (moment, _, kind, conversation_id, customer_id, payload) in enumerate(event_rows, 1)
            ],
        )
        db.execute(
            "INSERT INTO event_relay (tenant_id, last_seq, updated_at) VALUES (?, ?, ?)",
            (TENANT, len(event_rows), at(now)),
        )
    db.execute("ANALYZE")
    db.close()


def _failure(pick: int) -> tuple[str, str]:
    for code, title, weight in FAILURES:
        if pick < weight:
            return code, title
        pick -= weight
    return FAILURES[-1][0], FAILURES[-1][1]


# --- Reading the database (both backends) ----------------------------------------------------------------


class Store:
    """The few statements the benchmark runs itself, on either backend (no SQLAlchemy: plain drivers)."""

    def __init__(self, backend: str, target: str) -> None:
        self.backend = backend
        self.target = target  # a DSN, or the SQLite file

    def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        if self.backend == "postgres":
            return asyncio.run(self._pg_fetch(sql))
        db = sqlite3.connect(self.target)
        try:
            return list(db.execute(sql).fetchall())
        finally:
            db.close()

    def script(self, sql: str) -> None:
        """Statements in one transaction."""
        if self.backend == "postgres":
            asyncio.run(self._pg_script(sql))
            return
        db = sqlite3.connect(self.target)
        try:
            with db:
                db.executescript("BEGIN;\n" + sql + "\nCOMMIT;")
        finally:
            db.close()

    async def _pg_fetch(self, sql: str) -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(self.target)
        try:
            return [tuple(row) for row in await conn.fetch(sql)]
        finally:
            await conn.close()

    async def _pg_script(self, sql: str) -> None:
        conn = await asyncpg.connect(self.target)
        try:
            async with conn.transaction():
                await conn.execute(sql)
        finally:
            await conn.close()

    def projection_sizes(self) -> list[tuple[str, int, int | None]]:
        """(table, rows, bytes with indexes and TOAST; None where the backend cannot tell)."""
        found = []
        for table in PROJECTION_TABLES:
            rows = int(self.fetch(f"SELECT count(*) FROM {table}")[0][0])
            size: int | None = None
            if self.backend == "postgres":
                size = int(self.fetch(f"SELECT pg_total_relation_size('{table}')")[0][0])
            found.append((table, rows, size))
        return found

    def source_figures(self) -> dict[str, int]:
        """What the reports must add up to, counted from the live tables."""
        (row,) = self.fetch(
            "SELECT count(*) FILTER (WHERE direction = 'inbound'),"
            " count(*) FILTER (WHERE direction = 'outbound'),"
            " count(*) FILTER (WHERE direction = 'outbound'"
            " AND (delivered_at IS NOT NULL OR read_at IS NOT NULL)),"
            " count(*) FILTER (WHERE direction = 'outbound' AND read_at IS NOT NULL),"
            " count(*) FILTER (WHERE direction = 'outbound' AND status = 'failed')"
            f" FROM messages WHERE tenant_id = '{TENANT}'"
        )
        (started,) = self.fetch(f"SELECT count(*) FROM conversations WHERE tenant_id = '{TENANT}'")
        names = ("inbound", "outbound", "delivered", "read", "failed")
        return {
            "started": int(started[0]),
            **{name: int(value) for name, value in zip(names, row, strict=True)},
        }

    def projected_figures(self) -> dict[str, int]:
        (row,) = self.fetch(
            "SELECT sum(started), sum(inbound), sum(outbound), sum(delivered), sum(read), sum(failed)"
            f" FROM analytics_facts WHERE tenant_id = '{TENANT}'"
        )
        names = ("started", "inbound", "outbound", "delivered", "read", "failed")
        return {name: int(value or 0) for name, value in zip(names, row, strict=True)}


# --- The incremental path ---------------------------------------------------------------------------------


def touch(store: Store, conversations: int) -> tuple[int, int]:
    """Late read receipts for the most recent `conversations` conversations that have an outbound message
    delivered but not read: each such message becomes read (2 minutes after its delivery), with a numbered
    `message.status_changed` event each after the tenant's last number, as the relay leaves them.
    Returns (conversations, events)."""
    (head,) = store.fetch(
        f"SELECT coalesce(max(seq), 0), coalesce(max(id), 0) FROM events WHERE tenant_id = '{TENANT}'"
    )
    last, last_id = int(head[0]), int(head[1])
    if store.backend == "postgres":

        def read_at(delivered: str) -> str:
            return f"{delivered} + interval '2 minutes'"

        now, event_id, next_id = "now()", "", ""
    else:  # naive UTC text; events.id is given (the next free number, as the service does under SQLite)

        def read_at(delivered: str) -> str:
            return f"strftime('%Y-%m-%d %H:%M:%S', {delivered}, '+120 seconds') || substr({delivered}, 20)"

        now = "strftime('%Y-%m-%d %H:%M:%S', 'now') || '.000000'"
        event_id, next_id = "id, ", f"{last_id} + row_number() OVER (ORDER BY t.delivered_at, t.id), "
    unread = "{}direction = 'outbound' AND {}read_at IS NULL AND {}delivered_at IS NOT NULL"
    store.script(f"""
CREATE TEMP TABLE touched AS
SELECT id, conversation_id, delivered_at
  FROM messages
 WHERE tenant_id = '{TENANT}' AND {unread.format("", "", "")}
   AND conversation_id IN (
       SELECT id FROM conversations AS c
        WHERE tenant_id = '{TENANT}' AND EXISTS (
              SELECT 1 FROM messages AS m
               WHERE m.tenant_id = c.tenant_id AND m.conversation_id = c.id
                 AND {unread.format("m.", "m.", "m.")})
        ORDER BY started_at DESC LIMIT {conversations});
UPDATE messages SET read_at = {read_at("touched.delivered_at")}, updated_at = {now}
  FROM touched WHERE messages.tenant_id = '{TENANT}' AND messages.id = touched.id;
INSERT INTO events (tenant_id, {event_id}seq, type, conversation_id, customer_id, message_id, payload,
                    occurred_at)
SELECT '{TENANT}', {next_id}{last} + row_number() OVER (ORDER BY t.delivered_at, t.id),
       'message.status_changed', t.conversation_id, c.customer_id, t.id,
       '{{"from": "delivered", "to": "read", "failure": null}}', {read_at("t.delivered_at")}
  FROM touched AS t JOIN conversations AS c ON c.tenant_id = '{TENANT}' AND c.id = t.conversation_id;
UPDATE event_relay SET updated_at = {now},
       last_seq = (SELECT max(seq) FROM events WHERE tenant_id = '{TENANT}')
 WHERE tenant_id = '{TENANT}';
DROP TABLE touched;
""")
    (after,) = store.fetch(
        "SELECT count(*), count(DISTINCT conversation_id) FROM events"
        f" WHERE tenant_id = '{TENANT}' AND seq > {last}"
    )
    return int(after[1]), int(after[0])


# --- Reports over HTTP -------------------------------------------------------------------------------------


@dataclass
class Timed:
    name: str
    path: str
    params: dict[str, str]
    samples_ms: list[float] = field(default_factory=list)
    warmup_ms: float = 0.0
    body_bytes: int = 0
    periods: int | None = None
    body: Any = None

    def quantile(self, q: float) -> float:
        ordered = sorted(self.samples_ms)
        if len(ordered) == 1:
            return ordered[0]
        return statistics.quantiles(ordered, n=100, method="inclusive")[round(q * 100) - 1]


def report_plan(start: str, end: str) -> list[Timed]:
    window = {"from": start, "to": end}
    return [
        Timed("conversations by day", "/v1/analytics/conversations", {**window, "granularity": "day"}),
        Timed("messages by day", "/v1/analytics/messages", {**window, "granularity": "day"}),
        Timed("customers by day", "/v1/analytics/customers", {**window, "granularity": "day"}),
        Timed("agents by day", "/v1/analytics/agents", {**window, "granularity": "day"}),
        Timed("conversations by hour", "/v1/analytics/conversations", {**window, "granularity": "hour"}),
        Timed("conversations by week", "/v1/analytics/conversations", {**window, "granularity": "week"}),
        Timed(
            "conversations, agent=agent-7",
            "/v1/analytics/conversations",
            {**window, "granularity": "day", "agent": "agent-7"},
        ),
        Timed(
            "messages, business_number=bn-2",
            "/v1/analytics/messages",
            {**window, "granularity": "day", "business_number": "bn-2"},
        ),
        Timed(
            "conversations by day, CSV",
            "/v1/analytics/conversations",
            {**window, "granularity": "day", "format": "csv"},
        ),
    ]


class Client:
    """One keep-alive connection: every request goes to the same server worker, one at a time."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=300)
        self.headers = headers

    def get(self, path: str, params: dict[str, str]) -> tuple[float, bytes]:
        started = time.perf_counter()
        self.connection.request("GET", f"{path}?{urlencode(params)}", headers=self.headers)
        response = self.connection.getresponse()
        body = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise SystemExit(f"GET {path} {params}: {response.status} {body[:2000]!r}")
        return elapsed, body

    def close(self) -> None:
        self.connection.close()


def time_reports(client: Client, plan: list[Timed], runs: int) -> None:
    for timed in plan:
        timed.warmup_ms, body = client.get(timed.path, timed.params)
        for _ in range(runs):
            elapsed, body = client.get(timed.path, timed.params)
            timed.samples_ms.append(elapsed)
        timed.body_bytes = len(body)
        if timed.params.get("format") == "csv":
            timed.periods = max(0, body.count(b"\n") - 1)
        else:
            timed.body = orjson.loads(body)
            series = timed.body.get("series", timed.body.get("agents"))
            timed.periods = len(series) if series is not None else None
        print(
            f"  {timed.name:<34} median {statistics.median(timed.samples_ms):8.1f} ms"
            f"  (warm-up {timed.warmup_ms:.0f} ms)",
            flush=True,
        )


# --- Statistics --------------------------------------------------------------------------------------------


class Analyzer:
    """ANALYZEs the projection tables every `every` seconds while a CLI step runs, as autovacuum does on a
    default PostgreSQL (`autovacuum_naptime` 1 min; a table is analyzed once a tenth of it changed). The
    projection starts empty: without statistics the planner takes its tables for empty ones, and a
    server with autovacuum off (as this machine's) keeps them so. `every` 0: never."""

    def __init__(self, store: Store, every: float) -> None:
        self.store = store
        self.every = every if store.backend == "postgres" else 0.0
        self.runs = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def analyze(self) -> None:
        if self.every > 0:
            self.store.script("ANALYZE " + ", ".join(PROJECTION_TABLES))
            self.runs += 1

    def __enter__(self) -> Analyzer:
        self._stop = threading.Event()
        if self.every > 0:
            self._thread = threading.Thread(target=self._loop, name="analyzer", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.analyze()


# --- Run ---------------------------------------------------------------------------------------------------


def batches_seconds(step: Step, workdir: Path) -> float | None:
    """The CLI's own `<tenant>: N batches in X s` (the work, without the process's start-up)."""
    found = re.search(
        rf"{re.escape(TENANT)}: (\d+) batches in ([\d.]+) s", (workdir / f"{step.name}.log").read_text()
    )
    return float(found.group(2)) if found else None


def _compare(label: str, expected: dict[str, int], got: dict[str, Any]) -> bool:
    differing = {
        name: (expected[name], got.get(name)) for name in expected if got.get(name) != expected[name]
    }
    print(f"{label}: " + ("agree with the tables" if not differing else f"DIFFER (tables, got): {differing}"))
    return not differing


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.analytics", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("postgres", "sqlite"), default="postgres")
    p.add_argument("--messages", type=int, help="default 1,000,000 (PostgreSQL), 100,000 (SQLite)")
    p.add_argument("--runs", type=int, default=10, help="timed requests per report, after one warm-up")
    p.add_argument("--touch", type=int, help="conversations given late read receipts (default: a tenth)")
    p.add_argument("--workers", type=int, default=2, help="server workers (PostgreSQL)")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/1", help="`none`: the in-process cache")
    p.add_argument(
        "--analyze-every",
        type=float,
        default=60.0,
        help="PostgreSQL: ANALYZE the projection every so many seconds during the rebuild and refresh, and"
        " once before the reports, as autovacuum would (0: never; this machine's autovacuum is off)",
    )
    p.add_argument("--keep", action="store_true", help="keep the database (its URL is printed)")
    p.add_argument(
        "--reuse",
        metavar="DATABASE",
        help="PostgreSQL: only time the reports, on a database an earlier run kept (--keep); it is kept",
    )
    args = p.parse_args()
    if args.reuse and args.backend != "postgres":
        p.error("--reuse is for PostgreSQL")
    return args


def main() -> None:
    args = parse_args()
    messages = args.messages or (1_000_000 if args.backend == "postgres" else 100_000)
    conversations = max(1, messages // MESSAGES_PER_CONVERSATION)

    workdir = Path(tempfile.mkdtemp(prefix="bench-analytics-"))
    database = args.reuse or f"sm_bench_analytics_{os.getpid()}"
    if args.backend == "postgres":
        dsn = database_dsn(ADMIN_DSN, database)
        url = sqlalchemy_url(dsn)
        if not args.reuse:
            asyncio.run(create_database(ADMIN_DSN, database))
        store = Store("postgres", dsn)
    else:
        dsn = ""
        url = f"sqlite+aiosqlite:///{workdir / 'state.db'}"
        store = Store("sqlite", str(workdir / "state.db"))
    print(f"commit {git_commit(REPO_ROOT)}, {args.backend}, workdir {workdir}")
    try:
        if args.reuse:
            (found,) = store.fetch(f"SELECT count(*) FROM messages WHERE tenant_id = '{TENANT}'")
            print(f"reusing {database}: {int(found[0]):,} messages, the projection as that run left it")
            ok = True
        else:
            ok = build(args, store, url, workdir, conversations)
        ok = reports(args, store, url, dsn, workdir) and ok
        print()
        print("every figure agrees with the tables" if ok else "SOME FIGURES DISAGREE (see above)")
        if args.keep:
            print(f"kept: {url}, {workdir}")
    finally:
        if not args.keep:
            _remove(workdir)
            if args.backend == "postgres" and not args.reuse:
                asyncio.run(drop_database(ADMIN_DSN, database))


def build(args: argparse.Namespace, store: Store, url: str, workdir: Path, conversations: int) -> bool:
    """Migrate, seed, rebuild the projection, then refresh it after late receipts; prints the figures."""
    messages = conversations * MESSAGES_PER_CONVERSATION
    migrated = run_measured("migrate", ["migrate"], cli_env(url), 0, workdir)
    started = time.monotonic()
    if args.backend == "postgres":
        asyncio.run(seed_postgres(store.target, conversations))
    else:
        seed_sqlite(workdir / "state.db", conversations)
    seeded = time.monotonic() - started
    print(f"seeded {messages:,} messages, {conversations:,} conversations in {seeded:.1f} s"
          f" (migration {migrated.seconds:.1f} s)", flush=True)  # fmt: skip
    source = store.source_figures()

    print(f"machine busy before the rebuild: {machine_busy_percent(1.0):.0f} % of one core", flush=True)
    analyzer = Analyzer(store, args.analyze_every)
    with analyzer:
        rebuild = run_measured(
            "analytics rebuild",
            ["analytics", "rebuild", "--tenant", TENANT],
            cli_env(url),
            conversations,
            workdir,
        )
    rebuild_work = batches_seconds(rebuild, workdir)
    during_rebuild = analyzer.runs
    analyzer.analyze()
    sizes = store.projection_sizes()
    ok = _compare("projection after the rebuild", source, store.projected_figures())

    touched, touch_events = touch(store, args.touch or max(1, conversations // 10))
    source = store.source_figures()
    with analyzer:
        refresh = run_measured(
            "analytics refresh", ["analytics", "refresh", "--tenant", TENANT], cli_env(url), touched, workdir
        )
    refresh_work = batches_seconds(refresh, workdir)
    ok = _compare("projection after the refresh", source, store.projected_figures()) and ok
    analyzer.analyze()
    if analyzer.every:
        print(f"projection ANALYZEd every {analyzer.every:.0f} s (during the rebuild: {during_rebuild}),"
              " after the rebuild and before the reports")  # fmt: skip
    elif args.backend == "postgres":
        print("the projection was never ANALYZEd (--analyze-every 0)")

    print()
    print(f"{'step':<20}{'wall s':>9}{'work s':>9}{'peak RSS MiB':>14}{'conversations/s':>17}  detail")
    for step, work, detail in (
        (rebuild, rebuild_work, f"{conversations:,} conversations, {messages:,} messages"),
        (refresh, refresh_work, f"{touched:,} conversations named by {touch_events:,} new events"),
    ):
        rate = f"{step.rows / work:,.0f}" if work else ""
        work_text = f"{work:.1f}" if work is not None else "?"
        print(
            f"{step.name:<20}{step.seconds:>9.1f}{work_text:>9}{step.peak_rss_mib:>14.0f}{rate:>17}  {detail}"
        )
    print("(work s: the CLI's own figure, without the process's start-up and imports)")
    print()
    print(f"{'projection table':<28}{'rows':>12}{'size MiB':>10}")
    for table, rows, size in sizes:
        size_text = f"{size / 2**20:.0f}" if size is not None else "-"
        print(f"{table:<28}{rows:>12,}{size_text:>10}")
    print()
    return ok


def reports(args: argparse.Namespace, store: Store, url: str, dsn: str, workdir: Path) -> bool:
    """Starts the server, times every report over HTTP, checks their totals; prints the table."""
    server = ManagedServer(
        port=free_port(),
        workers=args.workers if args.backend == "postgres" else 1,
        database_url=url,
        redis_url=None if args.redis_url == "none" or args.backend == "sqlite" else args.redis_url,
        extra_env={},
        log_path=workdir / "server.log",
    )
    Path(server.env["DATA_DIR"]).rmdir()  # its own temporary directory: the run's instead
    server.env["DATA_DIR"] = str(workdir / "data")
    admin_key = server.create_admin_key(dsn)
    busy_before = machine_busy_percent(1.0)  # the machine without this run's server: other work on it
    server.start(timeout=120)
    try:
        client = Client(server.url, {"Authorization": f"Bearer {admin_key}", "X-Tenant-ID": TENANT})
        now = dt.datetime.now(dt.UTC)
        end = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)
        end += dt.timedelta(minutes=15)
        start = end - dt.timedelta(days=30)
        plan = report_plan(start.isoformat().replace("+00:00", "Z"), end.isoformat().replace("+00:00", "Z"))
        print(f"reports from {plan[0].params['from']} to {plan[0].params['to']}, {args.runs} runs each"
              f" after one warm-up; machine busy before the server started: {busy_before:.0f} % of one core",
              flush=True)  # fmt: skip
        busy_started = _busy_ticks()
        time_reports(client, plan, args.runs)
        busy = _busy_ticks()
        client.close()
    finally:
        server.stop()
    print(f"machine busy during the reports: {busy.percent_since(busy_started):.0f} % of one core"
          " (this run's server and PostgreSQL included)")  # fmt: skip

    by_day = plan[1].body
    totals = {name: by_day["totals"][name] for name in ("inbound", "outbound", "delivered", "read", "failed")}
    totals["started"] = plan[0].body["totals"]["started"]
    ok = _compare("reports over 30 days", store.source_figures(), totals)
    behind = [
        timed.name for timed in plan if timed.body is not None and not timed.body["freshness"]["complete"]
    ]
    if behind:
        print(f"NOT COMPLETE (freshness): {behind}")
        ok = False

    print()
    header = f"{'report (last 30 days)':<34}{'rows':>6}{'median ms':>11}{'p95 ms':>9}{'max ms':>9}"
    print(f"{header}{'KiB':>7}  < 1 s")
    for timed in plan:
        worst = max(timed.samples_ms)
        print(
            f"{timed.name:<34}{timed.periods if timed.periods is not None else '':>6}"
            f"{statistics.median(timed.samples_ms):>11.1f}{timed.quantile(0.95):>9.1f}{worst:>9.1f}"
            f"{timed.body_bytes / 1024:>7.0f}  {'met' if worst < TARGET_MS else 'MISSED'}"
        )
    return ok


@dataclass
class _Busy:
    ticks: int
    at: float

    def percent_since(self, earlier: _Busy) -> float:
        return 100.0 * (self.ticks - earlier.ticks) / CLK_TCK / (self.at - earlier.at)


def _busy_ticks() -> _Busy:
    return _Busy(_machine_busy_ticks()[0], time.monotonic())


def _remove(path: Path) -> None:
    for child in path.iterdir():
        if child.is_dir():
            _remove(child)
        else:
            child.unlink()
    path.rmdir()


if __name__ == "__main__":
    main()
