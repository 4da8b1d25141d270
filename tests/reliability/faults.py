"""What the fault tests share: writers that record every answer they get, and the checks of what the
database holds afterwards (each acknowledged message once, one open conversation per customer and number,
an event log with no gap and no duplicate)."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx

from domain.helpers import PROBLEM_JSON, ok, wa_id, wamid
from harness import _in_thread

OPEN_STATES = ("pending", "active", "waiting", "error")


@dataclass
class Answer:
    """One attempt to record one message: the status, or the transport error if there was no answer."""

    wamid: str
    base_url: str
    status: int | None
    retry_after: str | None = None
    content_type: str = ""
    code: str | None = None
    error: str | None = None
    phase: str = ""  # the test's phase when the request was sent

    @property
    def acknowledged(self) -> bool:
        return self.status in (200, 201)


@dataclass
class Writer:
    """A client that records inbound messages, each with a new wamid, for customers of a shared pool, until
    stopped. `failover` lists the instances to try, in order, when one gives no answer at all (a killed
    instance); the same message (same wamid) is sent again there, as a client retrying would."""

    instances: list[str]
    headers: dict[str, str]
    customers: list[tuple[str, str]]  # (wa_id, business number)
    answers: list[Answer] = field(default_factory=list)
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    retry_elsewhere: bool = False
    pause_after_refusal: float = 0.1
    phase: list[str] = field(default_factory=lambda: [""])  # shared with the test, which moves it on
    stopping: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(60)
            assert not self._thread.is_alive(), "a writer did not stop"

    def _run(self) -> None:
        target = 0
        clients = [httpx.Client(base_url=url, headers=self.headers, timeout=30) for url in self.instances]
        try:
            while not self.stopping.is_set():
                wa, business = random.choice(self.customers)
                body = {"wa_id": wa, "business_number_id": business, "wamid": wamid(), "text": "hi"}
                self.bodies[body["wamid"]] = body
                while True:
                    phase = self.phase[0]
                    answer = send(clients[target], body)
                    answer.phase = phase
                    self.answers.append(answer)
                    if answer.status == 503:
                        time.sleep(self.pause_after_refusal)  # as a client would, if less than Retry-After
                    if answer.status is not None or not self.retry_elsewhere:
                        break
                    if target + 1 >= len(clients):
                        break
                    target += 1  # no answer: that instance is gone; the same message to the next
        finally:
            for client in clients:
                client.close()

    @property
    def sent(self) -> set[str]:
        return set(self.bodies)


def send(client: httpx.Client, body: dict[str, Any]) -> Answer:
    url = str(client.base_url)
    try:
        response = client.post("/v1/messages/inbound", json=body)
    except httpx.TransportError as exc:
        return Answer(body["wamid"], url, None, error=f"{type(exc).__name__}: {exc}")
    code = None
    content_type = response.headers.get("content-type", "")
    if content_type.startswith(PROBLEM_JSON):
        code = response.json().get("code")
    return Answer(
        body["wamid"], url, response.status_code, response.headers.get("retry-after"), content_type, code
    )


def customers(count: int, numbers: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(wa_id(), number) for _ in range(count) for number in numbers]


# --- The database afterwards, read as its owner (no row-level security) -------------------------------------


def query(dsn: str, statement: str, *args: Any) -> list[Any]:
    async def run() -> list[Any]:
        conn = await asyncpg.connect(dsn.replace("postgresql+asyncpg://", "postgresql://", 1), timeout=10)
        try:
            rows: list[Any] = await conn.fetch(statement, *args)
            return rows
        finally:
            await conn.close()

    return _in_thread(run())


def stored_wamids(dsn: str, tenant: str) -> dict[str, int]:
    rows = query(dsn, "SELECT wamid, count(*) AS n FROM messages WHERE tenant_id = $1 GROUP BY wamid", tenant)
    return {row["wamid"]: row["n"] for row in rows}


def assert_each_once(dsn: str, tenant: str, expected: set[str]) -> None:
    """Every message sent is stored exactly once, and nothing else is."""
    stored = stored_wamids(dsn, tenant)
    doubled = {key: n for key, n in stored.items() if n != 1}
    assert not doubled, f"stored more than once: {doubled}"
    assert not expected - set(stored), f"lost: {sorted(expected - set(stored))[:10]}"
    assert not set(stored) - expected, f"never sent: {sorted(set(stored) - expected)[:10]}"


def assert_one_open_conversation_each(dsn: str, tenant: str, pool: list[tuple[str, str]]) -> None:
    """Each customer of the pool has one customer row and one open conversation per business number."""
    identities = query(
        dsn,
        "SELECT external_id, count(*) AS n FROM customer_identities WHERE tenant_id = $1"
        " AND channel = 'whatsapp' GROUP BY external_id",
        tenant,
    )
    assert {row["external_id"] for row in identities} == {wa for wa, _ in pool}
    assert all(row["n"] == 1 for row in identities)
    rows = query(
        dsn,
        "SELECT i.external_id, c.business_number_id, count(*) AS n FROM conversations c"
        " JOIN customer_identities i ON i.tenant_id = c.tenant_id AND i.customer_id = c.customer_id"
        " AND i.channel = 'whatsapp'"
        " WHERE c.tenant_id = $1 AND c.state = ANY($2::text[]) GROUP BY 1, 2",
        tenant,
        list(OPEN_STATES),
    )
    found = {(row["external_id"], row["business_number_id"]): row["n"] for row in rows}
    assert found == dict.fromkeys(pool, 1)


def unnumbered(dsn: str, tenant: str) -> int:
    rows = query(dsn, "SELECT count(*) AS n FROM events WHERE tenant_id = $1 AND seq IS NULL", tenant)
    return int(rows[0]["n"])


def assert_events_whole(dsn: str, tenant: str, client: httpx.Client, messages: int) -> list[dict[str, Any]]:
    """Every event numbered, 1..n with no gap and no number twice, the log served as stored, and one
    `message.recorded` per stored message. Returns the log."""
    rows = query(
        dsn,
        "SELECT count(*) AS n, count(DISTINCT seq) AS distinct_seqs, min(seq) AS low, max(seq) AS high"
        " FROM events WHERE tenant_id = $1",
        tenant,
    )
    stats = dict(rows[0])
    assert stats == {"n": stats["n"], "distinct_seqs": stats["n"], "low": 1, "high": stats["n"]}, stats
    recorded = query(
        dsn,
        "SELECT message_id, count(*) AS n FROM events WHERE tenant_id = $1 AND type = 'message.recorded'"
        " GROUP BY message_id",
        tenant,
    )
    assert len(recorded) == messages
    assert all(row["n"] == 1 for row in recorded)
    log: list[dict[str, Any]] = []
    after = 0
    while True:
        page = ok(client.get("/v1/events", params={"after": after, "limit": 1000}))
        log += page["events"]
        if not page["events"]:
            break
        after = page["next_after"]
    assert [event["seq"] for event in log] == list(range(1, stats["n"] + 1))
    return log
