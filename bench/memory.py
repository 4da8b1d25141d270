"""Resident memory per worker (issue 8: under 150 MB per worker with 1,000,000 conversations in the database).

    .venv/bin/python -m bench.memory                          # 1,000,000 conversations, 300 s of load
    .venv/bin/python -m bench.memory --conversations 100000 --duration 60 --keep-db

Creates a fresh PostgreSQL database, migrates it, seeds one tenant straight into it with set-based SQL
(customers and their WhatsApp identities, conversations with three messages each, one numbered event per
conversation; the last 5 % of conversations open and active in the last hours, the rest closed), ANALYZEs
it, and starts `state-manager serve --workers 2` as bench/run.py does (DATABASE_URL, REDIS_URL on a Redis
database of its own). Start-up, cache warming and the background jobs run as they would: the analytics
projector finds a tenant without progress and rebuilds its projection from the live tables, over every
conversation. Meanwhile a load of lookups over many distinct customers (enough to fill each worker's local
cache tier to its bound), inbound messages, paginated lists, analytics reports and customer exports runs for
`--duration` seconds. Each worker's VmRSS and VmHWM (the peak) are read from /proc throughout; the run
prints and writes JSON (bench/results/memory-<UTC>.json) with each worker's peak and final RSS, the target
marked met or MISSED on the peak. See docs/benchmarks.md, "Memory".
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import os
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import redis

from bench import balance
from bench.httpclient import JsonClient
from bench.report import git_commit, machine_info, write_json
from bench.server import (
    REPO_ROOT,
    ManagedServer,
    analyze,
    create_database,
    database_dsn,
    drop_database,
    free_port,
    sqlalchemy_url,
)
from state_manager.analytics.models import PROJECTION_TABLES, analytics_progress

ADMIN_DSN = os.environ.get("BENCH_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_MEMORY_REDIS_URL", "redis://127.0.0.1:6379/3")
TENANT = "bench-memory"
TARGET_MB = 150.0  # issue 8: per worker, resident
CUSTOMER_SHARE = 0.6  # customers per conversation: 40 % of customers have two conversations
OPEN_SHARE = 0.05  # the latest conversations are open
MESSAGES_PER_CONVERSATION = 3
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# --- Seeding ---------------------------------------------------------------------------------------------

# Conversation c (1..N) belongs to customer (c - 1) % customers + 1, starts at an even spacing over the
# last 90 days and is closed, or, the last OPEN_SHARE of them, started in the last 20 hours and open
# (active; the expiry job would close them after 24 h without a message; warming finds the latest).
# Messages: inbound, the agent's reply (sent, delivered, mostly read), inbound again.
_PG_SEED = """
INSERT INTO organizations VALUES ('bench', 'Bench', now() - interval '91 days');
INSERT INTO tenants (id, organization_id, name, settings, created_at, updated_at)
VALUES ('$tenant', 'bench', 'Bench memory', '{"timezone": "UTC", "inactivity_timeout_seconds": 86400}',
        now() - interval '91 days', now() - interval '91 days');

INSERT INTO customers (tenant_id, id, display_name, language, preferences, consent, attributes, version,
                       created_at, updated_at)
SELECT '$tenant', md5('customer' || n)::uuid, 'Customer ' || n, 'pt-BR', '{}', '{"marketing": false}',
       '{"tier": "gold"}', 1, now() - interval '91 days', now() - interval '91 days'
  FROM generate_series(1, $customers) AS n;
INSERT INTO customer_identities (tenant_id, channel, external_id, customer_id, created_at)
SELECT '$tenant', 'whatsapp', (5511900000000 + n)::text, md5('customer' || n)::uuid,
       now() - interval '91 days'
  FROM generate_series(1, $customers) AS n;

CREATE TEMP TABLE seed_conversations AS
SELECT c, md5('conversation' || c)::uuid AS id,
       md5('customer' || ((c - 1) % $customers + 1))::uuid AS customer_id,
       (5511900000000 + (c - 1) % $customers + 1)::text AS wa_id, 'bn-' || (c % 3 + 1) AS number,
       CASE WHEN c > $conversations - $open
            THEN now() - interval '5 minutes' - ($conversations - c) * (interval '20 hours' / $open)
            ELSE now() - interval '90 days' + (c - 1) * (interval '89 days' / $conversations)
       END AS started_at,
       c > $conversations - $open AS open
  FROM generate_series(1, $conversations) AS c;

