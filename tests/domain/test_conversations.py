"""Conversations over HTTP: lifecycle and history, ETags, Genesys IDs, participants, listing."""

from __future__ import annotations

import pytest

from .helpers import (
    Tenant,
    assert_problem,
    business_number,
    genesys_id,
    inbound,
    list_all,
    ok,
    transition,
    wa_id,
)


def test_lifecycle_and_history(tenant: Tenant) -> None:
    client = tenant.client
    wa, business = wa_id(), business_number()
    first = inbound(client, wa, business, status=201)
    conversation_id = first["conversation_id"]
    assert first["conversation_state"] == "pending"
    path = f"/v1/conversations/{conversation_id}"
    steps = [("active", "agent answered"), ("waiting", "customer typing"), ("active", "customer replied")]
    for state, reason in steps:
        moved = ok(transition(client, conversation_id, state, reason))
        assert (moved["state"], moved["state_reason"]) == (state, reason)
    # Moving to the current state is accepted and changes nothing.
    before = ok(client.get(path))
    same = ok(transition(client, conversation_id, "active", "retry"))
    assert same == before
    closed = ok(transition(client, conversation_id, "closed", "resolved"))
    assert closed["state"] == "closed"
    assert closed["close_reason"] == "resolved"
    assert closed["closed_at"]
    history = ok(client.get(f"{path}/history"))
    assert [(h["from_state"], h["to_state"], h["reason"]) for h in history] == [
        (None, "pending", "created"),
        ("pending", "active", "agent answered"),
        ("active", "waiting", "customer typing"),
        ("waiting", "active", "customer replied"),
        ("active", "closed", "resolved"),
    ]
    # A final conversation never reopens.
    refused = assert_problem(
        transition(client, conversation_id, "active", "reopen"), 409, "invalid-transition"
    )
    assert refused["current_state"] == "closed"
    assert refused["allowed"] == []
    assert refused["conversation"]["id"] == conversation_id
    assert_problem(transition(client, conversation_id, "expired"), 409, "invalid-transition")
    assert ok(transition(client, conversation_id, "closed", "again")) == ok(client.get(path))
    assert len(ok(client.get(f"{path}/history"))) == 5
    # The next inbound message starts a new conversation for the same customer.
    second = inbound(client, wa, business, status=201)
    assert second["conversation_created"] is True
    assert second["customer_created"] is False
    assert second["customer_id"] == first["customer_id"]
    assert second["conversation_id"] != conversation_id
    assert ok(client.get(f"/v1/conversations/open?wa_id={wa}"))["id"] == second["conversation_id"]
    listed = ok(client.get("/v1/conversations", params={"customer_id": first["customer_id"]}))["items"]
    assert [c["id"] for c in listed] == [second["conversation_id"], conversation_id]
    assert [c["id"] for c in ok(client.get("/v1/conversations", params={"state": "closed"}))["items"]] == [
        conversation_id
    ]


def test_transitions_from_pending_and_error(tenant: Tenant) -> None:
    client = tenant.client
    conversation_id = inbound(client, wa_id(), status=201)["conversation_id"]
    ok(transition(client, conversation_id, "error", "genesys down"))
    ok(transition(client, conversation_id, "pending", "retrying"))
    assert_problem(transition(client, conversation_id, "bogus"), 422)
    ok(transition(client, conversation_id, "expired", "timeout"))
    refused = assert_problem(transition(client, conversation_id, "pending"), 409, "invalid-transition")
    assert refused["current_state"] == "expired"


def test_if_match_on_patch_and_transitions(tenant: Tenant) -> None:
    client = tenant.client
    conversation_id = inbound(client, wa_id(), status=201)["conversation_id"]
    path = f"/v1/conversations/{conversation_id}"
    etag = client.get(path).headers["ETag"]
    response = client.patch(path, json={"metadata": {"queue": "sales"}}, headers={"If-Match": etag})
    assert ok(response)["metadata"] == {"queue": "sales"}
    new_etag = response.headers["ETag"]
    assert new_etag != etag
    assert int(new_etag.strip('"')) == int(etag.strip('"')) + 1
    assert client.get(path).headers["ETag"] == new_etag
    # Two writers with the same If-Match: one wins, the other is told the version moved on.
    answers = [
        client.patch(path, json={"metadata": {"writer": n}}, headers={"If-Match": new_etag}) for n in (1, 2)
    ]
    assert sorted(a.status_code for a in answers) == [200, 412]
    lost = next(a for a in answers if a.status_code == 412)
    assert_problem(lost, 412, "precondition-failed")
    assert lost.json()["current_version"] == int(new_etag.strip('"')) + 1
    assert ok(client.get(path))["metadata"] == {"queue": "sales", "writer": 1}
    # Weak and unquoted forms of the current ETag are accepted, `*` means any version.
    current = client.get(path).headers["ETag"]
    ok(client.patch(path, json={"metadata": {"w": True}}, headers={"If-Match": f"W/{current}"}))
    ok(client.patch(path, json={"metadata": {"u": True}}, headers={"If-Match": "*"}))
    for garbage in ("garbage", '"abc"', "1.5", '"-1"'):
        assert_problem(client.patch(path, json={"metadata": {"g": 1}}, headers={"If-Match": garbage}), 400)
    stale = assert_problem(transition(client, conversation_id, "active", None, **{"If-Match": current}), 412)
    assert stale["current_version"] > int(current.strip('"'))
    assert ok(client.get(path))["state"] == "pending"
    current = client.get(path).headers["ETag"]
    ok(transition(client, conversation_id, "active", None, **{"If-Match": current}))


