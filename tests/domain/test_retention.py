"""Retention: each tenant's policy applied by `state-manager retention run` (the servers' scheduler runs
the same code): content redacted, raw webhook bodies deleted, closed conversations archived to a file
that `state-manager restore` brings back, events trimmed from the front of the sequence."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from harness import Api, Server, hold_row_lock, run_cli
from owner_db import owner_execute
from state_manager.audit.models import audit_log
from state_manager.conversations.models import conversations
from state_manager.events.models import events
from state_manager.messages.models import messages
from state_manager.webhooks.models import webhook_events

from .helpers import Tenant, assert_problem, genesys_id, inbound, ok, record_message, transition, wa_id
from .test_events import events_of, wait_for_events
from .test_whatsapp_webhook import payload

UTC = dt.UTC
DAY = dt.timedelta(days=1)
POLICY = {"message_content_days": 1, "raw_webhook_days": 2, "closed_conversation_days": 3, "event_days": 4}


def set_policy(api: Api, tenant: Tenant, policy: dict[str, Any]) -> None:
    api.admin("PATCH", f"/v1/admin/tenants/{tenant.id}", json={"settings": {"retention": policy}})


def retention(api: Api, *args: str) -> dict[str, Any]:
    done = api.server.cli("retention", "run", "--json", *args)
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def days_ago(days: float) -> dt.datetime:
    return dt.datetime.now(UTC) - days * DAY


class Scene:
    """One tenant's data, some of it aged past each step of POLICY."""

    def __init__(self, api: Api, tenant: Tenant) -> None:
        client = tenant.client
        self.wa = wa_id()
        first = inbound(client, self.wa, "bn-retention", text="an old secret", status=201)
        self.conversation = first["conversation_id"]
        self.old_inbound = first["message_id"]
        self.old_outbound = record_message(
            client, self.conversation, text="an old reply", genesys_message_id=genesys_id()
        )["id"]
        self.recent = inbound(client, self.wa, "bn-retention", text="still fresh")["message_id"]
        archived = inbound(client, wa_id(), "bn-retention", text="in a closed conversation", status=201)
        self.closed, self.closed_message = archived["conversation_id"], archived["message_id"]
        ok(client.patch(f"/v1/conversations/{self.closed}/context", json={"values": {"topic": "refund"}}))
        ok(transition(client, self.closed, "closed", "resolved"))
        ok(client.post("/v1/inbound/whatsapp", json=payload("wa_inbound_text")))  # a raw body, kept fresh
        ok(client.post("/v1/inbound/whatsapp", json=payload("wa_status_delivered")))  # a raw body, aged
        self.events = wait_for_events(client, 12)

        m, w, c, e = messages.c, webhook_events.c, conversations.c, events.c
        mine = m.tenant_id == tenant.id
        first_seqs = [event["seq"] for event in self.events[:2]]
        owner_execute(
            api.server,
            update(messages)
            .where(mine, m.id.in_([uuid.UUID(self.old_inbound), uuid.UUID(self.old_outbound)]))
            .values(occurred_at=days_ago(1.5)),
            update(messages)
            .where(mine, m.conversation_id == uuid.UUID(self.closed))
            .values(occurred_at=days_ago(5)),
            # Older than raw_webhook_days (2) is not needed: message_content_days (1) is shorter, and
            # raw bodies hold the same text.
            update(webhook_events)
            .where(w.tenant_id == tenant.id, w.id.in_(self._last_webhook(api, tenant)))
            .values(received_at=days_ago(1.5)),
            update(conversations)
            .where(c.tenant_id == tenant.id, c.id == uuid.UUID(self.closed))
            .values(closed_at=days_ago(4)),
            # The front of the sequence, and one old event after a young one (it must stay).
            update(events)
            .where(e.tenant_id == tenant.id, e.seq.in_([*first_seqs, 5]))
            .values(occurred_at=days_ago(5)),
        )

    @staticmethod
    def _last_webhook(api: Api, tenant: Tenant) -> list[uuid.UUID]:
        w = webhook_events.c
        [rows] = owner_execute(
            api.server,
            select(w.id).where(w.tenant_id == tenant.id).order_by(w.received_at.desc()).limit(1),
        )
        return [row["id"] for row in rows]


def ws_close_code(api: Api, tenant: Tenant, **params: Any) -> tuple[int, str]:
    query = urllib.parse.urlencode({"api_key": tenant.key, **params})
    url = f"{api.base_url.replace('http', 'ws', 1)}/v1/ws?{query}"
    with connect(url, open_timeout=10) as ws, pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