INSERT INTO conversations (tenant_id, id, customer_id, channel, business_number_id, business_display_number,
                           genesys_conversation_id, state, state_reason, state_changed_at, started_at,
                           last_activity_at, last_inbound_at, last_outbound_at, reply_window_ends_at,
                           closed_at, close_reason, metadata, version, created_at, updated_at)
SELECT '$tenant', id, customer_id, 'whatsapp', number, '+55 11 4000-000' || substr(number, 4),
       md5('genesys' || c), CASE WHEN open THEN 'active' ELSE 'closed' END,
       CASE WHEN open THEN NULL ELSE 'resolved' END,
       started_at + interval '3 minutes', started_at, started_at + interval '2 minutes',
       started_at + interval '2 minutes', started_at + interval '1 minute',
       started_at + interval '24 hours 2 minutes',
       CASE WHEN open THEN NULL ELSE started_at + interval '3 minutes' END,
       CASE WHEN open THEN NULL ELSE 'resolved' END, '{"queue": "support"}', CASE WHEN open THEN 3 ELSE 4 END,
       started_at, started_at + interval '3 minutes'
  FROM seed_conversations;

INSERT INTO messages (tenant_id, id, conversation_id, direction, wamid, genesys_message_id, type, text,
                      sender_type, sender_id, occurred_at, created_at, updated_at, queued_at, sent_at,
                      delivered_at, read_at, metadata)
SELECT '$tenant', md5('message' || m)::uuid, s.id, d.direction, 'wamid.HBgL' || md5('wamid' || m),
       CASE WHEN d.outbound THEN md5('gmsg' || m) END, 'text',
       CASE WHEN d.outbound THEN 'Thanks for waiting: order ' || s.c || ' left our warehouse today.'
            ELSE 'Hi, where is my order ' || s.c || '? (' || k.j || ')' END,
       CASE WHEN d.outbound THEN 'agent' ELSE 'customer' END,
       CASE WHEN d.outbound THEN 'agent-' || (s.c % 50 + 1) ELSE s.wa_id END,
       t.at, t.at, t.at + interval '40 seconds',
       CASE WHEN d.outbound THEN t.at END, CASE WHEN d.outbound THEN t.at + interval '1 second' END,
       CASE WHEN d.outbound THEN t.at + interval '3 seconds' END,
       CASE WHEN d.outbound AND s.c % 10 < 7 THEN t.at + interval '40 seconds' END,
       '{"source": "bench"}'
  FROM generate_series(1, $messages) AS m
 CROSS JOIN LATERAL (SELECT (m - 1) / $per + 1 AS c, (m - 1) % $per + 1 AS j) AS k
  JOIN seed_conversations AS s ON s.c = k.c
 CROSS JOIN LATERAL (SELECT k.j % 2 = 0 AS outbound,
                            CASE WHEN k.j % 2 = 0 THEN 'outbound' ELSE 'inbound' END AS direction) AS d
 CROSS JOIN LATERAL (SELECT s.started_at + (k.j - 1) * interval '1 minute' AS at) AS t;

INSERT INTO events (tenant_id, seq, type, conversation_id, customer_id, payload, occurred_at)
SELECT '$tenant', c, 'conversation.created', id, customer_id,
       jsonb_build_object('state', 'active', 'channel', 'whatsapp', 'business_number_id', number), started_at
  FROM seed_conversations;
