"""`state-manager backup`, `backup verify` and `restore` through the real CLI, against the real servers of
both backends, with data written through the real API.

Files are compared by the SHA-256 of each table (the manifest's, which `backup verify` checks against the
bytes): equal data gives equal checksums on either backend. The audit log is the exception: each restore
adds its own entry (`backup.restored`), so it is compared without those.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import threading
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from sqlalchemy.engine import make_url

from domain.helpers import inbound, ok, transition, wa_id
from harness import (
    Api,
    Broker,
    Server,
    ServerProcess,
    as_postgres_admin,
    clean_env,
    create_database,
    drop_database,
    eventually,
    run_cli,
    server_env,
)
from webhook_receiver import Receiver

PAYLOADS = Path(__file__).resolve().parent / "payloads"
BUSINESS = "bn-backup"


def payload(name: str) -> Any:
    return json.loads((PAYLOADS / f"{name}.json").read_text())


# --- Files ---------------------------------------------------------------------------------------------


def manifest_of(path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(path) as archive:
        found: dict[str, Any] = orjson.loads(archive.read("manifest.json"))
    return found


def rows_of(path: Path, table: str) -> list[dict[str, Any]]:
    with zipfile.ZipFile(path) as archive:
        entry = next(t for t in orjson.loads(archive.read("manifest.json"))["tables"] if t["name"] == table)
        lines = archive.read(entry["member"]).splitlines()
    return [dict(zip(entry["columns"], orjson.loads(line), strict=True)) for line in lines]


def digests(path: Path) -> dict[str, str]:
    """Each table's SHA-256; the audit log's recomputed without the entries restores added."""
    found = {table["name"]: table["sha256"] for table in manifest_of(path)["tables"]}
    kept = b"".join(
        orjson.dumps(list(row.values()), option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE)
        for row in rows_of(path, "audit_log")
        if row["action"] != "backup.restored"
    )
    found["audit_log"] = hashlib.sha256(kept).hexdigest()
    return found


def rewrite(source: Path, target: Path, change: Callable[[str, bytes], bytes | None]) -> None:
    """A copy of a backup file with each member passed through `change(name, data)` (None leaves it out)."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as copied:
        for info in original.infolist():
            changed = change(info.filename, original.read(info.filename))
            if changed is not None:
                copied.writestr(info.filename, changed)


def with_manifest(source: Path, target: Path, **fields: Any) -> None:
    def change(name: str, data: bytes) -> bytes:
        return orjson.dumps(orjson.loads(data) | fields) if name == "manifest.json" else data

    rewrite(source, target, change)


# --- Databases and the CLI -----------------------------------------------------------------------------