def test_genesys_ids_are_set_once_and_unique(tenant: Tenant) -> None:
    client = tenant.client
    first = inbound(client, wa_id(), status=201)["conversation_id"]
    second = inbound(client, wa_id(), status=201)["conversation_id"]
    genesys_conversation, genesys_communication = genesys_id(), genesys_id()
    patched = ok(
        client.patch(
            f"/v1/conversations/{first}",
            json={
                "genesys_conversation_id": genesys_conversation,
                "genesys_communication_id": genesys_communication,
            },
        )
    )
    assert patched["genesys_conversation_id"] == genesys_conversation
    version = patched["version"]
    # The same value again is harmless and changes nothing.
    same = ok(
        client.patch(f"/v1/conversations/{first}", json={"genesys_conversation_id": genesys_conversation})
    )
    assert same["version"] == version
    assert_problem(
        client.patch(f"/v1/conversations/{first}", json={"genesys_conversation_id": genesys_id()}),
        409,
        "conflict",
    )
    assert_problem(
        client.patch(f"/v1/conversations/{first}", json={"genesys_communication_id": genesys_id()}),
        409,
        "conflict",
    )
    for field, value in (
        ("genesys_conversation_id", genesys_conversation),
        ("genesys_communication_id", genesys_communication),
    ):
        assert_problem(client.patch(f"/v1/conversations/{second}", json={field: value}), 409, "conflict")
    assert ok(client.get(f"/v1/conversations/{second}"))["genesys_conversation_id"] is None
    found = client.get(f"/v1/conversations/by-genesys-id/{genesys_conversation}")
    assert ok(found)["id"] == first
    assert found.headers["ETag"] == f'"{version}"'
    assert_problem(client.get(f"/v1/conversations/by-genesys-id/{genesys_id()}"), 404, "not-found")
    assert_problem(
        client.patch(f"/v1/conversations/{second}", json={"genesys_conversation_id": "has space"}), 422
    )
    # The inbound answer carries the Genesys ID of the open conversation.
    conversation = ok(client.get(f"/v1/conversations/{first}"))
    customer = ok(client.get(f"/v1/customers/{conversation['customer_id']}"))
    wa = next(i["external_id"] for i in customer["identities"] if i["channel"] == "whatsapp")
    again = inbound(client, wa, conversation["business_number_id"], status=201)
    assert again["conversation_id"] == first
    assert again["genesys_conversation_id"] == genesys_conversation


def test_get_or_create_and_open_lookup(tenant: Tenant) -> None:
    client = tenant.client
    wa, business = wa_id(), business_number()
    customer = ok(
        client.post("/v1/customers", json={"identities": [{"channel": "whatsapp", "external_id": wa}]}), 201
    )
    body = {"identity": {"channel": "whatsapp", "external_id": wa}, "business_number_id": business}
    created = client.post("/v1/conversations", json=body)
    assert created.status_code == 201
    assert created.json()["created"] is True
    conversation = created.json()["conversation"]
    assert conversation["customer_id"] == customer["id"]
    assert conversation["state"] == "pending"
    again = client.post(
        "/v1/conversations", json={"customer_id": customer["id"], "business_number_id": business}
    )
    assert again.status_code == 200
    assert again.json() == {"created": False, "conversation": conversation}
    other_number = ok(client.post("/v1/conversations", json=body | {"business_number_id": "other"}), 201)
    assert other_number["conversation"]["id"] != conversation["id"]
    open_on_number = ok(
        client.get("/v1/conversations/open", params={"wa_id": wa, "business_number_id": business})
    )
    assert open_on_number["id"] == conversation["id"]
    by_channel = ok(
        client.get(
            "/v1/conversations/open",
            params={"channel": "whatsapp", "external_id": wa, "business_number_id": "other"},
        )
    )
    assert by_channel["id"] == other_number["conversation"]["id"]
    assert_problem(client.get("/v1/conversations/open"), 400)
    assert_problem(client.get("/v1/conversations/open", params={"wa_id": "0123"}), 422)
    assert_problem(client.get("/v1/conversations/open", params={"wa_id": wa_id()}), 404, "not-found")
    assert_problem(client.post("/v1/conversations", json={"business_number_id": business}), 422)
    assert_problem(client.post("/v1/conversations", json=body | {"customer_id": customer["id"]}), 422)
    assert_problem(
        client.post(
            "/v1/conversations",
            json={
                "identity": {"channel": "whatsapp", "external_id": wa_id()},
                "business_number_id": business,
            },
        ),
        404,
    )