INSERT INTO event_relay (tenant_id, last_seq, updated_at) VALUES ('$tenant', $conversations, now());
"""


def seed_sql(conversations: int) -> str:
    values: dict[str, object] = {
        "tenant": TENANT,
        "conversations": conversations,
        "customers": customers_for(conversations),
        "messages": conversations * MESSAGES_PER_CONVERSATION,
        "open": open_for(conversations),
        "per": MESSAGES_PER_CONVERSATION,
    }
    sql = _PG_SEED
    for name in sorted(values, key=len, reverse=True):  # longest first: no name is cut by a shorter one
        sql = sql.replace(f"${name}", str(values[name]))
    return sql


def customers_for(conversations: int) -> int:
    return max(1, round(conversations * CUSTOMER_SHARE))


def open_for(conversations: int) -> int:
    return max(1, round(conversations * OPEN_SHARE))


async def seed_postgres(dsn: str, conversations: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(seed_sql(conversations))
    finally:
        await conn.close()


async def reset_projection(dsn: str) -> None:
    """Empties the analytics projection, as a fresh seed leaves it: the server rebuilds it again."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = ", ".join(table.name for table in (*PROJECTION_TABLES, analytics_progress))
        await conn.execute(f"TRUNCATE {tables}")
    finally:
        await conn.close()


async def table_counts(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        found = {}
        for table in ("customers", "customer_identities", "conversations", "messages", "events"):
            found[table] = int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
        found["database_bytes"] = int(await conn.fetchval("SELECT pg_database_size(current_database())"))
        return found
    finally:
        await conn.close()


async def projection_progress(dsn: str) -> dict[str, Any]:
    """The analytics projection as the background projector left it (rows per table, progress row)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT * FROM analytics_progress WHERE tenant_id = $1", TENANT)
        projected = int(await conn.fetchval("SELECT count(*) FROM analytics_conversations"))
        return {
            "progress": [{k: str(v) for k, v in dict(row).items()} for row in rows],
            "analytics_conversations_rows": projected,
        }
    finally:
        await conn.close()


# --- Memory sampling -------------------------------------------------------------------------------------


def _status_kb(pid: int) -> dict[str, int]:
    found = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                found[key] = int(value.split()[0])
    except OSError:
        return {}
    return found


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rfind(")") + 2 :].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


@dataclass
class ProcessMemory:
    pid: int
    role: str  # "supervisor", "worker", or another helper process of the server
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, VmRSS kB)
    hwm_kb: int = 0
    # (seconds since start, new VmHWM kB) whenever the peak rose by 1 MiB or more since the last sample:
    # set against the slow requests' times (Load.slow), it says what a spike between samples came from
    peak_rises: list[tuple[float, int]] = field(default_factory=list)
    last: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        rss = [kb for _, kb in self.samples]
        return {
            "pid": self.pid,
            "role": self.role,
            "peak_rss_mb": round(max(self.hwm_kb, *rss, 0) / 1024, 1),
            "final_rss_mb": round(rss[-1] / 1024, 1) if rss else None,
            "final_anon_mb": round(self.last.get("RssAnon", 0) / 1024, 1),
            "final_file_mb": round(self.last.get("RssFile", 0) / 1024, 1),
            "samples": len(rss),
            # one sample every ~10 s, for a curve
            "peak_rises_mb": [(round(t, 1), round(kb / 1024, 1)) for t, kb in self.peak_rises],
            "curve_mb": [
                (round(t), round(kb / 1024, 1)) for t, kb in self.samples[:: max(1, len(rss) // 60)]
            ],
        }


class Sampler:
    """Reads VmRSS / VmHWM of the server's processes every `every` seconds, in a thread."""

    def __init__(self, root: int, every: float = 1.0) -> None:
        self.root = root
        self.every = every
        self.processes: dict[int, ProcessMemory] = {}
        self.started = time.monotonic()
        self.phase_peaks: dict[str, dict[int, int]] = {}
        self._phase = "start"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def phase(self, name: str) -> None:
        self._phase = name

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def workers(self) -> list[ProcessMemory]:
        return [p for p in self.processes.values() if p.role == "worker"]

    def sample(self) -> None:
        now = time.monotonic() - self.started
        pids = {self.root: "supervisor"}
        for child in _children(self.root):
            cmd = _cmdline(child)
            pids[child] = (
                "worker"
                if "spawn_main" in cmd
                else "resource_tracker"
                if "resource_tracker" in cmd
                else cmd[:60]
            )
        for pid, role in pids.items():
            status = _status_kb(pid)
            if not status:
                continue
            memory = self.processes.setdefault(pid, ProcessMemory(pid, role))
            memory.samples.append((now, status["VmRSS"]))
            if memory.hwm_kb and status["VmHWM"] >= memory.hwm_kb + 1024:
                memory.peak_rises.append((now, status["VmHWM"]))
            memory.hwm_kb = max(memory.hwm_kb, status["VmHWM"])
            memory.last = status
            peaks = self.phase_peaks.setdefault(self._phase, {})
            peaks[pid] = max(peaks.get(pid, 0), status["VmRSS"])

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def line(self) -> str:
        return "  ".join(
            f"{p.role[:6]} {p.pid}: {p.samples[-1][1] / 1024:.0f} MB (peak {p.hwm_kb / 1024:.0f})"
            for p in self.processes.values()
            if p.samples and p.role in ("supervisor", "worker")
        )


# --- Load --------------------------------------------------------------------------------------------------


@dataclass
class Load:
    conversations: int
    run_tag: str
    counts: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)  # the sampler's clock starts about the same
    slow: list[tuple[float, float, str]] = field(default_factory=list)  # (start, end, kind) over 0.5 s

    def wa_id(self, n: int) -> str:
        return str(5511900000000 + n)

    def open_conversation(self, rng: random.Random) -> tuple[str, str]:
        """(wa_id, business number) of a seeded open conversation."""
        conversations, customers = self.conversations, customers_for(self.conversations)
        c = conversations - rng.randrange(open_for(conversations))
        return self.wa_id((c - 1) % customers + 1), f"bn-{c % 3 + 1}"

    def message_wamid(self, rng: random.Random) -> str:
        m = rng.randrange(1, self.conversations * MESSAGES_PER_CONVERSATION + 1)
        return "wamid.HBgL" + hashlib.md5(f"wamid{m}".encode()).hexdigest()