@dataclass
class Database:
    """A database and the settings that point the CLI (or a server) at it."""

    backend: str
    env: dict[str, str]
    workdir: Path

    def cli(self, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        done = run_cli(*args, env=self.env, cwd=self.workdir, timeout=300)
        assert done.returncode == code, (
            f"state-manager {' '.join(args)} exited {done.returncode}:\n{done.stderr}"
        )
        return done

    def backup(self, out: Path, *, tenant: str | None = None) -> Path:
        self.cli("backup", "--out", str(out), *(["--tenant", tenant] if tenant else []))
        return out

    def restore(self, file: Path, *options: str) -> dict[str, Any]:
        report: dict[str, Any] = json.loads(self.cli("restore", str(file), "--json", *options).stdout)
        return report


def live(server: Server) -> Database:
    """The database of a running server (its own settings: with Redis on the postgres backend)."""
    return Database(server.backend, server.env, server.process.workdir)


@pytest.fixture
def empty_database(tmp_path: Path) -> Iterator[Callable[[str], Database]]:
    """Makes empty databases (a new SQLite file, a new PostgreSQL database), without Redis: nothing runs
    on them that Redis would have to be told about."""
    made: list[str] = []

    def make(backend: str) -> Database:
        workdir = tmp_path / f"{backend}-{uuid.uuid4().hex[:8]}"
        workdir.mkdir()
        if backend == "sqlite":
            url = f"sqlite+aiosqlite:///{workdir / 'restored.db'}"
        else:
            name = f"sm_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
            url = create_database(name)
            made.append(name)
        return Database(backend, clean_env(DATABASE_URL=url, DATA_DIR=str(workdir / "data")), workdir)

    yield make
    for name in made:
        drop_database(name)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


# --- Data written through the API ----------------------------------------------------------------------


@dataclass
class Populated:
    tenant_id: str
    key: str
    client: httpx.Client
    conversation_id: str
    customer_id: str
    wa_id: str


def populate(api: Api, receiver: Receiver, broker: Broker | None = None) -> Populated:
    """A tenant with rows in every table a backup holds, written as the caller services would."""
    created = api.new_tenant()
    client = httpx.Client(base_url=api.base_url, headers=created.headers, timeout=60)
    ok(client.post("/v1/webhooks/subscriptions", json={"url": receiver.url}), 201)
    [first] = ok(client.post("/v1/inbound/whatsapp", json=payload("wa_inbound_text")))["items"]
    conversation_id, customer_id = first["conversation_id"], first["customer_id"]
    gc = f"gc-{uuid.uuid4().hex[:8]}"
    correlation = {"whatsapp_message_id": first["wamid"], "genesys_conversation_id": gc}
    ok(client.post("/v1/correlations", json=correlation))
    agent = {
        "type": "agent_connected",
        "at": "2030-01-01T10:00:00Z",
        "genesys_conversation_id": gc,
        "agent_id": "a1",
    }
    ok(client.post("/v1/events/genesys", json=agent))
    ok(
        client.post(
            f"/v1/conversations/{conversation_id}/messages",
            json={
                "direction": "outbound",
                "text": 'Olá! Já verifico 📦 "#48213"\n\\ok',
                "genesys_message_id": gc,
            },
        ),
        201,
    )
    # A receipt for a message not known yet: held.
    status = payload("wa_status_read")
    status["entry"][0]["changes"][0]["value"]["statuses"][0]["id"] = "wamid.not-yet-known"
    ok(client.post("/v1/inbound/whatsapp", json=status))
    # Bare numbers too: SQLite stores a JSON column's number as a number (the column's NUMERIC affinity).
    context = {
        "values": {
            "topic": "order",
            "detail": {"z": 1, "a": [1, 2.5, None, "ü"], "m": {"y": True}},
            "attempts": 3,
            "score": 0.5,
        }
    }
    ok(client.patch(f"/v1/conversations/{conversation_id}/context", json=context))
    ok(client.patch(f"/v1/customers/{customer_id}/context", json={"values": {"tier": "gold"}}))
    for _ in range(3):
        inbound(client, wa_id(), BUSINESS, status=201)
    assert client.get(f"/v1/customers/{customer_id}/export").status_code == 200  # audited
    if broker is not None:
        message = {
            "tenantId": created.id,
            "wamid": f"wamid.queue.{uuid.uuid4().hex}",
            "wa_id": wa_id(),
            "contact_name": "Ana",
            "timestamp": "1767225600",
            "message_text": "via the queue",
            "media_url": None,
            "phone_number_id": "15550001234",
            "display_phone_number": "+1 555 000 1234",
        }
        broker.publish("INBOUND_QUEUE", message)
        assert broker.take("INBOUND_ENRICHED_QUEUE", where=lambda body: body.get("tenantId") == created.id)

    def delivered() -> bool:
        page = ok(client.get("/v1/webhooks/deliveries", params={"status": "delivered"}))
        return bool(page["items"])

    eventually(delivered, timeout=30)
    wa = payload("wa_inbound_text")["entry"][0]["changes"][0]["value"]["contacts"][0]["wa_id"]
    return Populated(created.id, created.key, client, conversation_id, customer_id, wa)


@pytest.fixture
def populated(api: Api, receiver: Receiver, rabbitmq_url: str | None) -> Iterator[Populated]:
    broker = Broker(api.server.env, rabbitmq_url) if rabbitmq_url else None
    try:
        data = populate(api, receiver, broker)
    finally:
        if broker is not None:
            broker.close()
    yield data
    data.client.close()


def restored_server(database: Database) -> ServerProcess:
    process = ServerProcess(
        f"restored-{database.backend}",
        # A short sweep: the restored tenants' analytics are rebuilt by it (tested below).
        server_env(database.workdir, database.env["DATABASE_URL"], ANALYTICS_SWEEP_SECONDS="1"),
        database.workdir,
    )
    process.start()
    process.wait_for("/health/ready")
    return process


# --- Tests ---------------------------------------------------------------------------------------------


def test_backup_drop_restore_backup_gives_equal_checksums(
    api: Api, populated: Populated, empty_database: Callable[[str], Database], tmp_path: Path
) -> None:
    source = live(api.server)
    first = source.backup(tmp_path / "first.zip")
    tables = {table["name"]: table["rows"] for table in manifest_of(first)["tables"]}
    empty = [name for name, rows in tables.items() if rows == 0]
    if api.server.env.get("RABBITMQ_URL") is None:
        empty.remove("broker_outbox")  # written only by the queue consumers
    assert empty == [], f"the data should fill every table: {empty}"
    assert "job_leases" not in tables
    source.cli("backup", "verify", str(first))

    target = empty_database(api.backend)  # the database lost: restored into a new, empty one
    report = target.restore(first)
    assert {t["name"]: t["inserted"] for t in report["tables"]} == tables
    # No invariant broken (docs/consistency.md), in this test's tenant: the session's other tenants may
    # hold what other tests left on purpose (say, deliveries to a receiver that never answers).
    target.cli("check", "--tenant", populated.tenant_id)
    second = target.backup(tmp_path / "second.zip")
    assert digests(second) == digests(first)
    target.cli("backup", "verify", str(second))

    # A server on the restored database answers as the original did.
    server = restored_server(target)
    try:
        with httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {populated.key}"}
        ) as client:
            for path in (
                f"/v1/conversations/{populated.conversation_id}",
                f"/v1/conversations/{populated.conversation_id}/messages",
                f"/v1/conversations/{populated.conversation_id}/agent-context",
                f"/v1/customers/{populated.customer_id}",
                "/v1/events?after=0&limit=1000",
            ):
                assert ok(client.get(path)) == ok(populated.client.get(path)), path

            # Analytics are not in the file: the restored server projects them again from the tables, by
            # itself (its sweep finds the tenant without a projection; no event wakes it, no report asks)…
            def projected() -> bool:
                [status] = json.loads(
                    target.cli("analytics", "status", "--json", "--tenant", populated.tenant_id).stdout
                )
                return bool(status["complete"])

            assert eventually(projected, timeout=30)
            # … and it answers the reports as the original server does.
            today = dt.datetime.now(dt.UTC).date()
            days = {"from": str(today - dt.timedelta(days=2)), "to": str(today + dt.timedelta(days=1))}
            for report in ("conversations", "messages", "customers", "agents"):
                path = f"/v1/analytics/{report}"
                restored, original = (
                    ok(client.get(path, params=days)),
                    ok(populated.client.get(path, params=days)),
                )
                assert restored["freshness"]["complete"], restored["freshness"]
                assert restored == original, report
            assert ok(client.get("/v1/analytics/messages", params=days))["totals"]["inbound"] > 0
            # It takes writes: new events get identities past the restored ones (PostgreSQL's sequence
            # was moved), and numbers that follow the restored ones.
            head = ok(client.get("/v1/events", params={"after": 0, "limit": 1}))["head"]
            inbound(client, wa_id(), BUSINESS, status=201)

            def numbered() -> list[int]:
                page = ok(client.get("/v1/events", params={"after": head}))
                return [event["seq"] for event in page["events"]]

            assert eventually(numbered)[0] == head + 1
    finally:
        assert server.stop()


