"""Customer data rights over real HTTP: the export holds everything written about a customer and nothing
else; an erasure leaves no trace of the customer's personal data anywhere in the database (read directly,
past row-level security) while the anonymous counts stay; both are audited and announced."""

from __future__ import annotations

import base64
import datetime as dt
import getpass
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, text, update

from harness import Api, Server, ServerProcess, eventually, server_env
from owner_db import owner_execute
from state_manager.customers.models import customer_identities, customers
from state_manager.db.tables import TENANT_TABLES
from state_manager.webhooks.models import webhook_events

from .helpers import Tenant, assert_problem, business_number, inbound, list_all, ok, record_message
from .test_events import events_of

AGREEMENT_BOUND_SECONDS = 1.0  # docs/design.md, "Lookup cache": other instances agree within it

UNREACHABLE_RECEIVER = "http://127.0.0.1:9/hook"  # deliveries to it fail and stay in the log


def phone_wa_id() -> str:
    """A WhatsApp ID that spells a valid number (+55 11 9xxxx-xxxx), so the customer gets a phone too."""
    return "55119" + "".join(str(secrets.randbelow(10)) for _ in range(8))


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode().rstrip("=")


def meta_wamid(wa: str) -> str:
    """A wamid as Meta makes them: the sender's number, in base64, is inside it."""
    return f"wamid.HBgN{b64(wa)}FQIAEhgU{secrets.token_hex(10).upper()}"


def meta_messages(business: str, *senders: tuple[str, str, str, str]) -> dict[str, Any]:
    """A Meta webhook with one text message per (wa_id, profile name, wamid, text)."""
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "100200300400500",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"display_phone_number": "15550001111", "phone_number_id": business},
                            "contacts": [
                                {"profile": {"name": name}, "wa_id": wa} for wa, name, _, _ in senders
                            ],
                            "messages": [
                                {
                                    "from": wa,
                                    "id": message_id,
                                    "timestamp": "1767261600",
                                    "type": "text",
                                    "text": {"body": text},
                                }
                                for wa, _, message_id, text in senders
                            ],
                        },
                    }
                ],
            }
        ],
    }