# What one connection does, by weight: lookups over many distinct keys, writes, lists, rarely a report.
WEIGHTS = (
    ("open", 35),
    ("customer", 20),
    ("message", 10),
    ("genesys", 5),
    ("inbound", 15),
    ("inbound_new", 3),
    ("list_conversations", 4),
    ("list_messages", 3),
)
REPORT_EVERY = 20.0  # seconds between analytics reports (one connection)
EXPORT_EVERY = (
    3.0  # under uvicorn's 5 s keep-alive timeout  # seconds between customer exports (one connection)
)


async def _call(client: JsonClient, load: Load, kind: str, method: str, target: str, body: Any = None) -> Any:
    started = time.perf_counter()
    try:
        status, data = await client.request(method, target, body)
    except (ConnectionError, OSError) as exc:
        load.statuses["connection-error"] += 1
        if len(load.errors) < 20:
            load.errors.append(f"{kind}: {exc!r}")
        return None
    elapsed = time.perf_counter() - started
    load.latencies.setdefault(kind, []).append(elapsed * 1000)
    if elapsed > 0.5:
        end = time.monotonic() - load.started
        load.slow.append((round(end - elapsed, 1), round(end, 1), kind))
    load.counts[kind] += 1
    load.statuses[str(status)] += 1
    if status >= 400 and not (status == 404 and kind in ("open", "genesys")):
        if len(load.errors) < 20:
            load.errors.append(f"{kind} {method} {target[:120]}: {status} {str(data)[:300]}")
        return None
    return data