def raw_bodies(api: Api, tenant: Tenant) -> int:
    [[row]] = owner_execute(
        api.server,
        select(func.count().label("n"))
        .select_from(webhook_events)
        .where(webhook_events.c.tenant_id == tenant.id),
    )
    return int(row["n"])


EXPECTED = {
    # Two aged in the open conversation, one in the closed one, and Meta's sample message (sent on
    # 2026-01-01, by its own timestamp).
    "messages_redacted": 4,
    "webhook_bodies_deleted": 1,
    "conversations_archived": 1,
    "messages_archived": 1,
    "events_trimmed": 2,
}


def test_each_step_of_the_policy(api: Api, tenant: Tenant, other_tenant: Tenant) -> None:
    set_policy(api, tenant, POLICY)
    set_policy(api, other_tenant, POLICY)
    scene = Scene(api, tenant)
    untouched = Scene(api, other_tenant)
    client = tenant.client

    planned = retention(api, "--tenant", tenant.id, "--dry-run")
    assert planned["dry_run"] is True
    # A dry run counts every old event (3); the run stops at the first young one in the sequence.
    assert planned["tenants"] == {tenant.id: {**EXPECTED, "events_trimmed": 3}}
    assert ok(client.get(f"/v1/messages/{scene.old_inbound}"))["text"] == "an old secret"

    done = retention(api, "--tenant", tenant.id)
    assert done["tenants"] == {tenant.id: EXPECTED}

    # 1. Content older than a day is gone; the messages, their times and statuses stay.
    for message_id in (scene.old_inbound, scene.old_outbound):
        redacted = ok(client.get(f"/v1/messages/{message_id}"))
        assert redacted["text"] is None
        assert redacted["redacted_at"] is not None
    assert ok(client.get(f"/v1/messages/{scene.recent}"))["text"] == "still fresh"
    [recorded] = [e for e in events_of(client, after=2) if e["message_id"] == scene.old_inbound]
    assert recorded["payload"]["text"] is None

    # 2. The aged raw body went, the fresh one stayed.
    assert raw_bodies(api, tenant) == 1

    # 3. The closed conversation left the live tables for an archive file, announced by an event.
    assert_problem(client.get(f"/v1/conversations/{scene.closed}"), 404)
    assert_problem(client.get(f"/v1/messages/{scene.closed_message}"), 404)
    [archive] = list((api.server.data_dir / "archives" / tenant.id).glob("*.smarchive"))
    [announced] = wait_for_events(client, 1, after=2, types="conversation.archived")
    assert announced["conversation_id"] == scene.closed
    assert announced["payload"] == {"archive": archive.name}

    # 4. The two oldest events went; the old one after a young one stayed; resuming before them is refused.
    remaining = events_of(client, after=2)
    assert remaining[0]["seq"] == 3
    assert 5 in [e["seq"] for e in remaining]
    gone = assert_problem(client.get("/v1/events", params={"after": 0}), 410, "events-trimmed")
    assert gone["trimmed_through"] == 2
    assert ws_close_code(api, tenant, after=1) == (
        4410,
        "events up to 2 were removed by retention; resume with after=2",
    )
    assert ok(client.get("/v1/events", params={"after": 2}))["events"][0]["seq"] == 3

    # The run is in the audit log, and nothing is left to do.
    [[entry]] = owner_execute(
        api.server,
        select(audit_log).where(
            audit_log.c.tenant_id == tenant.id, audit_log.c.action == "retention.applied"
        ),
    )
    assert entry["actor"].startswith("cli:")
    assert entry["details"]["changed"] == EXPECTED
    assert retention(api, "--tenant", tenant.id)["tenants"] == {}

    # The other tenant, under the same policy, was not touched by a run for this one.
    assert ok(other_tenant.client.get(f"/v1/messages/{untouched.old_inbound}"))["text"] == "an old secret"
    assert ok(other_tenant.client.get(f"/v1/conversations/{untouched.closed}"))["state"] == "closed"
    assert raw_bodies(api, other_tenant) == 2

    # The archive brings the conversation back, as it was archived (its content already redacted).
    restored = api.server.cli("restore", str(archive))
    assert restored.returncode == 0, restored.stderr
    back = ok(client.get(f"/v1/conversations/{scene.closed}"))
    assert (back["state"], back["close_reason"]) == ("closed", "resolved")
    [message] = ok(client.get(f"/v1/conversations/{scene.closed}/messages"))["items"]
    assert (message["id"], message["text"]) == (scene.closed_message, None)
    assert ok(client.get(f"/v1/conversations/{scene.closed}/context"))["values"] == {"topic": "refund"}