def test_restore_twice_is_restoring_once_and_replace_brings_a_tenant_back(
    api: Api, populated: Populated, empty_database: Callable[[str], Database], tmp_path: Path
) -> None:
    source = live(api.server)
    original = source.backup(tmp_path / "tenant.zip", tenant=populated.tenant_id)

    target = empty_database(api.backend)
    once = target.restore(original)
    assert all(t["inserted"] == t["in_file"] for t in once["tables"])
    after_once = target.backup(tmp_path / "once.zip")
    twice = target.restore(original)
    assert [(t["inserted"], t["already_present"]) for t in twice["tables"]] == [
        (0, t["in_file"]) for t in twice["tables"]
    ]
    after_twice = target.backup(tmp_path / "twice.zip")
    assert digests(after_twice) == digests(after_once)
    restores = [row for row in rows_of(after_twice, "audit_log") if row["action"] == "backup.restored"]
    assert [(row["tenant_id"], row["subject_id"], row["actor"].startswith("cli:")) for row in restores] == [
        (populated.tenant_id, populated.tenant_id, True)
    ] * 2

    # The tenant changes on the live server (read once more first, so that the lookup cache holds it)…
    client = populated.client
    lookup = {
        "wa_id": populated.wa_id,
        "business_number_id": ok(client.get(f"/v1/conversations/{populated.conversation_id}"))[
            "business_number_id"
        ],
    }
    before = ok(client.get("/v1/conversations/open", params=lookup))
    assert transition(client, populated.conversation_id, "waiting", "on hold").status_code == 200
    ok(client.patch(f"/v1/customers/{populated.customer_id}", json={"display_name": "Someone else"}))
    inbound(client, wa_id(), BUSINESS, status=201)
    assert ok(client.get("/v1/conversations/open", params=lookup))["state"] == "waiting"
    # A newer file restored over the older one (the default, merging) carries the relay's numbering on.
    newer = source.backup(tmp_path / "newer.zip", tenant=populated.tenant_id)
    target.restore(newer)
    merged = target.backup(tmp_path / "merged.zip", tenant=populated.tenant_id)
    [relay] = rows_of(merged, "event_relay")
    assert relay["last_seq"] == max(event["seq"] or 0 for event in rows_of(merged, "events"))
    assert relay["last_seq"] == rows_of(newer, "event_relay")[0]["last_seq"]
    if api.backend == "postgres":  # a consumer of the tenant's Redis stream reads it all
        stream = redis.Redis.from_url(api.server.env["REDIS_URL"])
        key = f"sm:{{{populated.tenant_id}}}:events"
        stream.xgroup_create(key, "crm", id="0")
        while stream.xreadgroup("crm", "c1", {key: ">"}, count=1000):
            pass
    # … and --replace brings it back to the file, in the database and in what the server answers.
    replaced = source.restore(original, "--replace")
    assert replaced["mode"] == "replace"
    assert digests(source.backup(tmp_path / "replaced.zip", tenant=populated.tenant_id)) == digests(original)
    if api.backend == "postgres":  # the embedded default has no Redis to reach its running server through
        assert replaced["cache_cleared"] is True
        # Within the bound another instance has to hear of any write (docs/design.md, "Lookup cache").
        eventually(lambda: ok(client.get("/v1/conversations/open", params=lookup)) == before, timeout=1.0)
        # The tenant's Redis stream went back with it, and a consumer group that had read past the restored
        # events with it: the events numbered next are published, and the group reads them.
        last_seq = rows_of(original, "event_relay")[0]["last_seq"]
        was, now = replaced["event_streams_cut"][populated.tenant_id]
        assert was >= relay["last_seq"] > now == last_seq
        groups: Any = stream.xinfo_groups(key)
        [group] = groups
        assert group["last-delivered-id"] == f"{last_seq}-1".encode()
        inbound(client, wa_id(), BUSINESS, status=201)

        def read() -> list[int]:
            found: Any = stream.xreadgroup("crm", "c1", {key: ">"}, count=100)
            return [int(entry_id.split(b"-")[0]) for _, entries in found for entry_id, _ in entries]

        assert eventually(read)[0] == last_seq + 1
        stream.close()