async def _worker(client: JsonClient, load: Load, seed: int, deadline: float) -> None:
    rng = random.Random(seed)
    kinds = [kind for kind, weight in WEIGHTS for _ in range(weight)]
    customers = customers_for(load.conversations)
    sequence = 0
    new_customer = 0
    while time.monotonic() < deadline:
        kind = rng.choice(kinds)
        if kind == "open":
            wa_id, number = load.open_conversation(rng)
            query = urlencode({"wa_id": wa_id, "business_number_id": number})
            await _call(client, load, kind, "GET", f"/v1/conversations/open?{query}")
        elif kind == "customer":
            wa_id = load.wa_id(rng.randrange(1, customers + 1))
            await _call(client, load, kind, "GET", f"/v1/customers/by-identity/whatsapp/{wa_id}")
        elif kind == "message":
            await _call(client, load, kind, "GET", f"/v1/messages/by-wamid/{load.message_wamid(rng)}")
        elif kind == "genesys":
            c = load.conversations - rng.randrange(open_for(load.conversations))
            genesys = hashlib.md5(f"genesys{c}".encode()).hexdigest()
            await _call(client, load, kind, "GET", f"/v1/conversations/by-genesys-id/{genesys}")
        elif kind in ("inbound", "inbound_new"):
            sequence += 1
            if kind == "inbound":
                wa_id, number = load.open_conversation(rng)
            else:
                new_customer += 1
                wa_id, number = f"5521{seed:03d}{new_customer:07d}", "bn-1"
            body = {
                "wa_id": wa_id,
                "profile_name": "Ana",
                "business_number_id": number,
                "wamid": f"wamid.{load.run_tag}.{seed}.{sequence}",
                "type": "text",
                "text": "Hi, any news about my order? " * rng.randint(1, 4),
                "occurred_at": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
            }
            await _call(client, load, kind, "POST", "/v1/messages/inbound", body)
        elif kind == "list_conversations":
            await _pages(client, load, kind, "/v1/conversations", rng)
        elif kind == "list_messages":
            c = rng.randrange(1, load.conversations + 1)
            conversation = str(uuid.UUID(hashlib.md5(f"conversation{c}".encode()).hexdigest()))
            await _call(client, load, kind, "GET", f"/v1/conversations/{conversation}/messages?limit=50")


async def _pages(client: JsonClient, load: Load, kind: str, path: str, rng: random.Random) -> None:
    """A caller paging through the latest: 1-5 pages of 50-200."""
    params: dict[str, str] = {"limit": str(rng.choice((50, 100, 200)))}
    for _page in range(rng.randint(1, 5)):
        data = await _call(client, load, kind, "GET", f"{path}?{urlencode(params)}")
        cursor = data.get("next_cursor") if isinstance(data, dict) else None
        if not cursor:
            break
        params["cursor"] = cursor


async def _occasional(client: JsonClient, load: Load, deadline: float) -> None:
    """The slow requests, one at a time on their own connection (so that they do not hold up the lookups):
    analytics reports over 90 days, customer exports, pages of customers, the old API's counts."""
    rng = random.Random(7)
    customers = customers_for(load.conversations)
    next_report = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if time.monotonic() >= next_report:
            now = dt.datetime.now(dt.UTC)
            window = {
                "from": (now - dt.timedelta(days=90)).date().isoformat(),
                "to": (now + dt.timedelta(days=1)).date().isoformat(),
            }
            report = rng.choice(
                (("conversations", "day"), ("messages", "day"), ("customers", "week"), ("agents", "day"))
            )
            query = urlencode({**window, "granularity": report[1]})
            await _call(client, load, f"report_{report[0]}", "GET", f"/v1/analytics/{report[0]}?{query}")
            next_report = time.monotonic() + REPORT_EVERY
        n = rng.randrange(1, customers + 1)
        customer = uuid.UUID(hashlib.md5(f"customer{n}".encode()).hexdigest())
        await _call(client, load, "export", "GET", f"/v1/customers/{customer}/export")
        await _pages(client, load, "list_customers", "/v1/customers", rng)
        if rng.random() < 0.1:
            await _call(client, load, "stats", "GET", "/state/stats")
        await asyncio.sleep(EXPORT_EVERY)


async def _balanced(url: str, token: str, connections: int, port: int) -> list[JsonClient]:
    """One JsonClient of one connection each, spread evenly over the server's workers (bench/balance.py)."""
    clients = [JsonClient(url, token, connections=1) for _ in range(connections)]
    for client in clients:
        await client.open()
    for _attempt in range(20):
        ports = {client._all[0].local_port: client for client in clients}
        view = balance.server_view(port, [p for p in ports if p is not None])
        if view is None:
            break
        redial = balance.excess(*view)
        if not redial:
            break
        for local in redial:
            client = ports[local]
            client._all[0].close()
            await client.open()
    return clients