def test_the_default_policy_keeps_conversations_and_content(api: Api, tenant: Tenant) -> None:
    """Defaults: content and conversations are kept; raw bodies and events go after 30 days."""
    scene = Scene(api, tenant)
    done = retention(api, "--tenant", tenant.id)
    assert done["tenants"] == {}  # nothing here is 30 days old
    assert ok(tenant.client.get(f"/v1/messages/{scene.old_inbound}"))["text"] == "an old secret"
    assert ok(tenant.client.get(f"/v1/conversations/{scene.closed}"))["state"] == "closed"


def test_archives_are_written_whole_or_not_at_all(
    api: Api, tenant: Tenant, other_tenant: Tenant, tmp_path: Path
) -> None:
    """If a tenant's archive cannot be written, nothing of it is removed, and the other tenants are
    served all the same; the run says which tenant failed and exits 1."""
    set_policy(api, tenant, {"closed_conversation_days": 3})
    set_policy(api, other_tenant, {"closed_conversation_days": 3})
    mine, theirs = Scene(api, tenant), Scene(api, other_tenant)
    archives = tmp_path / "archives"
    archives.mkdir()
    (archives / tenant.id).write_text("")  # where this tenant's directory should be
    env = {**api.server.env, "ARCHIVE_DIR": str(archives)}
    done = run_cli("retention", "run", "--json", env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert f"retention failed for tenant {tenant.id}: cannot write the archive" in " ".join(
        done.stderr.split()
    )
    report = json.loads(done.stdout)
    assert tenant.id in report["failed"]
    assert report["tenants"][other_tenant.id]["conversations_archived"] == 1
    assert ok(tenant.client.get(f"/v1/conversations/{mine.closed}"))["state"] == "closed"
    assert_problem(other_tenant.client.get(f"/v1/conversations/{theirs.closed}"), 404)


def test_a_policy_is_bounded(api: Api, tenant: Tenant) -> None:
    response = api.request(
        "PATCH",
        f"/v1/admin/tenants/{tenant.id}",
        key=api.admin_key,
        json={"settings": {"retention": {"message_content_days": 800_000}}},
    )
    assert_problem(response, 422)


def test_live_subscribers_carry_on_after_every_event_was_trimmed(api: Api, tenant: Tenant) -> None:
    """A quiet tenant whose events were all trimmed: the next event still reaches a new subscriber."""
    set_policy(api, tenant, {"event_days": 1})
    for _ in range(2):  # an inbound message from a new customer: three events
        inbound(tenant.client, wa_id(), "bn-retention", status=201)
    wait_for_events(tenant.client, 6)
    owner_execute(
        api.server, update(events).where(events.c.tenant_id == tenant.id).values(occurred_at=days_ago(2))
    )
    assert retention(api, "--tenant", tenant.id)["tenants"] == {tenant.id: {"events_trimmed": 6}}
    assert ok(tenant.client.get("/v1/events", params={"after": 6}))["head"] == 6

    query = urllib.parse.urlencode({"api_key": tenant.key})
    with connect(f"{api.base_url.replace('http', 'ws', 1)}/v1/ws?{query}", open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10)) == {"kind": "live", "seq": 6}
        inbound(tenant.client, wa_id(), "bn-retention", status=201)
        frame = json.loads(ws.recv(timeout=10))
    assert frame["kind"] == "events"
    assert frame["events"][0]["seq"] == 7


@pytest.mark.postgres
def test_a_context_write_waits_for_a_conversation_being_archived(postgres_server: Server) -> None:
    """Archival locks the conversation, copies its context and deletes both: a context write meanwhile
    waits for it (and then finds the conversation gone) instead of landing between copy and delete.
    (PostgreSQL only: SQLite serialises writers, so no write can land in between.)"""
    with httpx.Client(base_url=postgres_server.base_url, timeout=30) as admin_client:
        created = Api(postgres_server, admin_client).new_tenant()
    with httpx.Client(base_url=postgres_server.base_url, headers=created.headers, timeout=30) as client:
        conversation = inbound(client, wa_id(), "bn-retention", status=201)["conversation_id"]
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            with hold_row_lock(postgres_server.env["DATABASE_URL"], "conversations", conversation):
                writing = pool.submit(
                    client.patch, f"/v1/conversations/{conversation}/context", json={"values": {"k": 1}}
                )
                with pytest.raises(concurrent.futures.TimeoutError):
                    writing.result(timeout=1.0)
            assert writing.result(timeout=30).status_code == 200