def test_replacing_from_an_older_file_keeps_the_audit_log_and_names_erasures_to_do_again(
    api: Api, populated: Populated, tmp_path: Path
) -> None:
    """The file predates an erasure: --replace brings the customer's data back, so the audit log (the
    record of the erasure) survives it, and the restore names the customers to erase again."""
    source = live(api.server)
    older = source.backup(tmp_path / "older.zip", tenant=populated.tenant_id)
    ok(populated.client.post(f"/v1/customers/{populated.customer_id}/erase", json={"reason": "asked"}))

    replaced = source.restore(older, "--replace")
    assert replaced["erased_since_file"] == [
        {"tenant": populated.tenant_id, "customer": populated.customer_id}
    ]
    entries = ok(populated.client.get("/v1/audit", params={"action": "customer.erased"}))["items"]
    assert [entry["subject_id"] for entry in entries] == [populated.customer_id]
    # Erasing again, as the restore asked, leaves the customer erased.
    again = ok(populated.client.post(f"/v1/customers/{populated.customer_id}/erase", json={}))
    assert again["counts"] is not None  # the restore had brought data back
    assert ok(populated.client.get(f"/v1/customers/{populated.customer_id}"))["erased_at"] is not None


def test_a_tenant_backup_holds_that_tenant_only_and_restores_beside_others(
    api: Api, receiver: Receiver, empty_database: Callable[[str], Database], tmp_path: Path
) -> None:
    source = live(api.server)
    mine, other = populate(api, receiver), populate(api, receiver)
    try:
        file = source.backup(tmp_path / "mine.zip", tenant=mine.tenant_id)
        manifest = manifest_of(file)
        assert (manifest["tenant"], manifest["tenants"]) == (mine.tenant_id, [mine.tenant_id])
        for table in manifest["tables"]:
            for row in rows_of(file, table["name"]):
                if table["name"] == "organizations":
                    assert row["id"] == f"org-{mine.tenant_id.removeprefix('t-')}"
                else:
                    assert row["id" if table["name"] == "tenants" else "tenant_id"] == mine.tenant_id, table[
                        "name"
                    ]
        keys = rows_of(file, "api_keys")
        assert keys
        assert all(len(key["secret_hash"]) == 64 for key in keys)
        with zipfile.ZipFile(file) as archive:
            everything = b"".join(archive.read(name) for name in archive.namelist())
        assert mine.key.encode() not in everything
        assert mine.key.split("_", 2)[-1].encode() not in everything

        target = empty_database(api.backend)
        target.restore(source.backup(tmp_path / "other.zip", tenant=other.tenant_id))
        others_before = digests(target.backup(tmp_path / "others-before.zip", tenant=other.tenant_id))
        target.restore(file)
        assert digests(target.backup(tmp_path / "others-after.zip", tenant=other.tenant_id)) == others_before
        assert digests(target.backup(tmp_path / "mine-again.zip", tenant=mine.tenant_id)) == digests(file)
    finally:
        mine.client.close()
        other.client.close()