async def drive(
    url: str, tokens: tuple[str, str], port: int, load: Load, seconds: float, connections: int
) -> dict[str, Any]:
    """The load for `seconds`; then each worker's local cache tier (`GET /v1/admin/cache` on a connection
    it serves, with the admin key in `tokens[1]`)."""
    clients = await _balanced(url, tokens[0], connections + 1, port)
    spread = balance.connection_spread(port)
    deadline = time.monotonic() + seconds
    local_tiers: dict[str, Any] = {}
    try:
        await asyncio.gather(
            *(_worker(client, load, i, deadline) for i, client in enumerate(clients[:-1])),
            _occasional(clients[-1], load, deadline),
        )
        for client in clients:
            local_port = client._all[0].local_port
            view = balance.server_view(port, [local_port]) if local_port is not None else None
            if view is None or local_port is None or str(view[1][local_port]) in local_tiers:
                continue
            status, data = await client.request("GET", "/v1/admin/cache", token=tokens[1])
            if status == 200 and isinstance(data, dict):
                local_tiers[str(view[1][local_port])] = data["tiers"].get("local")
    finally:
        for client in clients:
            client.close()
    return {"connections_per_server_process": spread, "local_cache_tier_per_worker": local_tiers}


# --- Where the memory goes: --tracemalloc ----------------------------------------------------------------

# Imported by every server process through PYTHONPATH (site imports `sitecustomize`): on SIGUSR1 a process
# writes its largest allocation sites, as tracemalloc sees them, to $BENCH_TRACEMALLOC_DIR/<pid>.txt.
_SITECUSTOMIZE = """
import os, signal, tracemalloc

def _dump(signum, frame):
    if not tracemalloc.is_tracing():
        return
    snapshot = tracemalloc.take_snapshot()
    total = sum(stat.size for stat in snapshot.statistics("filename"))
    lines = [f"total {total / 1048576:.1f} MiB traced"]
    for key in ("filename", "lineno"):
        lines.append(f"-- by {key}")
        for stat in snapshot.statistics(key)[:40]:
            lines.append(f"{stat.size / 1048576:8.2f} MiB {stat.count:>9} blocks  {stat.traceback[0]}")
    path = os.path.join(os.environ["BENCH_TRACEMALLOC_DIR"], f"{os.getpid()}.txt")
    with open(path, "w") as handle:
        handle.write("\\n".join(lines) + "\\n")

if os.environ.get("BENCH_TRACEMALLOC_DIR"):
    signal.signal(signal.SIGUSR1, _dump)
"""


