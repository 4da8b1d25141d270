"""Expiry: conversations inactive past their tenant's timeout become expired, through the lifecycle
(state history, participants leaving, events), run by hand (`state-manager expiry run`) under the same
lease the servers' scheduler takes."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from sqlalchemy import delete, insert, update

from harness import Api
from owner_db import owner_execute
from state_manager.conversations.models import conversations, state_changes
from state_manager.jobs.models import job_leases

from .helpers import Tenant, inbound, ok, parse_time, transition, wa_id
from .test_events import events_of, wait_for_events

UTC = dt.UTC
DAY = dt.timedelta(days=1)


def age_conversation(
    api: Api, tenant: Tenant, conversation_id: str, inactive_for: dt.timedelta
) -> dt.datetime:
    """Moves the conversation's activity and state change back in time; returns when it was last active."""
    since = dt.datetime.now(UTC) - inactive_for
    changed_at = since - dt.timedelta(minutes=5)
    conversation = uuid.UUID(conversation_id)
    owner_execute(
        api.server,
        update(conversations)
        .where(conversations.c.tenant_id == tenant.id, conversations.c.id == conversation)
        .values(last_activity_at=since, state_changed_at=changed_at),
        update(state_changes)
        .where(state_changes.c.tenant_id == tenant.id, state_changes.c.conversation_id == conversation)
        .values(changed_at=changed_at),
    )
    return since


def expiry(api: Api, *args: str) -> dict[str, Any]:
    done = api.server.cli("expiry", "run", "--json", *args)
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def test_inactive_conversations_expire_through_the_lifecycle(api: Api, tenant: Tenant) -> None:
    client = tenant.client
    stale_wa, fresh_wa = wa_id(), wa_id()
    stale = inbound(client, stale_wa, "bn-expiry", status=201)["conversation_id"]
    fresh = inbound(client, fresh_wa, "bn-expiry", status=201)["conversation_id"]
    closed = inbound(client, wa_id(), "bn-expiry", status=201)["conversation_id"]
    ok(transition(client, closed, "closed", "done"))
    agent = ok(
        client.post(
            f"/v1/conversations/{stale}/participants", json={"role": "agent", "participant_ref": "agent-7"}
        ),
        201,
    )
    last_active = age_conversation(api, tenant, stale, 2 * DAY)  # the default timeout is 24 h
    age_conversation(api, tenant, fresh, dt.timedelta(hours=23))
    age_conversation(api, tenant, closed, 3 * DAY)

    planned = expiry(api, "--tenant", tenant.id, "--dry-run")
    assert planned["dry_run"] is True
    assert planned["tenants"] == {tenant.id: {"expired": 1}}
    assert ok(client.get(f"/v1/conversations/{stale}"))["state"] == "pending"  # a dry run changes nothing

    done = expiry(api, "--tenant", tenant.id)
    assert done["tenants"] == {tenant.id: {"expired": 1}}

    expired = ok(client.get(f"/v1/conversations/{stale}"))
    assert expired["state"] == "expired"
    assert expired["state_reason"] == "no activity for 86400 s"
    # It expired when the timeout ran out, not when the job noticed.
    assert parse_time(expired["closed_at"]) == last_active + DAY
    history = ok(client.get(f"/v1/conversations/{stale}/history"))
    assert history[-1]["to_state"] == "expired"
    participants = ok(client.get(f"/v1/conversations/{stale}/participants"))
    assert [p["left_at"] is not None for p in participants if p["id"] == agent["id"]] == [True]
    assert ok(client.get(f"/v1/conversations/{fresh}"))["state"] == "pending"
    assert ok(client.get(f"/v1/conversations/{closed}"))["state"] == "closed"

    changes = wait_for_events(
        client, 2, conversation_id=stale, types="participant.left,conversation.state_changed"
    )
    assert [e["type"] for e in changes] == ["participant.left", "conversation.state_changed"]
    assert changes[1]["payload"]["to"] == "expired"

    # Expired is final: the customer's next message opens a new conversation.
    again = inbound(client, stale_wa, "bn-expiry", status=201)
    assert again["conversation_id"] != stale
    # Nothing is left to expire: a second run changes nothing.
    assert expiry(api, "--tenant", tenant.id)["tenants"] == {}


def test_the_tenant_timeout_decides(api: Api, tenant: Tenant) -> None:
    ok(
        api.admin(
            "PATCH", f"/v1/admin/tenants/{tenant.id}", json={"settings": {"inactivity_timeout_seconds": 3600}}
        )
    )
    conversation = inbound(tenant.client, wa_id(), "bn-expiry", status=201)["conversation_id"]
    age_conversation(api, tenant, conversation, dt.timedelta(hours=2))
    assert expiry(api, "--tenant", tenant.id)["tenants"] == {tenant.id: {"expired": 1}}
    expired = ok(tenant.client.get(f"/v1/conversations/{conversation}"))
    assert expired["state_reason"] == "no activity for 3600 s"


def test_only_the_named_tenant(api: Api, tenant: Tenant, other_tenant: Tenant) -> None:
    mine = inbound(tenant.client, wa_id(), status=201)["conversation_id"]
    theirs = inbound(other_tenant.client, wa_id(), status=201)["conversation_id"]
    age_conversation(api, tenant, mine, 2 * DAY)
    age_conversation(api, other_tenant, theirs, 2 * DAY)
    assert expiry(api, "--tenant", tenant.id)["tenants"] == {tenant.id: {"expired": 1}}
    assert ok(other_tenant.client.get(f"/v1/conversations/{theirs}"))["state"] == "pending"
    assert events_of(other_tenant.client, types="conversation.state_changed") == []


def test_a_run_by_hand_waits_for_the_lease(api: Api, tenant: Tenant) -> None:
    """While another instance holds the job's lease, a run by hand refuses and names the holder; once
    that lease has expired (its holder died), the run takes the job over."""
    conversation = inbound(tenant.client, wa_id(), status=201)["conversation_id"]
    age_conversation(api, tenant, conversation, 2 * DAY)
    now = dt.datetime.now(UTC)
    leases = job_leases.c
    owner_execute(
        api.server,
        delete(job_leases).where(leases.name == "expiry"),
        insert(job_leases).values(name="expiry", holder="elsewhere:1:abc", lease_expires_at=now + DAY),
    )
    try:
        refused = api.server.cli("expiry", "run", "--tenant", tenant.id)
        assert refused.returncode == 1
        assert "expiry is running on elsewhere:1:abc" in refused.stderr
        assert ok(tenant.client.get(f"/v1/conversations/{conversation}"))["state"] == "pending"

        owner_execute(
            api.server, update(job_leases).where(leases.name == "expiry").values(lease_expires_at=now - DAY)
        )
        assert expiry(api, "--tenant", tenant.id)["tenants"] == {tenant.id: {"expired": 1}}
        (row,) = owner_execute(api.server, job_leases.select().where(leases.name == "expiry"))[0]
        assert row["holder"] is None  # released
        assert row["last_outcome"]["status"] == "done"
        assert row["last_outcome"]["tenants"] == {tenant.id: {"expired": 1}}
    finally:
        owner_execute(api.server, delete(job_leases).where(leases.name == "expiry"))