@pytest.mark.postgres
def test_the_embedded_default_moves_to_postgresql_and_back(
    sqlite_server: Server,
    postgres_available: None,
    receiver: Receiver,
    empty_database: Callable[[str], Database],
    tmp_path: Path,
) -> None:
    with httpx.Client(base_url=sqlite_server.base_url, timeout=30) as http:
        data = populate(Api(sqlite_server, http), receiver)
    data.client.close()
    embedded = live(sqlite_server).backup(tmp_path / "embedded.zip")
    postgres = empty_database("postgres")
    postgres.restore(embedded)
    on_postgres = postgres.backup(tmp_path / "postgres.zip")
    assert digests(on_postgres) == digests(embedded)
    assert manifest_of(on_postgres)["source_dialect"] == "postgresql"
    back = empty_database("sqlite")
    back.restore(on_postgres)
    assert digests(back.backup(tmp_path / "back.zip")) == digests(embedded)


@dataclass
class BadFiles:
    """Files made from one good tenant backup, each wrong in one way."""

    tampered: Path  # a valid ZIP, the rows of one table changed after the backup
    cut: Path  # the first half of the file
    old: Path  # taken at a schema revision this release does not restore
    newer: Path  # in a format version from the future
    archive: Path  # an archive (restored only in the default mode)
    orphans: Path  # whole and checksummed, but its conversations' customers left out