def tracemalloc_env(directory: Path) -> dict[str, str]:
    (directory / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    return {
        "PYTHONPATH": os.pathsep.join(filter(None, (str(directory), os.environ.get("PYTHONPATH")))),
        "PYTHONTRACEMALLOC": "1",
        "BENCH_TRACEMALLOC_DIR": str(directory),
    }


def tracemalloc_dumps(directory: Path, workers: list[int]) -> dict[str, str]:
    for pid in workers:
        os.kill(pid, signal.SIGUSR1)
    found: dict[str, str] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(found) < len(workers):
        time.sleep(0.5)
        for pid in workers:
            path = directory / f"{pid}.txt"
            if str(pid) not in found and path.exists() and path.stat().st_size > 0:
                time.sleep(0.2)
                found[str(pid)] = path.read_text()
    return found


# --- Run ---------------------------------------------------------------------------------------------------


def create_key(server: ManagedServer) -> str:
    return server.create_key("--kind", "tenant", "--tenant", TENANT, "--name", "bench")


def clear_redis(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match="*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        return len(keys)
    finally:
        client.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--conversations", type=int, default=1_000_000)
    p.add_argument("--duration", type=float, default=300.0, help="seconds of load after the server is ready")
    p.add_argument("--idle", type=float, default=20.0, help="seconds after start-up before the load begins")
    p.add_argument("--connections", type=int, default=16, help="load connections (plus one for reports)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--pg-admin-dsn", default=ADMIN_DSN)
    p.add_argument(
        "--redis-url",
        default=REDIS_URL,
        help="a Redis database for this run alone: its keys are deleted before and after",
    )
    p.add_argument(
        "--server-env", action="append", default=[], metavar="NAME=VALUE", help="extra server settings"
    )
    p.add_argument(
        "--tracemalloc",
        action="store_true",
        help="run the workers under tracemalloc and print their largest allocation sites at the end"
        " (where the memory goes; tracing costs memory and CPU itself: the RSS figures then do not count)",
    )
    p.add_argument("--keep-db", action="store_true", help="do not drop the database afterwards")
    p.add_argument("--reuse-db", metavar="DATABASE", help="a database an earlier --keep-db run left (kept)")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    if args.conversations < 100 or args.duration <= 0:
        p.error("--conversations must be >= 100, --duration > 0")
    if any("=" not in item for item in args.server_env):
        p.error("--server-env takes NAME=VALUE")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    run_tag = f"mem{started:%Y%m%d%H%M%S}"
    database = args.reuse_db or f"bench_memory_{started:%Y%m%d%H%M%S}"
    dsn = database_dsn(args.pg_admin_dsn, database)
    document: dict[str, Any] = {
        "started_at": started.isoformat(),
        "command": " ".join([Path(sys.executable).name, "-m", "bench.memory", *(argv or sys.argv[1:])]),
        "machine": machine_info(),
        "git_commit": git_commit(REPO_ROOT),
        "settings": {
            "conversations": args.conversations,
            "duration_s": args.duration,
            "workers": args.workers,
            "connections": args.connections,
            "server_env": args.server_env,
        },
    }
    server: ManagedServer | None = None
    sampler: Sampler | None = None
    try:
        if args.reuse_db:
            print(f"reusing {database}; its analytics projection is emptied (rebuilt again)", flush=True)
            asyncio.run(reset_projection(dsn))
        else:
            asyncio.run(create_database(args.pg_admin_dsn, database))
        traced = tracemalloc_env(Path(tempfile.mkdtemp(prefix="bench-tm-"))) if args.tracemalloc else {}
        server = ManagedServer(
            port=free_port(),
            workers=args.workers,
            database_url=sqlalchemy_url(dsn),
            redis_url=args.redis_url,
            extra_env={**dict(item.split("=", 1) for item in args.server_env), **traced},
            log_path=Path(tempfile.gettempdir()) / f"state-manager-{run_tag}.log",
        )
        print(f"redis {args.redis_url}: {clear_redis(args.redis_url)} keys removed first", flush=True)
        if not args.reuse_db:
            t0 = time.monotonic()
            server.migrate()
            print(f"database {database}: migrated in {time.monotonic() - t0:.1f} s; seeding "
                  f"{args.conversations:,} conversations ...", flush=True)  # fmt: skip
            t0 = time.monotonic()
            asyncio.run(seed_postgres(dsn, args.conversations))
            seeded = time.monotonic() - t0
            t0 = time.monotonic()
            asyncio.run(analyze(dsn))
            document["seeding"] = {
                "seconds": round(seeded, 1),
                "analyze_seconds": round(time.monotonic() - t0, 1),
            }
            print(f"seeded in {seeded:.1f} s, analyzed in {time.monotonic() - t0:.1f} s", flush=True)
        counts = asyncio.run(table_counts(dsn))
        document["database"] = counts
        print("rows: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()), flush=True)
        token = create_key(server)
        admin_key = server.create_admin_key(dsn)

        print(f"starting the server ({args.workers} workers, log {server.log_path}) ...", flush=True)
        t0 = time.monotonic()
        server.start(timeout=180)
        assert server.process is not None
        document["ready_seconds"] = round(time.monotonic() - t0, 1)
        sampler = Sampler(server.process.pid)
        sampler.start()
        sampler.phase("idle")
        deadline = time.monotonic() + args.idle
        while time.monotonic() < deadline:
            time.sleep(min(10.0, args.idle))
            print(f"  idle  {sampler.line()}", flush=True)

        sampler.phase("load")
        load = Load(args.conversations, run_tag, started=sampler.started)
        result: dict[str, Any] = {}
        printer_stop = threading.Event()

        def printer() -> None:
            begun = time.monotonic()
            while not printer_stop.wait(30.0):
                print(f"  load {time.monotonic() - begun:4.0f}s  {sampler.line()}  requests "
                      f"{sum(load.counts.values()):,}", flush=True)  # fmt: skip

        thread = threading.Thread(target=printer, daemon=True)
        thread.start()
        print(f"load for {args.duration:.0f} s over {args.connections} connections ...", flush=True)
        try:
            result = asyncio.run(
                drive(server.url, (token, admin_key), server.port, load, args.duration, args.connections)
            )
        finally:
            printer_stop.set()
            thread.join()
        sampler.phase("after")
        time.sleep(3)
        sampler.stop()
        if args.tracemalloc:
            dumps = tracemalloc_dumps(
                Path(server.env["BENCH_TRACEMALLOC_DIR"]), [p.pid for p in sampler.workers()]
            )
            document["tracemalloc"] = dumps
            for pid, text in dumps.items():
                print(f"--- worker {pid}, tracemalloc:\n" + "\n".join(text.splitlines()[:45]))
        if server.process.poll() is not None:
            raise RuntimeError(f"the server died; its log:\n{server.tail_log()}")
        document["projection"] = asyncio.run(projection_progress(dsn))
        document["load"] = {
            **result,
            "requests": dict(load.counts),
            "statuses": dict(load.statuses),
            "errors": load.errors,
            "slow_requests": load.slow,
            "median_ms": {k: round(sorted(v)[len(v) // 2], 1) for k, v in load.latencies.items() if v},
        }
        return report(args, document, sampler, started)
    finally:
        if sampler is not None and sampler._thread.is_alive():
            sampler.stop()
        if server is not None:
            server.stop()
        print(f"redis: {clear_redis(args.redis_url)} keys removed", flush=True)
        if not args.keep_db and not args.reuse_db:
            asyncio.run(drop_database(args.pg_admin_dsn, database))
            print(f"dropped {database}", flush=True)
        else:
            print(f"kept {database}", flush=True)


def report(args: argparse.Namespace, document: dict[str, Any], sampler: Sampler, started: dt.datetime) -> int:
    processes = [p.summary() for p in sampler.processes.values() if p.samples]
    workers = [p for p in processes if p["role"] == "worker"]
    document["processes"] = processes
    document["phase_peaks_mb"] = {
        phase: {str(pid): round(kb / 1024, 1) for pid, kb in peaks.items()}
        for phase, peaks in sampler.phase_peaks.items()
    }
    worst = max((p["peak_rss_mb"] for p in workers), default=0.0)
    met = bool(workers) and worst < TARGET_MB
    document["target"] = {"per_worker_peak_rss_mb": TARGET_MB, "worst_peak_mb": worst, "met": met}
    load = document["load"]
    print()
    by_kind = ", ".join(f"{k} {v}" for k, v in load["requests"].items())
    print(f"requests: {sum(load['requests'].values()):,} ({by_kind})")
    print(f"statuses: {load['statuses']}")
    for error in load["errors"][:5]:
        print(f"  error: {error}")
    print(f"projection: {document['projection']}")
    for p in workers:
        for at, mb in p["peak_rises_mb"]:
            during = [kind for start, end, kind in load["slow_requests"] if start - 1 <= at <= end + 1]
            print(f"worker {p['pid']}: peak rose to {mb} MB at {at} s; slow requests then: {during}")
    for pid, tier in load.get("local_cache_tier_per_worker", {}).items():
        print(f"worker {pid}'s local cache tier at the end: {tier}")
    print()
    print(f"{'process':<12}{'pid':>8}{'peak MB':>10}{'final MB':>10}{'anon MB':>9}{'file MB':>9}")
    for p in processes:
        if p["role"] in ("supervisor", "worker"):
            print(f"{p['role']:<12}{p['pid']:>8}{p['peak_rss_mb']:>10.1f}{p['final_rss_mb']:>10.1f}"
                  f"{p['final_anon_mb']:>9.1f}{p['final_file_mb']:>9.1f}")  # fmt: skip
    print(f"target: every worker's peak under {TARGET_MB:.0f} MB: {'met' if met else 'MISSED'} "
          f"(worst {worst:.1f} MB)")  # fmt: skip
    out = args.results_dir / f"memory-{started:%Y%m%dT%H%M%SZ}.json"
    write_json(out, document)
    print(f"results: {out}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
