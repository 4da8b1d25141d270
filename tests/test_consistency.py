"""`state-manager check [--tenant T] [--repair] [--json]`, run as a subprocess on a real server's database.

Data is made through the API, then broken directly in the database, as a bad restore, a dropped index or a
connection without foreign keys would leave it (on PostgreSQL as `postgres`, which bypasses row-level
security). `check` must report each breakage (exit 1), `check --repair` repair what it can (with the events
a state change writes), and `check` then find nothing more (exit 0).

The servers here are this module's own, on databases of their own (breaking the schema must not reach the
session's servers), with the sweeps that would repair things behind the check's back slowed to an hour.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from domain.helpers import business_number, inbound, ok, record_message, transition, wa_id, wamid
from harness import (
    REDIS_URL,
    Api,
    RedisServer,
    Server,
    ServerProcess,
    Tenant,
    cli_json,
    create_database,
    drop_database,
    eventually,
    redis_problem,
    run_cli,
    server_env,
)

UTC = dt.UTC
OPEN_INDEX = "uq_conversations_open_per_customer_number"
# A connection per request: between requests a CLI run often takes longer than the server keeps an idle
# connection (uvicorn: 5 s), and a request sent on one it is closing fails.
FRESH_CONNECTIONS = httpx.Limits(max_keepalive_connections=0)
QUIET = {  # nothing of the server's own repairs the breakage before the check sees it
    "EVENTS_SWEEP_SECONDS": "3600",
    "WEBHOOK_SWEEP_SECONDS": "3600",
    "JOBS_ENABLED": "false",
    "CACHE_WARM_LIMIT": "0",
}


class Sql:
    """Statements straight on the server's database, past the service: `$1`-style parameters; UUIDs and
    times are given as Python values and stored as the service stores them."""

    def __init__(self, backend: str, url: str) -> None:
        self.backend = backend
        self.url = url

    def __call__(
        self, statement: str, *params: Any, without_foreign_keys: bool = False
    ) -> list[tuple[Any, ...]]:
        if self.backend == "sqlite":
            return self._sqlite(statement, params)
        return asyncio.run(self._postgres(statement, params, without_foreign_keys))

    def _sqlite(self, statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        converted = [
            p.hex
            if isinstance(p, uuid.UUID)
            else p.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
            if isinstance(p, dt.datetime)
            else p
            for p in params
        ]
        # A plain connection has foreign keys off, as SQLite's default is.
        conn = sqlite3.connect(self.url.split("///", 1)[1], timeout=30)
        try:
            rows = conn.execute(re.sub(r"\$(\d+)", r"?\1", statement), converted).fetchall()
            conn.commit()
            return rows
        finally:
            conn.close()

    async def _postgres(
        self, statement: str, params: Sequence[Any], without_foreign_keys: bool
    ) -> list[tuple[Any, ...]]:
        import asyncpg

        conn = await asyncpg.connect(self.url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            if without_foreign_keys:
                await conn.execute("SET session_replication_role = replica")  # as a restore may run
            return [tuple(row) for row in await conn.fetch(statement, *params)]
        finally:
            await conn.close()


@dataclass
class Site:
    """This module's server of one backend, its database and a way to run the CLI against it."""

    server: Server
    api: Api
    sql: Sql
    redis: bool

    @property
    def backend(self) -> str:
        return self.server.backend

    def index_definition(self, name: str) -> str:
        if self.backend == "sqlite":
            [(definition,)] = self.sql(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = $1", name
            )
        else:
            [(definition,)] = self.sql("SELECT indexdef FROM pg_indexes WHERE indexname = $1", name)
        assert isinstance(definition, str)
        return definition

    def check(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.server.cli("check", *args)

    def check_json(self, *args: str, status: int) -> dict[str, Any]:
        done = self.check(*args, "--json")
        assert done.returncode == status, (done.returncode, done.stdout[-3000:], done.stderr[-3000:])
        report: dict[str, Any] = json.loads(done.stdout)
        return report


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp(f"check-{request.param}")
    if request.param == "postgres":
        request.getfixturevalue("postgres_available")
    database = f"sm_test_{os.getpid()}_check" if request.param == "postgres" else None
    redis_server = None
    process = None
    try:
        if database is None:
            url = f"sqlite+aiosqlite:///{workdir / 'sm.db'}"
            env = server_env(workdir, url, **QUIET)
        else:
            url = create_database(database)
            # A Redis of this module's own: another test starting a new cache generation in a shared one
            # would hide this server's entries from the check.
            redis = {}
            if shutil.which("redis-server") is not None:
                redis_server = RedisServer(workdir / "redis")
                redis_server.start()
                redis = {"REDIS_URL": redis_server.url}
            elif redis_problem() is None:
                redis = {"REDIS_URL": REDIS_URL}
            env = server_env(workdir, url, **QUIET, **redis)
            migrated = run_cli("migrate", env=env, cwd=workdir)
            assert migrated.returncode == 0, migrated.stderr
            admin_key = cli_json(
                "keys", "create", "--kind", "admin", "--name", "check", env=env, cwd=workdir
            )["key"]
        process = ServerProcess(f"check-{request.param}", env, workdir)
        process.start()
        process.wait_for("/health/ready")
        if database is None:
            admin_key = (workdir / "data" / "admin-key").read_text().strip()
        server = Server(request.param, process, admin_key=admin_key, default_tenant_id="default")
        with httpx.Client(base_url=server.base_url, timeout=30.0, limits=FRESH_CONNECTIONS) as client:
            yield Site(server, Api(server, client), Sql(request.param, url), "REDIS_URL" in env)
    finally:
        stopped = process is None or process.stop()
        if database is not None:
            drop_database(database)
        if redis_server is not None:
            redis_server.stop()
        assert stopped, process.log_tail() if process else ""


class Client:
    """A tenant's requests."""

    def __init__(self, site: Site, tenant: Tenant) -> None:
        self.tenant = tenant
        self.http = httpx.Client(
            base_url=site.server.base_url,
            headers={"Authorization": f"Bearer {tenant.key}"},
            timeout=30.0,
            limits=FRESH_CONNECTIONS,
        )

    @property
    def id(self) -> str:
        return self.tenant.id

    def get(self, path: str, **params: Any) -> Any:
        return ok(self.http.get(path, params=params))

    def post(self, path: str, body: Any, status: int = 200) -> Any:
        return ok(self.http.post(path, json=body), status)

    def events(self, **params: Any) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.get("/v1/events", limit=1000, **params)["events"]
        return found


@pytest.fixture
def tenant(site: Site) -> Iterator[Client]:
    client = Client(site, site.api.new_tenant())
    try:
        yield client
    finally:
        client.http.close()


def findings(report: dict[str, Any], check: str | None = None) -> list[dict[str, Any]]:
    return [f for f in report["findings"] if check is None or f["check"] == check]


def by_check(report: dict[str, Any]) -> dict[str, list[str]]:
    """Each check's outcomes."""
    found: dict[str, list[str]] = {}
    for finding in report["findings"]:
        found.setdefault(finding["check"], []).append(finding["outcome"])
    return found


def when(value: Any) -> dt.datetime:
    moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else value
    assert isinstance(moment, dt.datetime)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def conversation_of(client: Client, wa: str, business: str, **extra: Any) -> dict[str, Any]:
    return inbound(client.http, wa, business, **extra)


# --- A clean database --------------------------------------------------------------------------------


def test_a_database_used_through_the_api_has_no_findings(site: Site, tenant: Client) -> None:
    """Everything the API writes holds every invariant; runs first, while the module's database is clean."""
    wa, business = wa_id(), business_number()
    first = conversation_of(tenant, wa, business)
    conversation_id = first["conversation_id"]
    outbound = wamid()
    record_message(tenant.http, conversation_id, wamid=outbound)
    now = dt.datetime.now(UTC)
    tenant.post(
        "/v1/receipts",
        {
            "receipts": [
                {"wamid": outbound, "status": "delivered", "at": now.isoformat()},
                {"wamid": outbound, "status": "failed", "at": now.isoformat(), "error": {"code": "131047"}},
                {"wamid": wamid(), "status": "sent", "at": now.isoformat()},  # held: no such message yet
            ]
        },
    )
    tenant.post(
        f"/v1/conversations/{conversation_id}/participants", {"role": "agent", "participant_ref": "a-1"}, 201
    )
    tenant.http.patch(f"/v1/conversations/{conversation_id}/context", json={"values": {"topic": "billing"}})
    tenant.http.patch(f"/v1/customers/{first['customer_id']}/context", json={"values": {"tier": "gold"}})
    assert transition(tenant.http, conversation_id, "active").status_code == 200
    assert transition(tenant.http, conversation_id, "closed", "done").status_code == 200
    second = conversation_of(tenant, wa, business)  # a new conversation after the close
    tenant.post("/v1/webhooks/subscriptions", {"url": "https://receiver.invalid/hook"}, 201)
    # Lookups that fill the cache, compared with the database when Redis is in use.
    tenant.get("/v1/conversations/open", wa_id=wa, business_number_id=business)
    tenant.get(f"/v1/customers/by-identity/whatsapp/{wa}")
    tenant.get(f"/v1/conversations/{second['conversation_id']}/agent-context")
    tenant.get(f"/v1/messages/by-wamid/{outbound}")

    report = site.check_json(status=0)  # every tenant of the database
    assert report["clean"] is True
    assert report["findings"] == [], report["findings"]
    assert tenant.id in report["tenants"]
    not_applicable = {item["check"] for item in report["not_applicable"]}
    assert ("cache" in not_applicable) == (not site.redis)

    done = site.check("--tenant", tenant.id)
    assert done.returncode == 0, done.stderr
    assert "No findings in 1 tenant." in done.stdout


# --- One open conversation per customer and number ---------------------------------------------------


def test_duplicate_open_conversations_are_closed_but_the_latest_active(site: Site, tenant: Client) -> None:
    wa, business = wa_id(), business_number()
    older = conversation_of(tenant, wa, business)["conversation_id"]
    assert transition(tenant.http, older, "closed", "first").status_code == 200
    newer = conversation_of(tenant, wa, business)["conversation_id"]
    definition = site.index_definition(OPEN_INDEX)
    site.sql(f"DROP INDEX {OPEN_INDEX}")
    try:
        # The older conversation open again, as a restore without the unique index could leave it.
        site.sql(
            "UPDATE conversations SET state = 'pending', closed_at = NULL, close_reason = NULL WHERE id = $1",
            uuid.UUID(older),
        )

        report = site.check_json("--tenant", tenant.id, status=1)
        [finding] = findings(report)
        assert finding["check"] == "open-conversations"
        assert finding["subjects"] == [newer, older]  # the one kept open first
        assert finding["outcome"] == "found"

        repaired = site.check_json("--tenant", tenant.id, "--repair", status=0)
        assert by_check(repaired) == {"open-conversations": ["repaired"]}
    finally:
        site.sql(definition)  # as the migration made it: upserts name its exact condition

    assert tenant.get(f"/v1/conversations/{newer}")["state"] == "pending"
    closed = tenant.get(f"/v1/conversations/{older}")
    assert closed["state"] == "closed"
    assert newer in closed["close_reason"]
    assert tenant.get(f"/v1/conversations/{older}/history")[-1]["to_state"] == "closed"
    [changed] = [
        e
        for e in tenant.events(conversation_id=older, types="conversation.state_changed")
        if e["payload"]["to"] == "closed" and newer in (e["payload"]["reason"] or "")
    ]
    assert changed["payload"]["from"] == "pending"
    [(actor, details)] = site.sql(
        "SELECT actor, details FROM audit_log WHERE tenant_id = $1 AND action = 'consistency.repaired'",
        tenant.id,
    )
    assert actor.startswith("cli:")
    assert json.loads(details)["repaired"] == {"open-conversations": 1}
    site.check_json("--tenant", tenant.id, status=0)


# --- Orphan rows -------------------------------------------------------------------------------------


def test_orphan_rows_are_deleted_when_meaningless_and_reported_otherwise(site: Site, tenant: Client) -> None:
    # A customer with an identity and customer context, whose row goes.
    customer = tenant.post(
        "/v1/customers", {"identities": [{"channel": "whatsapp", "external_id": wa_id()}]}, 201
    )
    tenant.http.patch(f"/v1/customers/{customer['id']}/context", json={"values": {"tier": "gold"}})
    # A conversation with a participant, context, state changes and a message, whose row goes.
    conversation = conversation_of(tenant, wa_id(), business_number())["conversation_id"]
    tenant.post(
        f"/v1/conversations/{conversation}/participants", {"role": "agent", "participant_ref": "a-1"}, 201
    )
    tenant.http.patch(f"/v1/conversations/{conversation}/context", json={"values": {"topic": "x"}})
    # A subscription with a delivery and its attempt, whose row goes.
    subscription = tenant.post(
        "/v1/webhooks/subscriptions",
        {"url": "https://receiver.invalid/hook", "event_types": ["customer.merged"]},
        201,
    )["id"]
    delivery = uuid.uuid4()
    now = dt.datetime.now(UTC)
    site.sql(
        "INSERT INTO webhook_deliveries (tenant_id, id, subscription_id, event_seq, event_type, ordering_key,"
        " body, status, attempts, round_attempts, next_attempt_at, created_at, updated_at)"
        " VALUES ($1, $2, $3, 1, 'customer.merged', 'tenant', '{}', 'dead', 1, 1, NULL, $4, $4)",
        tenant.id, delivery, uuid.UUID(subscription), now,
    )  # fmt: skip
    site.sql(
        "INSERT INTO webhook_attempts (tenant_id, delivery_id, attempt, attempted_at, duration_ms)"
        " VALUES ($1, $2, 1, $3, 5)",
        tenant.id, delivery, now,
    )  # fmt: skip
    for table, row_id in (
        ("customers", customer["id"]),
        ("conversations", conversation),
        ("webhook_subscriptions", subscription),
    ):
        site.sql(
            f"DELETE FROM {table} WHERE tenant_id = $1 AND id = $2",
            tenant.id,
            uuid.UUID(row_id),
            without_foreign_keys=True,
        )

    report = site.check_json("--tenant", tenant.id, status=1)
    assert {f["check"] for f in report["findings"]} == {"orphan-rows"}
    found = {f["detail"]: f["subjects"] for f in report["findings"]}
    assert found == {
        "identities of a missing customer: 1": [customer["id"]],
        "context entries of a missing customer: 1": [customer["id"]],
        "participants of a missing conversation: 1": [conversation],
        "state changes of a missing conversation: 1": [conversation],
        "messages of a missing conversation: 1": [conversation],
        "context entries of a missing conversation: 1": [conversation],
        "webhook deliveries of a missing subscription: 1": [subscription],
    }, report["findings"]

    repaired = site.check_json("--tenant", tenant.id, "--repair", status=1)
    outcomes = {f["detail"]: f["outcome"] for f in findings(repaired)}
    assert outcomes.pop("messages of a missing conversation: 1") == "left"
    assert set(outcomes.values()) == {"repaired"}, repaired["findings"]
    # The delivery's attempt went with it (the foreign key cascades), as when the API deletes a subscription.
    assert site.sql("SELECT count(*) FROM webhook_attempts WHERE delivery_id = $1", delivery) == [(0,)]
    gone = uuid.UUID(customer["id"])
    assert site.sql("SELECT count(*) FROM customer_identities WHERE customer_id = $1", gone) == [(0,)]

    left = site.check_json("--tenant", tenant.id, status=1)
    [message] = findings(left)
    assert (message["detail"], message["outcome"]) == ("messages of a missing conversation: 1", "found")
    assert "--repair leaves it" in message["note"]
    site.sql(
        "DELETE FROM messages WHERE tenant_id = $1 AND conversation_id = $2",
        tenant.id,
        uuid.UUID(conversation),
    )
    site.check_json("--tenant", tenant.id, status=0)


# --- Statuses consistent with their timestamps -------------------------------------------------------


def test_lifecycle_and_participant_times_and_failures_agree(site: Site, tenant: Client) -> None:
    ended = conversation_of(tenant, wa_id(), business_number())["conversation_id"]
    agent = tenant.post(
        f"/v1/conversations/{ended}/participants", {"role": "agent", "participant_ref": "a-1"}, 201
    )
    assert transition(tenant.http, ended, "closed", "resolved").status_code == 200
    closed = tenant.get(f"/v1/conversations/{ended}")
    site.sql("UPDATE conversations SET closed_at = NULL, close_reason = NULL WHERE id = $1", uuid.UUID(ended))
    site.sql("UPDATE conversation_participants SET left_at = NULL WHERE id = $1", uuid.UUID(agent["id"]))

    going = conversation_of(tenant, wa_id(), business_number())["conversation_id"]
    bot = tenant.post(
        f"/v1/conversations/{going}/participants", {"role": "bot", "participant_ref": "b-1"}, 201
    )
    joined = when(bot["joined_at"])
    site.sql(
        "UPDATE conversation_participants SET left_at = $2 WHERE id = $1",
        uuid.UUID(bot["id"]), joined - dt.timedelta(hours=1),
    )  # fmt: skip
    message = record_message(tenant.http, going, wamid=wamid())["id"]
    site.sql(
        "UPDATE messages SET failure_code = '131047', failure_title = 'x' WHERE id = $1", uuid.UUID(message)
    )

    report = site.check_json("--tenant", tenant.id, status=1)
    assert by_check(report) == {
        "conversation-lifecycle": ["found"],
        "participants": ["found", "found"],
        "message-failures": ["found"],
    }, report["findings"]
    [lifecycle] = findings(report, "conversation-lifecycle")
    assert lifecycle["subjects"] == [ended]
    assert "without closed_at" in lifecycle["detail"]

    repaired = site.check_json("--tenant", tenant.id, "--repair", status=0)
    assert {f["outcome"] for f in repaired["findings"]} == {"repaired"}, repaired["findings"]
    after = tenant.get(f"/v1/conversations/{ended}")
    assert after["closed_at"] == closed["closed_at"] == closed["state_changed_at"]
    assert after["close_reason"] == "resolved"
    [left] = tenant.get(f"/v1/conversations/{ended}/participants")
    assert left["left_at"] == closed["closed_at"]
    # Announced again by the repair (the first announcement went with the close whose effect was lost).
    first, again = tenant.events(conversation_id=ended, types="participant.left")
    assert first["payload"]["participant_id"] == again["payload"]["participant_id"] == agent["id"]
    assert [
        e["payload"]["fields"] for e in tenant.events(conversation_id=ended, types="conversation.updated")
    ] == [{"closed_at": closed["closed_at"].replace("Z", "+00:00"), "close_reason": "resolved"}]
    [bot_after] = tenant.get(f"/v1/conversations/{going}/participants")
    assert when(bot_after["left_at"]) == joined
    assert tenant.get(f"/v1/messages/{message}")["failure"] is None
    assert site.sql("SELECT failure_code, failure_title FROM messages WHERE id = $1", uuid.UUID(message)) == [
        (None, None)
    ]
    site.check_json("--tenant", tenant.id, status=0)


# --- Last activity consistent with the messages ------------------------------------------------------


def test_activity_times_are_recomputed_from_the_messages(site: Site, tenant: Client) -> None:
    start = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(hours=3)
    conversation = conversation_of(tenant, wa_id(), business_number(), occurred_at=start.isoformat())[
        "conversation_id"
    ]
    answered = start + dt.timedelta(hours=1)
    record_message(tenant.http, conversation, wamid=wamid(), occurred_at=answered.isoformat())
    site.sql(
        "UPDATE conversations SET last_activity_at = $2, last_inbound_at = NULL, last_outbound_at = $3,"
        " reply_window_ends_at = NULL WHERE id = $1",
        uuid.UUID(conversation), start - dt.timedelta(days=1), answered + dt.timedelta(days=1),
    )  # fmt: skip

    report = site.check_json("--tenant", tenant.id, status=1)
    [finding] = findings(report)
    assert finding["check"] == "conversation-activity"
    for column in ("last_activity_at", "last_inbound_at", "last_outbound_at", "reply_window_ends_at"):
        assert column in finding["detail"]

    site.check_json("--tenant", tenant.id, "--repair", status=0)
    repaired = tenant.get(f"/v1/conversations/{conversation}")
    assert when(repaired["last_inbound_at"]) == start
    assert when(repaired["reply_window_ends_at"]) == start + dt.timedelta(hours=24)
    assert when(repaired["last_outbound_at"]) == answered
    assert when(repaired["last_activity_at"]) == answered
    [announced] = tenant.events(conversation_id=conversation, types="conversation.updated")
    assert set(announced["payload"]["fields"]) == {
        "last_activity_at", "last_inbound_at", "last_outbound_at", "reply_window_ends_at"
    }  # fmt: skip
    assert announced["payload"]["version"] == repaired["version"]
    site.check_json("--tenant", tenant.id, status=0)


# --- Held receipts whose message exists --------------------------------------------------------------


def test_held_receipts_of_a_known_message_are_applied(site: Site, tenant: Client) -> None:
    conversation = conversation_of(tenant, wa_id(), business_number())["conversation_id"]
    sent = wamid()
    message = record_message(tenant.http, conversation, wamid=sent)["id"]
    delivered_at = dt.datetime.now(UTC).replace(microsecond=0)
    site.sql(
        "INSERT INTO pending_receipts (tenant_id, id, id_kind, external_id, status, occurred_at, received_at)"
        " VALUES ($1, $2, 'wamid', $3, 'delivered', $4, $4)",
        tenant.id, uuid.uuid4(), sent, delivered_at,
    )  # fmt: skip

    report = site.check_json("--tenant", tenant.id, status=1)
    [finding] = findings(report)
    assert (finding["check"], finding["subjects"][1]) == ("held-receipts", message)

    site.check_json("--tenant", tenant.id, "--repair", status=0)
    applied = tenant.get(f"/v1/messages/{message}")
    assert applied["status"] == "delivered"
    assert when(applied["delivered_at"]) == delivered_at
    [announced] = tenant.events(types="message.status_changed")
    assert announced["payload"]["to"] == "delivered"
    assert site.sql("SELECT count(*) FROM pending_receipts WHERE tenant_id = $1", tenant.id) == [(0,)]
    site.check_json("--tenant", tenant.id, status=0)


# --- Nothing stuck on its way out --------------------------------------------------------------------


def test_stuck_events_queue_output_and_deliveries(site: Site, tenant: Client) -> None:
    conversation_of(tenant, wa_id(), business_number())
    # Numbered by the server's relay (customer, conversation, message), so that it has a last number.
    eventually(lambda: len(tenant.events()) == 3)
    subscription = uuid.UUID(
        tenant.post(
            "/v1/webhooks/subscriptions",
            {"url": "https://receiver.invalid/hook", "event_types": ["customer.merged"]},
            201,
        )["id"]
    )
    now = dt.datetime.now(UTC)
    long_ago = now - dt.timedelta(hours=2)
    # The relay's last number one behind the events' (its next numbering would collide) ...
    site.sql("UPDATE event_relay SET last_seq = last_seq - 1 WHERE tenant_id = $1", tenant.id)
    # ... and an event a crashed process committed but never numbered.
    event_id = "(SELECT coalesce(max(id), 0) + 1 FROM events)" if site.backend == "sqlite" else "DEFAULT"
    [(stuck_event,)] = site.sql(
        f"INSERT INTO events (tenant_id, id, type, payload, occurred_at) VALUES ($1, {event_id},"
        " 'customer.updated', '{\"fields\": {}, \"version\": 1}', $2) RETURNING id",
        tenant.id, long_ago,
    )  # fmt: skip
    outbox = uuid.uuid4()
    site.sql(
        "INSERT INTO broker_outbox (tenant_id, id, seq, destination, body, created_at)"
        " VALUES ($1, $2, 1, 'inbound_enriched', '{}', $3)",
        tenant.id, outbox, long_ago,
    )  # fmt: skip
    deliveries = {"no due time": uuid.uuid4(), "leased for a day": uuid.uuid4(), "not claimed": uuid.uuid4()}
    for seq, (key, delivery, next_attempt, lease) in enumerate(
        [
            ("a", deliveries["no due time"], None, None),
            ("b", deliveries["leased for a day"], now, now + dt.timedelta(days=1)),
            ("c", deliveries["not claimed"], long_ago, None),
        ],
        1,
    ):
        site.sql(
            "INSERT INTO webhook_deliveries (tenant_id, id, subscription_id, event_seq, event_type,"
            " ordering_key, body, status, attempts, round_attempts, next_attempt_at, locked_until,"
            " created_at, updated_at)"
            " VALUES ($1, $2, $3, $4, 'customer.merged', $5, '{}', 'pending', 0, 0, $6, $7, $8, $8)",
            tenant.id, delivery, subscription, seq, key, next_attempt, lease, long_ago,
        )  # fmt: skip

    report = site.check_json("--tenant", tenant.id, status=1)
    assert by_check(report) == {
        "event-numbering": ["found"],
        "unnumbered-events": ["found"],
        "queue-outbox": ["found"],
        "webhook-deliveries": ["found", "found", "found"],
    }, report["findings"]
    assert findings(report, "unnumbered-events")[0]["subjects"] == [str(stuck_event)]
    assert findings(report, "queue-outbox")[0]["subjects"] == [str(outbox)]
    assert sorted(f["subjects"][0] for f in findings(report, "webhook-deliveries")) == sorted(
        str(d) for d in deliveries.values()
    )

    repaired = site.check_json("--tenant", tenant.id, "--repair", status=1)
    outcomes = {(f["check"], f["subjects"][0]): f["outcome"] for f in repaired["findings"]}
    assert outcomes == {
        ("event-numbering", findings(report, "event-numbering")[0]["subjects"][0]): "repaired",
        ("unnumbered-events", str(stuck_event)): "repaired",
        ("queue-outbox", str(outbox)): "left",
        ("webhook-deliveries", str(deliveries["no due time"])): "repaired",
        ("webhook-deliveries", str(deliveries["leased for a day"])): "repaired",
        ("webhook-deliveries", str(deliveries["not claimed"])): "left",
    }, repaired["findings"]
    # Numbered after the events that were already, through the relay: readable in order by the API.
    [numbered] = [e for e in tenant.events() if e["type"] == "customer.updated"]
    assert numbered["seq"] == max(e["seq"] for e in tenant.events())
    [(due, lease)] = site.sql(
        "SELECT next_attempt_at, locked_until FROM webhook_deliveries WHERE id = $1",
        deliveries["no due time"],
    )
    assert due is not None
    assert lease is None
    [(lease,)] = site.sql(
        "SELECT locked_until FROM webhook_deliveries WHERE id = $1", deliveries["leased for a day"]
    )
    assert lease is None

    # What needs a broker or a dispatcher stays until one runs; here it is removed by hand.
    site.sql("DELETE FROM broker_outbox WHERE id = $1", outbox)
    site.sql("DELETE FROM webhook_deliveries WHERE tenant_id = $1", tenant.id)
    site.check_json("--tenant", tenant.id, status=0)


# --- --tenant ----------------------------------------------------------------------------------------


def test_tenant_option_checks_and_repairs_that_tenant_only(site: Site) -> None:
    first, second = (Client(site, site.api.new_tenant()) for _ in range(2))
    try:
        for client in (first, second):
            conversation = conversation_of(client, wa_id(), business_number())["conversation_id"]
            site.sql("UPDATE conversations SET last_inbound_at = NULL WHERE id = $1", uuid.UUID(conversation))

        report = site.check_json("--tenant", first.id, status=1)
        assert report["tenants"] == [first.id]
        assert {f["tenant"] for f in report["findings"]} == {first.id}

        done = site.check("--tenant", first.id, "--repair")
        assert done.returncode == 0, done.stderr
        assert "conversation-activity" in done.stdout
        assert "repaired" in done.stdout
        assert "1 tenant checked: 1 repaired" in done.stderr

        done = site.check("--tenant", second.id)
        assert done.returncode == 1, done.stderr
        assert "conversation-activity" in done.stdout
        assert second.id in done.stdout
        assert first.id not in done.stdout
        site.check_json("--tenant", second.id, "--repair", status=0)
        site.check_json("--tenant", first.id, status=0)
    finally:
        first.http.close()
        second.http.close()

    unknown = site.check("--tenant", "no-such-tenant")
    assert unknown.returncode == 2
    assert "tenant 'no-such-tenant' not found" in unknown.stderr


# --- The shared cache ---------------------------------------------------------------------------------


def test_stale_shared_cache_entries_are_found_and_dropped_everywhere(site: Site, tenant: Client) -> None:
    if not site.redis:
        report = site.check_json("--tenant", tenant.id, status=0)
        [cache] = [item for item in report["not_applicable"] if item["check"] == "cache"]
        assert "REDIS_URL" in cache["reason"]
        return
    wa, business = wa_id(), business_number()
    created = conversation_of(tenant, wa, business, profile_name="Ana")
    path = f"/v1/customers/by-identity/whatsapp/{wa}"
    assert tenant.get(path)["display_name"] == "Ana"  # now in Redis and in the server's own tier
    tenant.get("/v1/conversations/open", wa_id=wa, business_number_id=business)
    # Changed behind the service's back: nothing drops the cached answers.
    site.sql(
        "UPDATE customers SET display_name = 'Bea', version = version + 1 WHERE id = $1",
        uuid.UUID(created["customer_id"]),
    )
    assert tenant.get(path)["display_name"] == "Ana"

    report = site.check_json("--tenant", tenant.id, status=1)
    [stale] = findings(report)
    assert stale["check"] == "cache"
    assert stale["subjects"] == ["customer_by_identity", f"whatsapp:{wa}"]
    assert "differs" in stale["detail"]

    repaired = site.check_json("--tenant", tenant.id, "--repair", status=0)
    assert by_check(repaired) == {"cache": ["repaired"]}
    # Dropped from Redis and from the running server's local tier alike.
    assert tenant.get(path)["display_name"] == "Bea"
    site.check_json("--tenant", tenant.id, status=0)