@pytest.fixture(scope="module")
def bad_files(sqlite_server: Server, tmp_path_factory: pytest.TempPathFactory) -> BadFiles:
    directory = tmp_path_factory.mktemp("bad-files")
    with httpx.Client(base_url=sqlite_server.base_url, timeout=30) as http:
        created = Api(sqlite_server, http).new_tenant()
        with httpx.Client(base_url=sqlite_server.base_url, headers=created.headers, timeout=30) as client:
            ok(client.post("/v1/inbound/whatsapp", json=payload("wa_inbound_text")))
    good = live(sqlite_server).backup(directory / "good.zip", tenant=created.id)
    files = BadFiles(
        *(directory / f"{name}.zip" for name in ("tampered", "cut", "old", "newer", "archive", "orphans"))
    )
    rewrite(
        good,
        files.tampered,
        lambda name, body: body.replace(b"#48213", b"#48214") if name == "tables/messages.jsonl" else body,
    )
    files.cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with_manifest(good, files.old, schema_revision="0007")
    with_manifest(good, files.newer, format_version=99)
    with_manifest(good, files.archive, kind="archive")

    def without_customers(name: str, data: bytes) -> bytes | None:
        if name == "manifest.json":
            manifest = orjson.loads(data)
            manifest["tables"] = [table for table in manifest["tables"] if table["name"] != "customers"]
            return orjson.dumps(manifest)
        return None if name == "tables/customers.jsonl" else data

    rewrite(good, files.orphans, without_customers)
    return files


def test_verify_finds_damaged_files(bad_files: BadFiles, tmp_path: Path) -> None:
    anywhere = Database("none", clean_env(), tmp_path)  # verify reads the file only
    for file, reason in (
        (bad_files.tampered, "messages: the SHA-256 of its rows differs from the manifest's"),
        (bad_files.cut, "not a complete backup file"),
        (bad_files.newer, "format version 99"),
    ):
        found = anywhere.cli("backup", "verify", str(file), "--json", code=1)
        assert reason in found.stdout + found.stderr, found
    for whole in (bad_files.old, bad_files.orphans):  # whole files: their checksums hold
        report = json.loads(anywhere.cli("backup", "verify", str(whole), "--json").stdout)
        assert report["ok"] is True
        assert all(table["ok"] for table in report["tables"])


@pytest.mark.parametrize("target_backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_restore_refuses_damaged_or_unknown_files_and_writes_nothing(
    bad_files: BadFiles, empty_database: Callable[[str], Database], target_backend: str
) -> None:
    target = empty_database(target_backend)
    for file, reason in (
        (bad_files.tampered, "messages: the SHA-256 of its rows differs from the manifest's"),
        (bad_files.cut, "not a complete backup file"),
        (bad_files.old, "written at schema revision 0007"),
        (bad_files.newer, "format version 99"),
        (bad_files.orphans, "conversations: the database refused a row"),  # (a foreign key)
        (bad_files.archive, "restore it without --replace"),
    ):
        options = ("--replace",) if file == bad_files.archive else ()
        refused = target.cli("restore", str(file), *options, code=1).stderr
        assert reason in refused, refused
        assert "nothing was written" in refused, refused
    # The tampered and orphaned tables come late in the load order: the tables before them were loaded,
    # then undone.
    assert json.loads(target.cli("tenants", "list", "--json").stdout) == []