def test_participants(tenant: Tenant) -> None:
    client = tenant.client
    conversation_id = inbound(client, wa_id(), status=201)["conversation_id"]
    path = f"/v1/conversations/{conversation_id}/participants"
    agent = {
        "role": "agent",
        "participant_ref": "agent-1",
        "display_name": "Grace",
        "joined_at": "2026-01-01T10:00:00Z",
    }
    added = client.post(path, json=agent)
    assert added.status_code == 201
    repeat = client.post(path, json=agent)
    assert repeat.status_code == 200
    assert repeat.json() == added.json()
    bot = ok(
        client.post(
            path, json={"role": "bot", "participant_ref": "faq-bot", "joined_at": "2026-01-01T10:30:00Z"}
        ),
        201,
    )
    assert_problem(client.post(path, json={"role": "boss", "participant_ref": "x"}), 422)
    listed = ok(client.get(path))
    assert [p["id"] for p in listed] == [added.json()["id"], bot["id"]]  # by joined_at
    left = ok(client.post(f"{path}/{bot['id']}/leave", json={"left_at": "2026-01-01T11:00:00Z"}))
    assert left["left_at"].startswith("2026-01-01T11:00:00")
    again = ok(client.post(f"{path}/{bot['id']}/leave", json={}))
    assert again["left_at"] == left["left_at"]
    # Leaving before joining is recorded as leaving when joined; the bot can join again afterwards.
    rejoined = ok(
        client.post(
            path, json={"role": "bot", "participant_ref": "faq-bot", "joined_at": "2026-01-01T12:00:00Z"}
        ),
        201,
    )
    early = ok(client.post(f"{path}/{rejoined['id']}/leave", json={"left_at": "2026-01-01T09:00:00Z"}))
    assert early["left_at"] == early["joined_at"]
    assert_problem(client.post(f"{path}/{conversation_id}/leave", json={}), 404, "not-found")
    # The agent filter of the list.
    by_agent = ok(client.get("/v1/conversations", params={"agent_id": "agent-1"}))["items"]
    assert [c["id"] for c in by_agent] == [conversation_id]
    # Closing marks everyone still present as left, and no one can join afterwards.
    ok(transition(client, conversation_id, "closed", "done"))
    assert all(p["left_at"] is not None for p in ok(client.get(path)))
    refused = assert_problem(
        client.post(path, json={"role": "agent", "participant_ref": "late"}), 409, "conflict"
    )
    assert refused["current_state"] == "closed"


@pytest.mark.parametrize("limit", [1, 2, 5])
def test_conversation_list_pagination(tenant: Tenant, limit: int) -> None:
    client = tenant.client
    ids = [
        inbound(client, wa_id(), occurred_at=f"2026-01-0{day}T10:00:00Z", status=201)["conversation_id"]
        for day in (1, 2, 3, 3, 4)
    ]
    listed = [c["id"] for c in list_all(client, "/v1/conversations", limit)]
    assert sorted(listed) == sorted(ids)
    assert len(listed) == len(set(listed)) == 5
    # Newest first; the two started at the same time are in a stable order.
    assert listed[0] == ids[4]
    assert set(listed[1:3]) == {ids[2], ids[3]}
    assert listed[3:] == [ids[1], ids[0]]
    after = list_all(
        client,
        "/v1/conversations",
        limit,
        started_after="2026-01-02T00:00:00Z",
        started_before="2026-01-04T00:00:00Z",
    )
    assert {c["id"] for c in after} == {ids[1], ids[2], ids[3]}
    assert_problem(client.get("/v1/conversations", params={"started_after": "2026-01-02T00:00:00"}), 422)
