"""Load (issue 8): two instances on one PostgreSQL and one Redis, many concurrent clients, duplicates and
shuffled receipts, and every subscriber's view of the events.

The instances are started as docs/scale-out.md ("Two instances on one machine") does: one fresh database,
migrated with `state-manager migrate`, one Redis server of the test's own, the same settings and separate
ports. The load, in three phases, through both instances at once:

1. inbound customer messages (`POST /v1/messages/inbound`), shuffled, over customers writing on one or two
   business numbers; some sent to both instances at the same moment, some again later;
2. agents' replies (`POST /v1/conversations/{id}/messages`) and their delivery receipts (`POST /v1/receipts`,
   batches of 1 to 40), shuffled together, so that receipts arrive before, with and after their message;
   some batches sent to both instances at once, some replies too, late repeats of inbound messages;
3. late repeats of receipts, which must change nothing.

Then: exactly one open conversation per customer and number, every message stored once with its text, every
repeat answered as one, every final status what the lattice of docs/design.md gives (computed here from the
documented rule, not by the service's code), no receipt left held, no 5xx, and every event exactly once and
in order on every WebSocket subscriber (both instances), equal to `GET /v1/events`, with each message's
status changes forming one chain; the webhook subscription receives every event of its types (at least once,
as documented). Timing is printed, never asserted.

Sizes: LOAD_MESSAGES (20,000), LOAD_CUSTOMERS (1,000), LOAD_CLIENTS (100), LOAD_REPLIES (2,000 agents'
replies), LOAD_SEED (random).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import importlib.util
import json
import os
import random
import re
import time
import urllib.parse
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import orjson
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from harness import (
    RedisServer,
    ServerProcess,
    cli_json,
    create_database,
    create_tenant,
    drop_database,
    run_cli,
    server_env,
)
from webhook_receiver import Receiver

MESSAGES = int(os.environ.get("LOAD_MESSAGES", "20000"))
CUSTOMERS = int(os.environ.get("LOAD_CUSTOMERS", "1000"))
CLIENTS = int(os.environ.get("LOAD_CLIENTS", "100"))
REPLIES = int(os.environ.get("LOAD_REPLIES", str(max(1, MESSAGES // 10))))
SEED = int(os.environ.get("LOAD_SEED", str(random.randrange(1 << 32))))

BUSINESS_NUMBERS = ("bn-load-1", "bn-load-2")
OPEN_STATES = ("pending", "active", "waiting", "error")
PHASE_TIMEOUT_SECONDS = 900.0
SETTLE_TIMEOUT_SECONDS = 180.0
# The webhook subscription's types: one delivery per customer and per conversation keeps the dispatcher's
# share of two cores small; the WebSocket subscribers get every event.
WEBHOOK_TYPES = ("customer.created", "conversation.created")
FILTERED_TYPES = ("conversation.created", "message.status_changed")


def _lean_http() -> Any:
    """bench/httpclient.py, the lean keep-alive client: httpx at 100 concurrent requests costs more CPU
    than the two servers can spare on two cores."""
    path = Path(__file__).resolve().parents[2] / "bench" / "httpclient.py"
    spec = importlib.util.spec_from_file_location("_load_httpclient", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


http = _lean_http()


# --- The two instances -------------------------------------------------------------------------------


@dataclasses.dataclass
class Cluster:
    servers: list[ServerProcess]
    tenant: str
    key: str
    dsn: str  # asyncpg's, as the superuser: reads past row-level security

    def stop(self) -> list[str]:
        """Stops every instance; the log tails of those that did not stop cleanly."""
        return [server.log_tail() for server in self.servers if not server.stop()]


@pytest.fixture
def cluster(postgres_available: None, own_redis: RedisServer, tmp_path: Path) -> Iterator[Cluster]:
    """docs/scale-out.md's recipe: a fresh database migrated with `state-manager migrate`, a tenant and its
    key made with the CLI, two `serve` processes with the same DATABASE_URL and REDIS_URL on two ports."""
    name = f"sm_load_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    url = create_database(name)
    servers: list[ServerProcess] = []
    try:
        env = server_env(tmp_path, url, REDIS_URL=own_redis.url)
        # The harness checks keys in the database on every request (so that CLI revocations apply at once);
        # the recipe runs with the default, which is also what production load looks like.
        del env["API_KEY_CACHE_SECONDS"]
        done = run_cli("migrate", env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        tenant = "load-" + uuid.uuid4().hex[:8]
        create_tenant(tenant, env=env, cwd=tmp_path, name="Load")
        key = cli_json("keys", "create", "--kind", "tenant", "--tenant", tenant, "--name", "load",
                       env=env, cwd=tmp_path)["key"]  # fmt: skip
        servers.extend(ServerProcess(f"load-{n}", env, tmp_path) for n in range(2))
        for server in servers:
            server.start()
        for server in servers:
            server.wait_for("/health/ready")
        dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
        yield Cluster(servers, tenant, key, dsn)
    finally:
        # Every server is stopped (the test stops them itself before asserting; this is for failures).
        for server in servers:
            server.stop()
        drop_database(name)


# --- The plan: what is sent, drawn from the seed ---------------------------------------------------------


T0 = dt.datetime(2026, 4, 1, 8, 0, tzinfo=dt.UTC)

# Receipt stories for one reply: (status, seconds after its base time, failure code). Shuffled and
# repeated when sent, so every order happens.
STORIES: list[list[tuple[str, int, str | None]]] = [
    [("sent", 0, None), ("delivered", 2, None), ("read", 5, None)],
    [("sent", 0, None), ("read", 4, None)],  # read in an open chat: no delivered
    [("sent", 0, None), ("failed", 3, "131026")],
    [("sent", 0, None), ("failed", 3, "131047"), ("delivered", 6, None)],  # several devices
    [("failed", 3, "131026"), ("sent", 1, None)],  # a late sent after failed
    [("sent", 0, None), ("delivered", 2, None), ("played", 8, None)],
    [("sent", 0, None), ("failed", 3, "2"), ("failed", 3, "1")],  # two failures at one instant
    [("sent", 0, None)],
    [("delivered", 2, None), ("sent", 0, None), ("delivered", 4, None)],  # the earliest delivered stays
    [("read", 5, None), ("read", 3, None), ("failed", 9, "131026")],
]


@dataclasses.dataclass(frozen=True)
class Inbound:
    wamid: str
    wa_id: str
    number: str
    text: str

    def body(self) -> bytes:
        return orjson.dumps(
            {"wa_id": self.wa_id, "business_number_id": self.number, "wamid": self.wamid, "text": self.text}
        )


@dataclasses.dataclass(frozen=True)
class ReceiptItem:
    wamid: str
    status: str
    at: dt.datetime
    code: str | None

    def json(self) -> dict[str, Any]:
        item: dict[str, Any] = {"wamid": self.wamid, "status": self.status, "at": self.at.isoformat()}
        if self.code is not None:
            item["error"] = {"code": self.code, "title": f"failure {self.code}"}
        return item


@dataclasses.dataclass
class Plan:
    rng: random.Random
    inbound: list[Inbound]
    concurrent_repeats: set[str]  # wamids whose first sending goes to both instances at once
    early_repeats: list[str]  # wamids sent once more, anywhere in phase 1
    late_repeats: list[str]  # wamids sent once more in phase 2

    @classmethod
    def draw(cls, rng: random.Random) -> Plan:
        numbers_of = {}
        for n in range(CUSTOMERS):
            wa = f"55119{n:07d}"
            numbers_of[wa] = list(BUSINESS_NUMBERS) if rng.random() < 0.3 else [rng.choice(BUSINESS_NUMBERS)]
        customers = list(numbers_of)
        messages = []
        for n in range(MESSAGES):
            # Every customer writes at least once; the rest at random.
            wa = customers[n] if n < len(customers) else rng.choice(customers)
            messages.append(Inbound(f"wamid.load.{n:06d}", wa, rng.choice(numbers_of[wa]), f"message {n}"))
        wamids = [m.wamid for m in messages]
        chosen = rng.sample(wamids, k=int(len(wamids) * 0.15))  # 15 % sent more than once
        third = len(chosen) // 3
        return cls(rng, messages, set(chosen[:third]), chosen[third : 2 * third], chosen[2 * third :])


@dataclasses.dataclass
class Reply:
    wamid: str
    conversation_id: str
    receipts: list[ReceiptItem]


def expected_outcome(receipts: list[ReceiptItem]) -> dict[str, Any]:
    """docs/design.md, "Messages and delivery status", written out: the earliest time of each status
    (`played` counts as `read`), the earliest failure with ties broken by code, title, details (a missing
    field before any text), and the status by rank read > delivered > failed > sent > queued."""
    earliest: dict[str, dt.datetime] = {}
    failure: tuple[Any, ...] | None = None
    for receipt in receipts:
        column = "read" if receipt.status == "played" else receipt.status
        if column == "failed":
            title = None if receipt.code is None else f"failure {receipt.code}"
            parts = (receipt.code, title, None)
            key = (receipt.at, *((part is not None, part or "") for part in parts))
            if failure is None or key < failure[0]:
                failure = (key, parts)
        elif column not in earliest or receipt.at < earliest[column]:
            earliest[column] = receipt.at
    if failure is not None:
        earliest["failed"] = failure[0][0]
    status = next((s for s in ("read", "delivered", "failed", "sent") if s in earliest), "queued")
    return {
        "status": status,
        **{f"{s}_at": earliest.get(s) for s in ("sent", "delivered", "read", "failed")},
        "failure": None if failure is None else failure[1],
    }


def outcome_of(message: dict[str, Any]) -> dict[str, Any]:
    def moment(value: str | None) -> dt.datetime | None:
        return None if value is None else dt.datetime.fromisoformat(value.replace("Z", "+00:00"))

    failure = message["failure"]
    return {
        "status": message["status"],
        **{f"{s}_at": moment(message[f"{s}_at"]) for s in ("sent", "delivered", "read", "failed")},
        "failure": None if failure is None else (failure["code"], failure["title"], failure["details"]),
    }


# --- The clients ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Sent:
    """One request and what came back (status 0: no answer; the body then says why)."""

    kind: str
    tag: Any
    instance: int
    status: int
    body: bytes
    seconds: float = 0.0  # from sending to the whole answer

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclasses.dataclass
class Job:
    kind: str
    tag: Any
    raw: bytes
    targets: tuple[int, ...]  # two: the same request to both instances at the same moment


def request(method: str, target: str, key: str, payload: bytes | None = None) -> bytes:
    raw: bytes = http.encode_request(method, target, "127.0.0.1", token=key, body=payload)
    return raw


class Client:
    """One of the concurrent clients: a keep-alive connection to each instance."""

    IDLE_SECONDS = 2.0  # below uvicorn's keep-alive timeout (5 s): never write into a closing connection

    def __init__(self, ports: list[int]) -> None:
        self.connections = [http.Connection("127.0.0.1", port) for port in ports]
        self.used = [0.0] * len(ports)

    async def send(self, instance: int, raw: bytes) -> tuple[int, bytes]:
        connection = self.connections[instance]
        if time.monotonic() - self.used[instance] > self.IDLE_SECONDS:
            connection.close()
        try:
            status, body = await connection.send(raw)
        except (ConnectionError, OSError) as exc:
            connection.close()
            return 0, repr(exc).encode()
        finally:
            self.used[instance] = time.monotonic()
        return int(status), bytes(body)

    def close(self) -> None:
        for connection in self.connections:
            connection.close()


async def run_jobs(clients: list[Client], jobs: list[Job]) -> tuple[list[Sent], float]:
    """Every job, by all clients at once; the answers and the seconds it took."""
    queue: asyncio.Queue[Job] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    answers: list[Sent] = []

    async def send(client: Client, job: Job, target: int) -> None:
        sent = time.monotonic()
        status, body = await client.send(target, job.raw)
        answers.append(Sent(job.kind, job.tag, target, status, body, time.monotonic() - sent))

    async def work(client: Client) -> None:
        while not queue.empty():
            job = queue.get_nowait()
            await asyncio.gather(*(send(client, job, target) for target in job.targets))

    started = time.monotonic()
    async with asyncio.timeout(PHASE_TIMEOUT_SECONDS):
        await asyncio.gather(*(work(client) for client in clients))
    return answers, time.monotonic() - started


async def fetch_all(clients: list[Client], targets: list[tuple[Any, bytes]]) -> dict[Any, Sent]:
    """GETs spread over both instances, by all clients."""
    jobs = [Job("get", tag, raw, (n % 2,)) for n, (tag, raw) in enumerate(targets)]
    answers, _ = await run_jobs(clients, jobs)
    return {answer.tag: answer for answer in answers}


# --- WebSocket subscribers -----------------------------------------------------------------------------


class Subscriber:
    """A WebSocket client on the test's loop. A close for being too slow (4408) is resumed from the number
    the close names, as docs/design.md says to; any other close ends it as a failure."""

    def __init__(self, base_url: str, key: str, types: tuple[str, ...] = ()) -> None:
        self.base = base_url.replace("http://", "ws://") + "/v1/ws"
        self.headers = {"Authorization": f"Bearer {key}"}
        self.types = types
        self.events: list[dict[str, Any]] = []
        self.first_frame: dict[str, Any] | None = None
        self.covered = 0  # how far the subscription has covered, filtered-out events included
        self.resumes: list[int] = []
        self.failure: str | None = None
        self.live = asyncio.Event()
        self._stopping = False
        self._ws: Any = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def _url(self, after: int) -> str:
        query = {"after": after, "heartbeat": 1} | ({"types": ",".join(self.types)} if self.types else {})
        return f"{self.base}?{urllib.parse.urlencode(query)}"

    async def _run(self) -> None:
        after = 0
        while True:
            try:
                async with ws_connect(
                    self._url(after), additional_headers=self.headers, max_size=2**26, open_timeout=30
                ) as ws:
                    self._ws = ws
                    async for message in ws:
                        self._take(orjson.loads(message))
                code, reason = ws.close_code, ws.close_reason or ""
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
                reason = exc.rcvd.reason if exc.rcvd is not None else ""
            except Exception as exc:  # a refused connection, a bad frame: recorded, asserted on later
                self.failure = repr(exc)
                return
            if self._stopping:
                return
            found = re.fullmatch(r"too slow; resume with after=(\d+)", reason)
            if code == 4408 and found:
                after = int(found.group(1))
                self.resumes.append(after)
                continue
            self.failure = f"closed by the server: {code} {reason!r}"
            return

    def _take(self, frame: dict[str, Any]) -> None:
        if self.first_frame is None:
            self.first_frame = frame
        if frame["kind"] == "events":
            self.events.extend(frame["events"])
            self.covered = max(self.covered, frame["events"][-1]["seq"])
        else:
            self.covered = max(self.covered, frame["seq"])
            if frame["kind"] == "live":
                self.live.set()

    async def stop(self) -> None:
        self._stopping = True
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            await self._task


# --- The load ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    """Everything the load saw, collected before the servers stop."""

    phases: dict[str, list[Sent]]
    durations: dict[str, float]
    replies: list[Reply]
    reply_ids: dict[str, str]
    messages: dict[str, Sent]  # each reply, read back by its ID
    open_lookups: dict[tuple[str, str], Sent]
    conversations: list[dict[str, Any]]
    events: list[dict[str, Any]]
    head: int
    subscribers: list[Subscriber]
    sql: dict[str, Any]
    batches: dict[int, list[ReceiptItem]]  # each receipt request's receipts, by its tag
    dead_deliveries: list[dict[str, Any]]


async def page_all(client: Client, path: str, key: str, limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for turn in range(10_000):
        query = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        status, body = await client.send(
            turn % 2, request("GET", f"{path}?{urllib.parse.urlencode(query)}", key)
        )
        assert status == 200, (path, status, body[:300])
        page = orjson.loads(body)
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination did not end")


async def all_events(client: Client, key: str) -> tuple[list[dict[str, Any]], int]:
    events: list[dict[str, Any]] = []
    after, head = 0, 0
    for turn in range(100_000):
        status, body = await client.send(
            turn % 2, request("GET", f"/v1/events?after={after}&limit=1000", key)
        )
        assert status == 200, (status, body[:300])
        page = orjson.loads(body)
        events += page["events"]
        head = page["head"]
        if not page["events"]:
            return events, head
        after = page["next_after"]
    raise AssertionError("the event pages did not end")


async def eventually_async(probe: Any, what: str, within: float = SETTLE_TIMEOUT_SECONDS) -> Any:
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not reached in {within} s (last: {last!r})")


async def load(cluster: Cluster, plan: Plan, receiver: Receiver) -> Outcome:
    key, rng = cluster.key, plan.rng
    ports = [server.port for server in cluster.servers]
    clients = [Client(ports) for _ in range(CLIENTS)]
    setup = clients[0]
    db = await asyncpg.connect(cluster.dsn, timeout=10)
    subscribers: list[Subscriber] = []
    try:
        status, body = await setup.send(
            0,
            request("POST", "/v1/webhooks/subscriptions", key,
                    orjson.dumps({"url": receiver.url, "event_types": list(WEBHOOK_TYPES)})),
        )  # fmt: skip
        assert status == 201, body

        # Subscribers on both instances, every one live before the first message.
        for server in cluster.servers:
            subscribers += [
                Subscriber(server.base_url, key),
                Subscriber(server.base_url, key),
                Subscriber(server.base_url, key, FILTERED_TYPES),
            ]
        for subscriber in subscribers:
            subscriber.start()
        async with asyncio.timeout(60):
            await asyncio.gather(*(subscriber.live.wait() for subscriber in subscribers))

        phases: dict[str, list[Sent]] = {}
        durations: dict[str, float] = {}

        # Phase 1: the customers' messages, shuffled, some twice.
        jobs = []
        for message in plan.inbound:
            both = message.wamid in plan.concurrent_repeats
            targets = (0, 1) if both else (rng.randrange(2),)
            jobs.append(
                Job(
                    "inbound",
                    message.wamid,
                    request("POST", "/v1/messages/inbound", key, message.body()),
                    targets,
                )
            )
        by_wamid = {m.wamid: m for m in plan.inbound}
        for wamid in plan.early_repeats:
            raw = request("POST", "/v1/messages/inbound", key, by_wamid[wamid].body())
            jobs.append(Job("inbound", wamid, raw, (rng.randrange(2),)))
        rng.shuffle(jobs)
        phases["inbound"], durations["inbound"] = await run_jobs(clients, jobs)
        bad = [a for a in phases["inbound"] if a.status not in (200, 201)]
        assert not bad, f"{len(bad)} inbound requests failed, e.g. {bad[:3]}"

        # Phase 2: agents' replies in part of the conversations and their receipts, all shuffled together,
        # with late repeats of inbound messages.
        conversation_of = {}
        for answer in phases["inbound"]:
            message = by_wamid[answer.tag]
            conversation_of[(message.wa_id, message.number)] = answer.json()["conversation_id"]
        conversations = sorted(conversation_of.values())
        replies = []
        for n in range(REPLIES):
            base = T0 + dt.timedelta(minutes=n)
            story = rng.choice(STORIES)
            wamid = f"wamid.reply.{n:06d}"
            items = [ReceiptItem(wamid, s, base + dt.timedelta(seconds=o), c) for s, o, c in story]
            replies.append(Reply(wamid, rng.choice(conversations), items))
        jobs = []
        for reply in replies:
            payload = orjson.dumps(
                {"direction": "outbound", "wamid": reply.wamid, "text": f"reply {reply.wamid}"}
            )
            raw = request("POST", f"/v1/conversations/{reply.conversation_id}/messages", key, payload)
            targets = (0, 1) if rng.random() < 0.1 else (rng.randrange(2),)
            jobs.append(Job("reply", reply.wamid, raw, targets))
        receipts = [item for reply in replies for item in reply.receipts]
        receipts += rng.sample(receipts, k=len(receipts) // 5)  # repeated
        rng.shuffle(receipts)
        batch_of: dict[int, list[ReceiptItem]] = {}
        start = 0
        while start < len(receipts):
            size = 1 if rng.random() < 0.3 else rng.randint(2, 40)
            batch = receipts[start : start + size]
            start += size
            batch_of[len(batch_of)] = batch
            raw = request("POST", "/v1/receipts", key, orjson.dumps({"receipts": [r.json() for r in batch]}))
            targets = (0, 1) if rng.random() < 0.1 else (rng.randrange(2),)
            jobs.append(Job("receipts", len(batch_of) - 1, raw, targets))
        for wamid in plan.late_repeats:
            raw = request("POST", "/v1/messages/inbound", key, by_wamid[wamid].body())
            jobs.append(Job("inbound", wamid, raw, (rng.randrange(2),)))
        rng.shuffle(jobs)
        phases["replies"], durations["replies"] = await run_jobs(clients, jobs)

        # Phase 3: receipts repeated late, in batches, after everything: each must change nothing.
        late = rng.sample([item for reply in replies for item in reply.receipts], k=len(receipts) // 5)
        jobs = []
        for start in range(0, len(late), 25):
            batch = late[start : start + 25]
            batch_of[len(batch_of)] = batch
            raw = request("POST", "/v1/receipts", key, orjson.dumps({"receipts": [r.json() for r in batch]}))
            jobs.append(Job("late receipts", len(batch_of) - 1, raw, (rng.randrange(2),)))
        phases["late receipts"], durations["late receipts"] = await run_jobs(clients, jobs)

        # Settled: every committed event numbered, every subscriber has reached the head, every webhook
        # delivery made.
        tenant = cluster.tenant

        async def numbered() -> int | None:
            row = await db.fetchrow(
                "SELECT count(*) AS n, count(seq) AS numbered, max(seq) AS head FROM events"
                " WHERE tenant_id = $1",
                tenant,
            )
            return int(row["head"]) if row["n"] == row["numbered"] and row["head"] else None

        head = await eventually_async(numbered, "every event numbered")
        await eventually_async(
            lambda: _all_covered(subscribers, head), "every subscriber at the head", SETTLE_TIMEOUT_SECONDS
        )
        webhook_seqs = {
            int(r["seq"])
            for r in await db.fetch(
                "SELECT seq FROM events WHERE tenant_id = $1 AND type = ANY($2::text[])",
                tenant,
                list(WEBHOOK_TYPES),
            )
        }

        async def delivered() -> bool:
            return {r.seq for r in receiver.accepted()} >= webhook_seqs

        await eventually_async(delivered, "every webhook delivery made")

        async def deliveries_done() -> dict[str, Any] | None:
            counts: dict[str, Any] = {}
            for state in ("pending", "dead"):
                got, body = await setup.send(
                    0, request("GET", f"/v1/webhooks/deliveries?status={state}&limit=5", key)
                )
                assert got == 200, body
                counts[state] = orjson.loads(body)["items"]
            return counts if not counts["pending"] else None

        webhook_deliveries = await eventually_async(deliveries_done, "no webhook delivery pending")

        # Read back through the API, over both instances.
        reply_ids = {}
        for answer in phases["replies"]:
            if answer.kind == "reply" and answer.status in (200, 201):
                reply_ids[answer.tag] = answer.json()["id"]
        messages = await fetch_all(
            clients, [(wamid, request("GET", f"/v1/messages/{mid}", key)) for wamid, mid in reply_ids.items()]
        )
        pairs = sorted(conversation_of)
        open_lookups = await fetch_all(
            clients,
            [
                (
                    pair,
                    request(
                        "GET", f"/v1/conversations/open?wa_id={pair[0]}&business_number_id={pair[1]}", key
                    ),
                )
                for pair in pairs
            ],
        )
        listed = await page_all(setup, "/v1/conversations", key, 500)
        events, api_head = await all_events(setup, key)
        assert api_head == head, (api_head, head)

        # And what only the database can tell.
        sql: dict[str, Any] = {
            "messages": [dict(r) for r in await db.fetch(
                "SELECT wamid, direction, text, status, conversation_id::text AS conversation_id"
                " FROM messages WHERE tenant_id = $1", tenant)],
            "open_twice": [dict(r) for r in await db.fetch(
                "SELECT customer_id, business_number_id, count(*) AS n FROM conversations"
                " WHERE tenant_id = $1 AND state = ANY($2::text[])"
                " GROUP BY customer_id, business_number_id HAVING count(*) > 1",
                tenant, list(OPEN_STATES))],
            "customers": await db.fetchval("SELECT count(*) FROM customers WHERE tenant_id = $1", tenant),
            "identities": [dict(r) for r in await db.fetch(
                "SELECT external_id, count(*) AS n FROM customer_identities WHERE tenant_id = $1"
                " AND channel = 'whatsapp' GROUP BY external_id", tenant)],
            "held": await db.fetchval("SELECT count(*) FROM pending_receipts WHERE tenant_id = $1", tenant),
        }  # fmt: skip
        return Outcome(
            phases, durations, replies, reply_ids, messages, open_lookups, listed, events, head, subscribers,
            sql, batch_of, webhook_deliveries["dead"],
        )  # fmt: skip
    finally:
        for subscriber in subscribers:
            await subscriber.stop()
        for client in clients:
            client.close()
        await db.close()


async def _all_covered(subscribers: list[Subscriber], head: int) -> bool:
    failed = [s.failure for s in subscribers if s.failure]
    assert not failed, failed
    return all(subscriber.covered >= head for subscriber in subscribers)


def run_load(cluster: Cluster, plan: Plan, receiver: Receiver) -> Outcome:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.run(load(cluster, plan, receiver))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(load(cluster, plan, receiver))


# --- The test ------------------------------------------------------------------------------------------


def server_errors(server: ServerProcess) -> list[str]:
    """Log lines at ERROR or above, and access lines of 5xx answers."""
    found = []
    for line in server.log_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            if "Traceback" in line or "ERROR" in line:
                found.append(line)
            continue
        level = str(record.get("level", "")).lower()
        status = record.get("status") or record.get("status_code")
        if level in ("error", "critical") or (isinstance(status, int) and status >= 500):
            found.append(line)
    return found


@pytest.mark.postgres
@pytest.mark.redis
def test_two_instances_under_load(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    def say(line: str) -> None:  # for information in the test output, captured or not; never asserted
        with capsys.disabled():
            print(f"\n[load] {line}", end="")

    say(f"{MESSAGES} messages, {CUSTOMERS} customers, {CLIENTS} clients, {REPLIES} replies, LOAD_SEED={SEED}")
    plan = Plan.draw(random.Random(SEED))
    receiver = Receiver()
    started = time.monotonic()
    try:
        outcome = run_load(cluster, plan, receiver)
    finally:
        unclean = cluster.stop()
        receiver.close()
    elapsed = time.monotonic() - started
    assert not unclean, "\n\n".join(unclean)
    errors = [line for server in cluster.servers for line in server_errors(server)]
    warnings = sum(server.log_text().count('"level":"WARNING"') for server in cluster.servers)

    took = outcome.durations["inbound"]
    sent = len(outcome.phases["inbound"])
    say(f"inbound: {sent} requests ({MESSAGES} distinct messages) in {took:.1f} s: "
        f"{sent / took:.0f} requests/s, {MESSAGES / took:.0f} messages/s")  # fmt: skip
    for phase in ("replies", "late receipts"):
        count, took = len(outcome.phases[phase]), outcome.durations[phase]
        say(f"{phase}: {count} requests in {took:.1f} s: {count / took:.0f} requests/s")
    for phase, answers in outcome.phases.items():
        ms = sorted(answer.seconds * 1000 for answer in answers if answer.status)  # 0: no answer
        if not ms:
            continue
        say(f"{phase} latency: median {ms[len(ms) // 2]:.0f} ms, p99 {ms[len(ms) * 99 // 100]:.0f} ms, "
            f"max {ms[-1]:.0f} ms")  # fmt: skip
    receipts = Counter(
        result["outcome"]
        for answer in outcome.phases["replies"]
        if answer.kind == "receipts" and answer.status == 200
        for result in answer.json()["results"]
    )
    say(f"receipts in phase 2: {dict(receipts)}")
    resumes = [len(subscriber.resumes) for subscriber in outcome.subscribers]
    say(f"{outcome.head} events; WebSocket resumes after 4408 per subscriber: {resumes}; "
        f"{len(receiver.accepted())} webhook requests; {warnings} warnings logged; "
        f"the whole load {elapsed:.0f} s\n")  # fmt: skip

    # No 5xx, no error in either server's log, no request without an answer.
    every_answer = [answer for phase in outcome.phases.values() for answer in phase]
    failed = [a for a in every_answer if a.status == 0 or a.status >= 500]
    logged = "the servers logged:\n" + "\n".join(errors[:20])
    assert not failed, f"{len(failed)} requests failed, e.g. {failed[:5]}; {logged}"
    assert not errors, logged

    check_inbound(plan, outcome)
    check_replies(outcome)
    check_events(plan, outcome, receiver)


def check_inbound(plan: Plan, outcome: Outcome) -> None:
    by_wamid = {m.wamid: m for m in plan.inbound}
    answers = [a for phase in outcome.phases.values() for a in phase if a.kind == "inbound"]
    assert {a.status for a in answers} <= {200, 201}, Counter(a.status for a in answers)
    per_wamid: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for answer in answers:
        body = answer.json()
        assert (answer.status == 201) == (body["duplicate"] is False), (answer, body)
        per_wamid[answer.tag].append(body)
    repeats = len(plan.concurrent_repeats) + len(plan.early_repeats) + len(plan.late_repeats)
    assert len(answers) == MESSAGES + repeats
    assert set(per_wamid) == set(by_wamid)
    created_customer: Counter[str] = Counter()
    created_conversation: Counter[tuple[str, str]] = Counter()
    conversation_of: dict[tuple[str, str], set[str]] = defaultdict(set)
    customer_of: dict[str, set[str]] = defaultdict(set)
    for wamid, bodies in per_wamid.items():
        message = by_wamid[wamid]
        # Exactly one sending recorded it; every other one was answered as a repeat of the same message.
        assert sorted(b["duplicate"] for b in bodies) == [False] + [True] * (len(bodies) - 1), (wamid, bodies)
        assert len({(b["message_id"], b["conversation_id"], b["customer_id"]) for b in bodies}) == 1, bodies
        for body in bodies:
            created_customer[message.wa_id] += body["customer_created"]
            created_conversation[(message.wa_id, message.number)] += body["conversation_created"]
            conversation_of[(message.wa_id, message.number)].add(body["conversation_id"])
            customer_of[message.wa_id].add(body["customer_id"])
    pairs = {(m.wa_id, m.number) for m in plan.inbound}
    customers = {m.wa_id for m in plan.inbound}
    # One customer per WhatsApp ID and one conversation per customer and number, each created once.
    assert set(created_customer.values()) == {1}, [w for w, n in created_customer.items() if n != 1][:5]
    assert set(created_conversation.values()) == {1}, [p for p, n in created_conversation.items() if n != 1][
        :5
    ]
    assert all(len(found) == 1 for found in customer_of.values())
    assert all(len(found) == 1 for found in conversation_of.values())
    assert len({next(iter(c)) for c in conversation_of.values()}) == len(pairs)

    # Exactly one open conversation per customer and number: the API's list and lookups, and the database.
    listed = outcome.conversations
    assert len(listed) == len(pairs), (len(listed), len(pairs))
    assert {c["state"] for c in listed} == {"pending"}
    assert Counter((c["customer_id"], c["business_number_id"]) for c in listed).most_common(1)[0][1] == 1
    customer_ids = {wa: next(iter(ids)) for wa, ids in customer_of.items()}
    assert {(c["customer_id"], c["business_number_id"]) for c in listed} == {
        (customer_ids[wa], number) for wa, number in pairs
    }
    for pair in pairs:
        lookup = outcome.open_lookups[pair]
        assert lookup.status == 200, (pair, lookup)
        assert lookup.json()["id"] == next(iter(conversation_of[pair])), pair
    assert outcome.sql["open_twice"] == []
    assert outcome.sql["customers"] == len(customers)
    assert sorted(r["external_id"] for r in outcome.sql["identities"]) == sorted(customers)
    assert {r["n"] for r in outcome.sql["identities"]} == {1}

    # Every message stored once, with its text, in its conversation.
    stored = Counter(r["wamid"] for r in outcome.sql["messages"])
    assert [w for w, n in stored.items() if n > 1] == []
    rows = {r["wamid"]: r for r in outcome.sql["messages"] if r["direction"] == "inbound"}
    assert set(rows) == set(by_wamid)
    wrong = [
        w for w, r in rows.items()
        if r["text"] != by_wamid[w].text or r["status"] != "received"
        or r["conversation_id"] != next(iter(conversation_of[(by_wamid[w].wa_id, by_wamid[w].number)]))
    ]  # fmt: skip
    assert wrong == [], wrong[:5]


def check_replies(outcome: Outcome) -> None:
    replies = {reply.wamid: reply for reply in outcome.replies}
    answers = [a for a in outcome.phases["replies"] if a.kind == "reply"]
    per_wamid: dict[str, list[Sent]] = defaultdict(list)
    for answer in answers:
        per_wamid[answer.tag].append(answer)
    assert set(per_wamid) == set(replies)
    for wamid, sent in per_wamid.items():
        # Once recorded (201); a copy sent to the other instance at the same moment is a repeat (200).
        assert sorted(a.status for a in sent) == [200] * (len(sent) - 1) + [201], (wamid, sent)
        assert len({a.json()["id"] for a in sent}) == 1, sent
        assert all(a.json()["conversation_id"] == replies[wamid].conversation_id for a in sent)

    ids = outcome.reply_ids
    batches = outcome.batches
    for phase in ("replies", "late receipts"):
        for answer in outcome.phases[phase]:
            if answer.kind == "reply" or answer.kind == "inbound":
                continue
            assert answer.status == 200, answer
            results = answer.json()["results"]
            batch = batches[answer.tag]
            assert len(results) == len(batch)
            for item, result in zip(batch, results, strict=True):
                assert result["outcome"] in {"applied", "unchanged", "held"}, result
                if result["outcome"] != "held":
                    assert result["message_id"] == ids[item.wamid], (item, result)
                if phase == "late receipts":
                    # After everything: a repeat changes nothing and answers the final status.
                    assert result["outcome"] == "unchanged", (item, result)
                    assert result["status"] == expected_outcome(replies[item.wamid].receipts)["status"]

    # Every final status, time and failure is the lattice's answer, read back through both instances.
    wrong = {}
    for wamid, reply in replies.items():
        answer = outcome.messages[wamid]
        assert answer.status == 200, answer
        got, expected = outcome_of(answer.json()), expected_outcome(reply.receipts)
        if got != expected:
            wrong[wamid] = (got, expected, [r.json() for r in reply.receipts])
    assert wrong == {}, list(wrong.items())[:5]
    statuses = {r["wamid"]: r["status"] for r in outcome.sql["messages"] if r["direction"] == "outbound"}
    assert statuses == {w: expected_outcome(r.receipts)["status"] for w, r in replies.items()}
    assert outcome.sql["held"] == 0  # every receipt that came before its message was applied when it came


def check_events(plan: Plan, outcome: Outcome, receiver: Receiver) -> None:
    events = outcome.events
    # The log: numbered 1..head with no gap and no repeat.
    assert [e["seq"] for e in events] == list(range(1, outcome.head + 1))
    types = Counter(e["type"] for e in events)
    pairs = {(m.wa_id, m.number) for m in plan.inbound}
    assert types["customer.created"] == len({m.wa_id for m in plan.inbound})
    assert types["conversation.created"] == len(pairs)
    # One message.recorded per message, none for a repeat.
    recorded = [e for e in events if e["type"] == "message.recorded"]
    assert len(recorded) == MESSAGES + len(outcome.replies)
    assert len({e["message_id"] for e in recorded}) == len(recorded)
    assert {e["payload"]["wamid"] for e in recorded} == {m.wamid for m in plan.inbound} | {
        r.wamid for r in outcome.replies
    }
    assert set(types) == {
        "customer.created",
        "conversation.created",
        "message.recorded",
        "message.status_changed",
    }

    # Each reply's status changes, in event order, form one chain from queued to its final status.
    expected = {outcome.reply_ids[r.wamid]: expected_outcome(r.receipts)["status"] for r in outcome.replies}
    chains: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for event in events:
        if event["type"] == "message.status_changed":
            chains[event["message_id"]].append((event["payload"]["from"], event["payload"]["to"]))
    assert set(chains) <= set(expected)  # no inbound message changed status
    broken = {}
    for message_id, final in expected.items():
        chain = chains.get(message_id, [])
        states = ["queued"] + [to for _, to in chain]
        if [f for f, _ in chain] != states[:-1] or states[-1] != final or any(f == t for f, t in chain):
            broken[message_id] = (chain, final)
    assert broken == {}, list(broken.items())[:5]

    # Every WebSocket subscriber, on either instance, got every event (of its types) once, in order.
    for subscriber in outcome.subscribers:
        assert subscriber.failure is None, subscriber.failure
        assert subscriber.first_frame == {"kind": "live", "seq": 0}
        wanted = [e for e in events if not subscriber.types or e["type"] in subscriber.types]
        got = subscriber.events
        seqs = [e["seq"] for e in got]
        missing = sorted({e["seq"] for e in wanted} - set(seqs))
        assert seqs == [e["seq"] for e in wanted], (
            f"{subscriber.base} {subscriber.types}: {len(got)} events, {len(wanted)} expected; missing "
            f"{[(n, events[n - 1]['type'], events[n - 1]['occurred_at']) for n in missing[:10]]}, "
            f"repeated {[n for n, c in Counter(seqs).items() if c > 1][:10]}, "
            f"out of order at {[i for i in range(1, len(seqs)) if seqs[i] <= seqs[i - 1]][:10]}, "
            f"resumed after {subscriber.resumes}"
        )
        assert got == wanted

    # The webhook subscription: every event of its types, at least once (docs/design.md: "At least once";
    # receivers deduplicate by delivery ID or seq), each delivery ID standing for one event, all delivered.
    accepted = receiver.accepted()
    wanted_seqs = {e["seq"] for e in events if e["type"] in WEBHOOK_TYPES}
    assert {r.seq for r in accepted} == wanted_seqs
    delivery_seq: dict[str, set[int]] = defaultdict(set)
    for received in accepted:
        delivery_seq[received.headers["x-statemanager-delivery-id"]].add(received.seq)
        assert received.event == events[received.seq - 1]
    assert len(delivery_seq) == len(wanted_seqs)
    assert all(len(seqs) == 1 for seqs in delivery_seq.values())
    assert outcome.dead_deliveries == []
    print(f"webhook: {len(accepted)} requests for {len(wanted_seqs)} events "
          f"({len(accepted) - len(wanted_seqs)} sent again)")  # fmt: skip