def test_a_backup_taken_while_a_server_takes_writes_restores_to_one_instant(
    api: Api, empty_database: Callable[[str], Database], tmp_path: Path
) -> None:
    created = api.new_tenant()
    stop = threading.Event()
    answered: list[int] = []
    failures: list[str] = []

    def write(writer: int) -> None:
        regulars = [wa_id() for _ in range(4)]
        with httpx.Client(base_url=api.base_url, headers=created.headers, timeout=60) as client:
            n = 0
            while not stop.is_set():
                # A new customer now and then: customers and conversations grow too, not only messages.
                wa = wa_id() if n % 5 == 0 else regulars[n % 4]
                body = {
                    "wa_id": wa,
                    "business_number_id": BUSINESS,
                    "wamid": f"wamid.busy.{writer}.{n}",
                    "text": f"n{n}",
                }
                response = client.post("/v1/messages/inbound", json=body)
                if response.status_code in (200, 201):
                    answered.append(1)
                else:
                    failures.append(response.text)
                n += 1

    writers = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for thread in writers:
        thread.start()
    try:
        eventually(lambda: len(answered) >= 200, timeout=120)
        before = len(answered)
        file = live(api.server).backup(tmp_path / "busy.zip", tenant=created.id)
        after = len(answered)
    finally:
        stop.set()
        for thread in writers:
            thread.join(60)
    assert not failures, failures[:3]
    assert after - before >= 20, "the writes should go on during the backup"

    messages = rows_of(file, "messages")
    assert before <= len(messages) <= after + len(writers)  # (a message may commit before its answer)
    # One instant: each message's event, written in its transaction, was read before the messages (the
    # events table comes first), and the relay's last number before the events. Read at two instants,
    # messages written between would lack their event, and events numbered between would pass last_seq.
    events = rows_of(file, "events")
    assert {m["id"] for m in messages} == {e["message_id"] for e in events if e["type"] == "message.recorded"}
    assert {m["conversation_id"] for m in messages} <= {c["id"] for c in rows_of(file, "conversations")}
    [relay] = rows_of(file, "event_relay")
    numbered = sorted(e["seq"] for e in events if e["seq"] is not None)
    assert numbered == list(range(1, relay["last_seq"] + 1))

    target = empty_database(api.backend)
    report = target.restore(file)  # foreign keys checked row by row: every parent is there
    assert report["last_seq"] == {created.id: relay["last_seq"]}


@pytest.mark.postgres
def test_a_user_that_row_level_security_would_filter_is_refused(
    postgres_server: Server, tmp_path: Path
) -> None:
    """Never an empty backup for want of rights: a user that can read the tables but not bypass the
    tenants' row-level security (not a superuser, no BYPASSRLS) is told so."""
    role = f"sm_test_reader_{uuid.uuid4().hex[:8]}"
    as_postgres_admin(f"CREATE ROLE {role} LOGIN", f"GRANT state_manager_app TO {role}")
    try:
        url = make_url(postgres_server.env["DATABASE_URL"]).set(username=role)
        env = clean_env(DATABASE_URL=url.render_as_string(hide_password=False))
        reader = Database("postgres", env, tmp_path)
        refused = reader.cli("backup", "--out", str(tmp_path / "empty.zip"), code=1).stderr
        assert f"the database user {role} cannot see every tenant's rows" in refused, refused
        assert list(tmp_path.glob("*.zip*")) == []
    finally:
        as_postgres_admin(f"DROP ROLE {role}")