def meta_status(business: str, wa: str, message_id: str, status: str) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "100200300400500",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"display_phone_number": "15550001111", "phone_number_id": business},
                            "statuses": [
                                {
                                    "id": message_id,
                                    "status": status,
                                    "timestamp": "1767261700",
                                    "recipient_id": wa,
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }


@dataclass
class Written:
    """What a test wrote about one customer through the API, and which of it is personal data."""

    customer_id: str
    conversation_id: str
    wa: str
    business: str
    texts: list[str]
    personal: list[str] = field(default_factory=list)


def write_customer(client: httpx.Client, business: str | None = None, wa: str | None = None) -> Written:
    """A customer with everything the service can hold about one: messages both ways (text and media,
    from Meta's webhooks and the API), receipts, profile, identities, context, metadata, a participant.
    Its personal data starts with the wa_id and its base64 form."""
    business = business or business_number()
    wa, tag = wa or phone_wa_id(), secrets.token_hex(4)
    name, said = f"Erin {tag}", f"my address is {tag} street"
    webhook = meta_messages(business, (wa, name, meta_wamid(wa), said))
    [item] = ok(client.post("/v1/inbound/whatsapp", json=webhook))["items"]
    customer_id, conversation_id = item["customer_id"], item["conversation_id"]
    media_url, caption = f"https://media.example/{tag}.jpg", f"caption {tag}"
    inbound(
        client,
        wa,
        business,
        wamid_=meta_wamid(wa),
        type="image",
        text=None,
        media={"url": media_url, "mime_type": "image/jpeg", "caption": caption},
    )
    reply, reply_wamid = f"reply {tag}", meta_wamid(wa)
    record_message(client, conversation_id, direction="outbound", text=reply, wamid=reply_wamid)
    ok(client.post("/v1/inbound/whatsapp", json=meta_status(business, wa, reply_wamid, "sent")))
    receipt = {"wamid": reply_wamid, "status": "delivered", "at": "2026-04-01T08:00:09Z"}
    ok(client.post("/v1/receipts", json={"receipts": [receipt]}))
    attribute, email = f"attr {tag}", f"erin.{tag}@example.com"
    ok(
        client.patch(
            f"/v1/customers/{customer_id}", json={"language": "pt-BR", "attributes": {"note": attribute}}
        )
    )
    ok(
        client.post(
            f"/v1/customers/{customer_id}/identities", json={"channel": "email", "external_id": email}
        ),
        201,
    )
    customer_value, conversation_value, notes = f"ctx {tag}", f"order {tag}", f"notes {tag}"
    ok(client.patch(f"/v1/customers/{customer_id}/context", json={"values": {"favourite": customer_value}}))
    ok(
        client.patch(
            f"/v1/conversations/{conversation_id}/context", json={"values": {"order": conversation_value}}
        )
    )
    ok(client.patch(f"/v1/conversations/{conversation_id}", json={"metadata": {"wrapup": notes}}))
    participant = {"role": "customer", "participant_ref": customer_id, "display_name": name}
    ok(client.post(f"/v1/conversations/{conversation_id}/participants", json=participant), 201)
    personal = [wa, b64(wa), name, said, media_url, caption, reply, attribute, email]
    personal += [customer_value, conversation_value, notes]
    return Written(customer_id, conversation_id, wa, business, [said, reply], personal)


def export(client: httpx.Client, customer_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/customers/{customer_id}/export")
    assert response.status_code == 200, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["content-disposition"] == f'attachment; filename="customer-{customer_id}.json"'
    document: dict[str, Any] = response.json()
    return document


def stored_text(api: Api, tenant_id: str) -> str:
    """Every row the tenant has in every tenant table, as text, read straight from the database (on
    PostgreSQL as the owner, past row-level security)."""
    selects = [
        text(f"SELECT * FROM {table.name} WHERE tenant_id = :tenant").bindparams(tenant=tenant_id)
        for table in TENANT_TABLES
    ]
    return "\n".join(
        repr(tuple(row.values())) for rows in owner_execute(api.server, *selects) for row in rows
    )


def warm_lookups(client: httpx.Client, customer: Written) -> list[tuple[str, dict[str, str]]]:
    """Asks every cached lookup that leads to the customer twice (the second from the cache)."""
    [message] = [
        m
        for m in list_all(client, f"/v1/conversations/{customer.conversation_id}/messages", 100)
        if m["direction"] == "outbound"
    ]
    lookups = [
        (f"/v1/customers/by-identity/whatsapp/{customer.wa}", {}),
        (f"/v1/customers/by-identity/phone/+{customer.wa}", {}),
        ("/v1/conversations/open", {"wa_id": customer.wa, "business_number_id": customer.business}),
        ("/v1/conversations/open", {"wa_id": customer.wa}),
        (f"/v1/messages/by-wamid/{message['wamid']}", {}),
    ]
    for path, params in lookups * 2:
        ok(client.get(path, params=params))
    return lookups


def counts(client: httpx.Client, customer_id: str) -> tuple[int, int]:
    """(conversations, messages) of a customer, as analytics would count them."""
    conversations = list_all(client, "/v1/conversations", 100, customer_id=customer_id)
    messages = sum(len(list_all(client, f"/v1/conversations/{c['id']}/messages", 100)) for c in conversations)
    return len(conversations), messages


def audit_entries(client: httpx.Client, **params: str) -> list[dict[str, Any]]:
    return list_all(client, "/v1/audit", 100, **params)


def test_the_export_holds_everything_written_about_the_customer_and_nothing_else(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    client = tenant.client
    erin = write_customer(client)
    neighbour = write_customer(client, erin.business)
    namesake = write_customer(other_tenant.client, erin.business, erin.wa)

    document = export(client, erin.customer_id)
    assert (document["format"], document["format_version"]) == ("state-manager.customer-export", 1)
    assert (document["tenant_id"], document["customer_id"]) == (tenant.id, erin.customer_id)
    customer = document["customer"]
    assert customer == ok(client.get(f"/v1/customers/{erin.customer_id}"))
    assert {(i["channel"], i["external_id"]) for i in customer["identities"]} == {
        ("whatsapp", erin.wa),
        ("phone", "+" + erin.wa),
        ("email", next(p for p in erin.personal if p.endswith("@example.com"))),
    }
    assert (
        document["customer_context"]["values"]
        == ok(client.get(f"/v1/customers/{erin.customer_id}/context"))["values"]
    )
    [held] = document["conversations"]
    conversation_path = f"/v1/conversations/{erin.conversation_id}"
    assert held["conversation"] == ok(client.get(conversation_path))
    assert held["participants"] == ok(client.get(f"{conversation_path}/participants"))
    assert held["state_history"] == ok(client.get(f"{conversation_path}/history"))
    assert held["context"] == ok(client.get(f"{conversation_path}/context"))
    assert held["messages"] == list_all(client, f"{conversation_path}/messages", 100)
    directions = [(m["direction"], m["text"]) for m in held["messages"]]
    assert ("inbound", erin.texts[0]) in directions
    assert ("outbound", erin.texts[1]) in directions
    [reply] = [m for m in held["messages"] if m["direction"] == "outbound"]
    assert reply["status"] == "delivered"
    assert reply["sent_at"] is not None
    assert reply["delivered_at"] is not None
    assert any(m["media"] and m["media"]["url"] in erin.personal for m in held["messages"])

    types = [event["type"] for event in document["events"]]
    for expected in ("customer.created", "customer.updated", "customer.identity_added", "message.recorded"):
        assert expected in types
    assert types[-1] == "customer.exported"  # this export's own, committed before the document was read
    assert {event["customer_id"] for event in document["events"]} == {erin.customer_id}
    # The export's own audit entry is in it: recorded before the document was read.
    [entry] = document["audit_log"]
    assert (entry["action"], entry["actor"], entry["subject_id"]) == (
        "customer.exported",
        tenant.key_id,
        erin.customer_id,
    )

    text = str(document)
    for trace in neighbour.personal + namesake.personal[2:]:  # the namesake has Erin's number
        assert trace not in text, trace
    exported = eventually(lambda: events_of(client, types="customer.exported") or None)
    assert [(e["customer_id"], e["payload"]) for e in exported] == [
        (erin.customer_id, {"audit_id": entry["id"]})
    ]
    # The other tenant's key knows no such customer.
    assert_problem(other_tenant.client.get(f"/v1/customers/{erin.customer_id}/export"), 404, "not-found")
    assert audit_entries(other_tenant.client) == []


def test_an_erasure_leaves_no_personal_data_and_keeps_the_counts(
    api: Api, tenant: Tenant, other_tenant: Tenant
) -> None:
    client = tenant.client
    subscription = ok(client.post("/v1/webhooks/subscriptions", json={"url": UNREACHABLE_RECEIVER}), 201)
    erin = write_customer(client)
    neighbour = write_customer(client, erin.business)
    # One webhook carrying both customers' messages: only Erin's part may go.
    shared = meta_messages(
        erin.business,
        (erin.wa, "Erin again", meta_wamid(erin.wa), "shared body, Erin's part"),
        (neighbour.wa, "Neighbour", meta_wamid(neighbour.wa), "shared body, neighbour's part"),
    )
    ok(client.post("/v1/inbound/whatsapp", json=shared))
    erin.personal += ["Erin again", "shared body, Erin's part"]
    namesake = write_customer(other_tenant.client, erin.business, erin.wa)
    # Erin's old number, merged into her: what was written about it before is about her too.
    old_wa, old_name, old_text = phone_wa_id(), f"Old Erin {secrets.token_hex(4)}", "from my old phone"
    old = ok(
        client.post(
            "/v1/inbound/whatsapp",
            json=meta_messages("bn-old", (old_wa, old_name, meta_wamid(old_wa), old_text)),
        )
    )
    ok(
        client.post(
            f"/v1/customers/{erin.customer_id}/merge", json={"customer_id": old["items"][0]["customer_id"]}
        )
    )
    erin.personal += [old_wa, b64(old_wa), old_name, old_text]
    before = counts(client, erin.customer_id)
    # Copies of Erin's events in the delivery log (the receiver is down: they stay there).
    eventually(
        lambda: (
            len(list_all(client, "/v1/webhooks/deliveries", 500, subscription_id=subscription["id"])) >= 20
            or None
        )
    )
    stored = stored_text(api, tenant.id)
    for trace in erin.personal:
        assert trace in stored, trace  # the search below would find each of them
    cached = warm_lookups(client, erin)

    erased = ok(client.post(f"/v1/customers/{erin.customer_id}/erase", json={"reason": "ticket 42"}))
    assert erased["already_erased"] is False
    tally = erased["counts"]
    assert tally["profile_fields_cleared"] == 3  # display name, language, attributes
    assert tally["identities_deleted"] == 5  # WhatsApp and phone, twice, and the e-mail address
    assert (tally["conversations"], tally["conversations_closed"]) == before[:1] * 2 == (2, 2)
    assert tally["messages_redacted"] == before[1] == 5
    assert tally["context_entries_deleted"] == 2
    assert tally["webhook_bodies_deleted"] == 3  # Erin's two messages, and the status of the reply
    assert tally["webhook_bodies_redacted"] == 1  # the shared one
    assert tally["webhook_deliveries_cleared"] > 0
    customer = erased["customer"]
    assert customer == ok(client.get(f"/v1/customers/{erin.customer_id}"))
    assert customer["erased_at"] is not None
    assert (customer["display_name"], customer["language"], customer["identities"]) == (None, None, [])
    assert (customer["preferences"], customer["consent"], customer["attributes"]) == ({}, {}, {})

    stored = stored_text(api, tenant.id)
    document = str(export(client, erin.customer_id))
    for trace in erin.personal:
        assert trace not in stored, trace
        assert trace not in document, trace
    for trace in [*neighbour.personal, "shared body, neighbour's part"]:
        assert trace in stored, trace
    elsewhere = stored_text(api, other_tenant.id)
    assert all(trace in elsewhere for trace in namesake.personal)

    # The anonymous counts stay: the same conversations and messages, without content.
    assert counts(client, erin.customer_id) == before
    conversation = ok(client.get(f"/v1/conversations/{erin.conversation_id}"))
    assert (conversation["state"], conversation["close_reason"], conversation["metadata"]) == (
        "closed",
        "customer erased",
        {},
    )
    history = ok(client.get(f"/v1/conversations/{erin.conversation_id}/history"))
    assert (history[-1]["to_state"], history[-1]["reason"]) == ("closed", "customer erased")
    kept = list_all(client, f"/v1/conversations/{erin.conversation_id}/messages", 100)
    for message in kept:
        assert (message["text"], message["wamid"], message["metadata"]) == (None, None, {})
        assert message["media"] is None or (message["media"]["url"], message["media"]["caption"]) == (
            None,
            None,
        )
    assert sorted((m["direction"], m["type"], m["status"]) for m in kept) == [
        ("inbound", "image", "received"),
        ("inbound", "text", "received"),
        ("inbound", "text", "received"),
        ("outbound", "text", "delivered"),
    ]

    # Announced and audited, without personal data.
    def announced() -> list[dict[str, Any]] | None:
        found = events_of(
            client, customer_id=erin.customer_id, types="customer.erased,conversation.state_changed"
        )
        return found if len(found) == 3 else None

    *closings, erasure = eventually(announced)
    assert [(e["payload"]["to"], e["payload"]["reason"]) for e in closings] == [
        ("closed", "customer erased")
    ] * 2
    assert erasure["type"] == "customer.erased"
    [entry] = audit_entries(client, action="customer.erased")
    assert (entry["actor"], entry["subject_type"], entry["subject_id"]) == (
        tenant.key_id,
        "customer",
        erin.customer_id,
    )
    assert entry["details"] == {"reason": "ticket 42", "counts": tally}
    assert erasure["payload"] == {"counts": tally, "audit_id": entry["id"]}

    # Twice = once.
    again = ok(client.post(f"/v1/customers/{erin.customer_id}/erase"))
    assert (again["already_erased"], again["counts"], again["customer"]) == (True, None, customer)
    assert len(audit_entries(client, action="customer.erased")) == 1
    assert len(events_of(client, types="customer.erased")) == 1

    # The number is a stranger now, to every lookup, cached before or not; its next message makes a new
    # customer. In the other tenant it still is that tenant's customer.
    for path, params in cached:
        assert_problem(client.get(path, params=params), 404)
    assert ok(other_tenant.client.get(f"/v1/customers/by-identity/whatsapp/{erin.wa}"))["id"] == (
        namesake.customer_id
    )
    item = inbound(client, erin.wa, erin.business, status=201)
    assert item["customer_id"] != erin.customer_id
    assert item["conversation_id"] != erin.conversation_id
    assert ok(client.get(f"/v1/customers/by-identity/phone/+{erin.wa}"))["id"] == item["customer_id"]
    assert client.delete(f"/v1/webhooks/subscriptions/{subscription['id']}").status_code == 204


def test_an_erased_customer_takes_no_new_data_and_unknown_ones_are_404(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    client = tenant.client
    erased = ok(client.post("/v1/customers", json={"display_name": "Gone"}), 201)["id"]
    other = ok(client.post("/v1/customers", json={"display_name": "Here"}), 201)["id"]
    # Another tenant's key cannot reach the customer at all.
    for call in (
        other_tenant.client.get(f"/v1/customers/{erased}/export"),
        other_tenant.client.post(f"/v1/customers/{erased}/erase"),
    ):
        assert_problem(call, 404, "not-found")
    ok(client.post(f"/v1/customers/{erased}/erase"))  # no body: the reason is optional
    assert audit_entries(client, action="customer.erased")[0]["details"]["reason"] is None

    for refused in (
        client.patch(f"/v1/customers/{erased}", json={"display_name": "Back"}),
        client.post(f"/v1/customers/{erased}/identities", json={"channel": "email", "external_id": "x@y.z"}),
        client.patch(f"/v1/customers/{erased}/context", json={"values": {"k": "v"}}),
        client.post(f"/v1/customers/{other}/merge", json={"customer_id": erased}),
        client.post(f"/v1/customers/{erased}/merge", json={"customer_id": other}),
        client.post("/v1/conversations", json={"customer_id": erased, "business_number_id": "bn-1"}),
    ):
        body = assert_problem(refused, 409, "erased")
        assert body["customer_id"] == erased
    assert ok(client.get(f"/v1/customers/{erased}"))["display_name"] is None
    assert ok(client.get(f"/v1/customers/{other}"))["display_name"] == "Here"

    unknown = "00000000-0000-4000-8000-000000000000"
    assert_problem(client.get(f"/v1/customers/{unknown}/export"), 404, "not-found")
    assert_problem(client.post(f"/v1/customers/{unknown}/erase"), 404, "not-found")
    assert_problem(client.post(f"/v1/customers/{other}/erase", json={"reason": "x" * 501}), 422)
    assert_problem(client.post(f"/v1/customers/{other}/erase", json={"why": "x"}), 422)
    assert ok(client.get(f"/v1/customers/{other}"))["erased_at"] is None
    assert [e["subject_id"] for e in audit_entries(client)] == [erased]  # refused calls record nothing


def test_the_audit_log_filters_pages_and_stays_in_its_tenant(tenant: Tenant, other_tenant: Tenant) -> None:
    client = tenant.client
    first, second = (ok(client.post("/v1/customers", json={}), 201)["id"] for _ in range(2))
    export(client, first)
    export(client, second)
    middle = audit_entries(client)[0]["occurred_at"]
    export(client, first)
    ok(client.post(f"/v1/customers/{second}/erase", json={"reason": "asked"}))

    entries = audit_entries(client)
    assert [(e["action"], e["subject_id"]) for e in entries] == [
        ("customer.erased", second),
        ("customer.exported", first),
        ("customer.exported", second),
        ("customer.exported", first),
    ]  # newest first
    assert {e["actor"] for e in entries} == {tenant.key_id}
    paged = list_all(client, "/v1/audit", 1)
    assert paged == entries
    about_first = audit_entries(client, subject_type="customer", subject_id=first)
    assert [e["action"] for e in about_first] == ["customer.exported"] * 2
    assert audit_entries(client, action="customer.erased") == entries[:1]
    assert audit_entries(client, actor=tenant.key_id or "") == entries
    assert audit_entries(client, actor="someone-else") == []
    assert [e["id"] for e in audit_entries(client, after=middle)] == [e["id"] for e in entries[:2]]

    assert audit_entries(other_tenant.client) == []
    assert audit_entries(other_tenant.client, subject_id=first) == []
    assert_problem(client.get("/v1/audit", params={"cursor": "!!"}), 400)
    assert_problem(client.get("/v1/audit", params={"limit": 0}), 422)
    assert_problem(client.get("/v1/audit", params={"after": "yesterday"}), 422)


@pytest.mark.postgres
@pytest.mark.redis
def test_an_erasure_reaches_the_cached_lookups_of_every_instance(
    postgres_server: Server, postgres_url: str, redis_url: str | None, tmp_path: Path
) -> None:
    """Lookups warmed on another instance (its own memory and the shared Redis) stop answering with the
    erased customer once the erasure is acknowledged (within the instances' agreement bound)."""
    if redis_url is None:
        pytest.skip("needs Redis: without it instances share no cache")
    api = Api(postgres_server, httpx.Client(base_url=postgres_server.base_url, timeout=30))
    key = {"Authorization": f"Bearer {api.new_tenant().key}"}
    other = ServerProcess(
        "rights-second",
        server_env(tmp_path, postgres_url, REDIS_URL=redis_url, CACHE_WARM_LIMIT="0"),
        tmp_path,
    )
    other.start()
    try:
        other.wait_for("/health/ready")
        with (
            httpx.Client(base_url=postgres_server.base_url, headers=key, timeout=30) as writer,
            httpx.Client(base_url=other.base_url, headers=key, timeout=30) as reader,
        ):
            erin = write_customer(writer)
            cached = warm_lookups(reader, erin)
            ok(writer.post(f"/v1/customers/{erin.customer_id}/erase"))
            acknowledged = time.monotonic()
            for path, params in cached:
                while reader.get(path, params=params).status_code != 404:
                    assert time.monotonic() - acknowledged < AGREEMENT_BOUND_SECONDS, f"{path} still cached"
                    time.sleep(0.01)
    finally:
        api.client.close()
        assert other.stop(), other.log_tail()


def test_the_command_line_exports_and_erases_as_its_user(api: Api, tenant: Tenant, tmp_path: Path) -> None:
    client = tenant.client
    erin = write_customer(client)
    out = tmp_path / "erin.json"
    done = api.server.cli("customers", "export", "--tenant", tenant.id, erin.customer_id, "--out", str(out))
    assert done.returncode == 0, done.stderr
    document = json.loads(out.read_text())
    assert document["customer"]["id"] == erin.customer_id
    assert erin.texts[0] in out.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["erin.json"]  # no partial file left behind

    # With Redis (PostgreSQL here) the command tells the running server to drop what it cached; the
    # embedded default's server cannot hear it (its cache keeps a lookup for CACHE_LOCAL_SECONDS).
    cached = warm_lookups(client, erin) if api.backend == "postgres" else []
    done = api.server.cli("customers", "erase", "--tenant", tenant.id, erin.customer_id, "--yes", "--json")
    assert done.returncode == 0, done.stderr
    erased = json.loads(done.stdout)
    assert erased["counts"]["messages_redacted"] == 3
    assert ok(client.get(f"/v1/customers/{erin.customer_id}"))["erased_at"] is not None
    acknowledged = time.monotonic()
    for path, params in cached or [(f"/v1/customers/by-identity/whatsapp/{erin.wa}", {})]:
        while client.get(path, params=params).status_code != 404:
            assert time.monotonic() - acknowledged < AGREEMENT_BOUND_SECONDS, f"{path} still cached"
            time.sleep(0.01)
    actors = {(e["action"], e["actor"]) for e in audit_entries(client)}
    assert actors == {
        ("customer.exported", f"cli:{getpass.getuser()}"),
        ("customer.erased", f"cli:{getpass.getuser()}"),
    }

    again = api.server.cli("customers", "erase", "--tenant", tenant.id, erin.customer_id, "--yes")
    assert again.returncode == 0, again.stderr
    assert "already erased" in again.stdout
    assert api.server.cli("customers", "erase", "--tenant", tenant.id, "nope", "--yes").returncode == 2
    missing = api.server.cli("customers", "export", "--tenant", "no-such-tenant", erin.customer_id)
    assert (missing.returncode, "not found" in missing.stderr) == (1, True)


def test_erasing_again_removes_what_a_restore_brought_back(api: Api, tenant: Tenant) -> None:
    """A backup from before an erasure, restored without replacing rows, brings back what was deleted
    (identities, raw webhooks, context): erasing again removes it, and only then records anything."""
    client = tenant.client
    erin = write_customer(client)
    erased_at = ok(client.post(f"/v1/customers/{erin.customer_id}/erase"))["customer"]["erased_at"]
    body = json.dumps(meta_messages(erin.business, (erin.wa, "Erin", meta_wamid(erin.wa), "restored")))
    at = dt.datetime(2026, 1, 1, 10, tzinfo=dt.UTC)
    customer_id = uuid.UUID(erin.customer_id)
    owner_execute(
        api.server,
        insert(customer_identities).values(
            tenant_id=tenant.id,
            channel="whatsapp",
            external_id=erin.wa,
            customer_id=customer_id,
            created_at=at,
        ),
        insert(webhook_events).values(
            tenant_id=tenant.id, id=uuid.uuid4(), source="whatsapp", received_at=at, items=1, body=body
        ),
        # What a message racing the first erasure could set (docs/data-rights.md, "Limits").
        update(customers)
        .where(customers.c.tenant_id == tenant.id, customers.c.id == customer_id)
        .values(display_name="Erin raced"),
    )
    assert ok(client.get(f"/v1/customers/by-identity/whatsapp/{erin.wa}"))["id"] == erin.customer_id

    swept = ok(client.post(f"/v1/customers/{erin.customer_id}/erase"))
    assert swept["already_erased"] is True
    swept_counts = swept["counts"]
    assert (swept_counts["identities_deleted"], swept_counts["webhook_bodies_deleted"]) == (1, 1)
    assert swept_counts["profile_fields_cleared"] == 1
    assert (swept["customer"]["display_name"], swept["customer"]["erased_at"]) == (None, erased_at)
    assert_problem(client.get(f"/v1/customers/by-identity/whatsapp/{erin.wa}"), 404)
    stored = stored_text(api, tenant.id)
    assert erin.wa not in stored
    assert "Erin raced" not in stored
    assert len(audit_entries(client, action="customer.erased")) == 2
    nothing_left = ok(client.post(f"/v1/customers/{erin.customer_id}/erase"))
    assert (nothing_left["already_erased"], nothing_left["counts"]) == (True, None)
    assert len(audit_entries(client, action="customer.erased")) == 2
