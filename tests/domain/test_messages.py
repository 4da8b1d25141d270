"""Messages and context over HTTP: listing with cursors, lookups, linking IDs, repeats, context ordering."""

from __future__ import annotations

import datetime as dt

import pytest

from .helpers import (
    Tenant,
    assert_problem,
    genesys_id,
    inbound,
    list_all,
    ok,
    parse_time,
    record_message,
    transition,
    wa_id,
    wamid,
)

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize("limit", [1, 2, 3, 10])
def test_list_messages_both_orders_with_cursor(tenant: Tenant, limit: int) -> None:
    client = tenant.client
    wa = wa_id()
    first = inbound(client, wa, occurred_at=T0.isoformat(), status=201)
    conversation_id = first["conversation_id"]
    ids = [first["message_id"]]
    # Mixed directions, times out of order, two messages at the same instant, epoch seconds and offsets.
    offsets = [5, 3, 3, 8, 1]
    for n, minutes in enumerate(offsets):
        at = T0 + dt.timedelta(minutes=minutes)
        if n % 2:
            ids.append(inbound(client, wa, occurred_at=int(at.timestamp()), status=201)["message_id"])
        else:
            shown = at.astimezone(dt.timezone(dt.timedelta(hours=-5))).isoformat()
            ids.append(
                record_message(client, conversation_id, genesys_message_id=genesys_id(), occurred_at=shown)[
                    "id"
                ]
            )
    path = f"/v1/conversations/{conversation_id}/messages"
    everything = ok(client.get(path, params={"limit": 500}))["items"]
    assert sorted(m["id"] for m in everything) == sorted(ids)
    keys = [(parse_time(m["occurred_at"]), m["id"]) for m in everything]
    assert keys == sorted(keys)
    ascending = list_all(client, path, limit)
    descending = list_all(client, path, limit, order="desc")
    assert [m["id"] for m in ascending] == [m["id"] for m in everything]
    assert [m["id"] for m in descending] == [m["id"] for m in reversed(everything)]
    assert_problem(client.get(path, params={"order": "sideways"}), 422)
    assert_problem(client.get(path, params={"cursor": "@@@"}), 400, "bad-request")


def test_lookups_and_repeats(tenant: Tenant) -> None:
    client = tenant.client
    wa = wa_id()
    the_wamid = wamid()
    first = inbound(client, wa, wamid_=the_wamid, text="hello", status=201)
    repeat = inbound(client, wa, wamid_=the_wamid, text="changed?", status=200)
    assert repeat["duplicate"] is True
    assert repeat["message_id"] == first["message_id"]
    message = ok(client.get(f"/v1/messages/{first['message_id']}"))
    assert message["text"] == "hello"
    assert message["direction"] == "inbound"
    assert message["status"] == "received"
    assert message["sender_type"] == "customer"
    assert message["sender_id"] == wa
    assert ok(client.get(f"/v1/messages/by-wamid/{the_wamid}")) == message
    conversation = ok(client.get(f"/v1/conversations/{first['conversation_id']}"))
    assert conversation["reply_window_open"] is True
    # An outbound message recorded by its Genesys ID, found by it; a repeat answers 200 and changes nothing.
    genesys = genesys_id()
    body = {"direction": "outbound", "genesys_message_id": genesys, "text": "hi!", "sender_id": "agent-1"}
    outbound = record_message(client, first["conversation_id"], **body)
    assert outbound["status"] == "queued"
    assert outbound["sender_type"] == "agent"
    assert outbound["wamid"] is None
    version = ok(client.get(f"/v1/conversations/{first['conversation_id']}"))["version"]
    again = record_message(client, first["conversation_id"], status=200, **body | {"text": "other"})
    assert again == outbound
    assert ok(client.get(f"/v1/conversations/{first['conversation_id']}"))["version"] == version
    assert ok(client.get(f"/v1/messages/by-genesys-id/{genesys}")) == outbound
    assert_problem(client.get(f"/v1/messages/by-wamid/{wamid()}"), 404, "not-found")
    assert_problem(client.get(f"/v1/messages/by-genesys-id/{genesys_id()}"), 404, "not-found")
    assert_problem(
        client.post(f"/v1/conversations/{first['conversation_id']}/messages", json={"direction": "outbound"}),
        422,
    )


def test_link_wamid_later_applies_held_receipts(tenant: Tenant) -> None:
    client = tenant.client
    conversation_id = inbound(client, wa_id(), status=201)["conversation_id"]
    outbound = record_message(client, conversation_id, genesys_message_id=genesys_id())
    the_wamid = wamid()
    # Receipts for the wamid arrive before anyone knows which message it is: held.
    receipts = [
        {"wamid": the_wamid, "status": "delivered", "at": "2026-03-01T12:00:05Z"},
        {"wamid": the_wamid, "status": "sent", "at": "2026-03-01T12:00:01Z"},
    ]
    results = ok(client.post("/v1/receipts", json={"receipts": receipts}))["results"]
    assert [r["outcome"] for r in results] == ["held", "held"]
    linked = ok(client.post(f"/v1/messages/{outbound['id']}/link", json={"wamid": the_wamid}))
    assert linked["wamid"] == the_wamid
    assert linked["genesys_message_id"] == outbound["genesys_message_id"]
    assert linked["status"] == "delivered"
    assert parse_time(linked["sent_at"]) == dt.datetime(2026, 3, 1, 12, 0, 1, tzinfo=dt.UTC)
    assert parse_time(linked["delivered_at"]) == dt.datetime(2026, 3, 1, 12, 0, 5, tzinfo=dt.UTC)
    assert ok(client.get(f"/v1/messages/by-wamid/{the_wamid}")) == linked
    # Linking the same wamid again is harmless; another wamid, or one another message has, is a conflict.
    assert ok(client.post(f"/v1/messages/{outbound['id']}/link", json={"wamid": the_wamid})) == linked
    assert_problem(
        client.post(f"/v1/messages/{outbound['id']}/link", json={"wamid": wamid()}), 409, "conflict"
    )
    other = record_message(client, conversation_id, genesys_message_id=genesys_id())
    taken = assert_problem(
        client.post(f"/v1/messages/{other['id']}/link", json={"wamid": the_wamid}), 409, "conflict"
    )
    assert taken["message_id"] == outbound["id"]
    assert ok(client.get(f"/v1/messages/{other['id']}"))["wamid"] is None
    assert_problem(client.post(f"/v1/messages/{other['id']}/link", json={}), 422)
    # A receipt now applies at once.
    results = ok(
        client.post(
            "/v1/receipts",
            json={"receipts": [{"wamid": the_wamid, "status": "read", "at": "2026-03-01T12:01:00Z"}]},
        )
    )
    assert results["results"] == [{"outcome": "applied", "message_id": outbound["id"], "status": "read"}]


def test_context_latest_at_wins_and_removal_sticks(tenant: Tenant) -> None:
    client = tenant.client
    conversation_id = inbound(client, wa_id(), status=201)["conversation_id"]
    path = f"/v1/conversations/{conversation_id}/context"
    assert ok(client.get(path)) == {"values": {}, "updated_at": {}}
    t = [(T0 + dt.timedelta(minutes=n)).isoformat() for n in range(6)]
    ok(client.patch(path, json={"values": {"intent": "buy", "step": 1, "cart": {"items": [1]}}, "at": t[2]}))
    # An older write of the same keys changes nothing; its new key is kept.
    older = ok(client.patch(path, json={"values": {"intent": "refund", "step": 0, "lang": "en"}, "at": t[1]}))
    assert older["values"] == {"intent": "buy", "step": 1, "cart": {"items": [1]}, "lang": "en"}
    newer = ok(client.patch(path, json={"values": {"step": 2}, "at": t[3]}))
    assert newer["values"]["step"] == 2
    assert parse_time(newer["updated_at"]["step"]) == T0 + dt.timedelta(minutes=3)
    # null removes a key; an older write cannot bring it back, a newer one can.
    removed = ok(client.patch(path, json={"values": {"cart": None}, "at": t[4]}))
    assert "cart" not in removed["values"]
    assert "cart" not in removed["updated_at"]
    late = ok(client.patch(path, json={"values": {"cart": {"items": [9]}}, "at": t[3]}))
    assert "cart" not in late["values"]
    assert ok(client.get(path)) == late
    back = ok(client.patch(path, json={"values": {"cart": {"items": [2]}}, "at": t[5]}))
    assert back["values"]["cart"] == {"items": [2]}
    # Epoch seconds work as `at`; without `at` the write is "now", which is newer than all of the above.
    now = ok(client.patch(path, json={"values": {"intent": "chat"}}))
    assert now["values"]["intent"] == "chat"
    epoch = ok(client.patch(path, json={"values": {"intent": "old"}, "at": int(T0.timestamp())}))
    assert epoch["values"]["intent"] == "chat"


def test_customer_context_survives_across_conversations(tenant: Tenant) -> None:
    client = tenant.client
    wa = wa_id()
    first = inbound(client, wa, status=201)
    customer_path = f"/v1/customers/{first['customer_id']}/context"
    ok(client.patch(customer_path, json={"values": {"tier": "gold", "last_topic": "billing"}}))
    ok(client.patch(f"/v1/conversations/{first['conversation_id']}/context", json={"values": {"step": 3}}))
    ok(transition(client, first["conversation_id"], "closed", "done"))
    second = inbound(client, wa, status=201)
    assert second["conversation_id"] != first["conversation_id"]
    assert ok(client.get(customer_path))["values"] == {"tier": "gold", "last_topic": "billing"}
    assert ok(client.get(f"/v1/conversations/{second['conversation_id']}/context"))["values"] == {}
    assert ok(client.get(f"/v1/conversations/{first['conversation_id']}/context"))["values"] == {"step": 3}
    assert_problem(client.patch(customer_path, json={"values": {}}), 422)
    assert_problem(client.patch(customer_path, json={"values": {"bad key": 1}}), 422)
    assert ok(client.get(customer_path))["values"] == {"tier": "gold", "last_topic": "billing"}


def test_messages_appended_to_an_open_conversation(tenant: Tenant) -> None:
    """The first message creates customer and conversation; the next ones are appended (on PostgreSQL by
    the one-round-trip function): every field, clock and version must come out as the general path's."""
    client = tenant.client
    wa = wa_id()
    first = inbound(client, wa, occurred_at=T0.isoformat(), profile_name="Ada", status=201)
    assert first["customer_created"] is True
    assert first["conversation_created"] is True
    conversation_id = first["conversation_id"]
    path = f"/v1/conversations/{conversation_id}"
    version = ok(client.get(path))["version"]

    media = {
        "url": "https://example.com/a.jpg",
        "mime_type": "image/jpeg",
        "filename": "a.jpg",
        "caption": "c",
    }
    second = inbound(
        client,
        wa,
        occurred_at=(T0 + dt.timedelta(hours=2)).isoformat(),
        profile_name="Ada L.",
        type="image",
        text=None,
        media=media,
        metadata={"k": [1, "two", {"three": None}]},
        status=201,
    )
    assert second | {"message_id": None} == first | {
        "message_id": None,
        "customer_created": False,
        "conversation_created": False,
    }
    message = ok(client.get(f"/v1/messages/{second['message_id']}"))
    assert (message["type"], message["text"], message["media"]) == ("image", None, media)
    assert message["metadata"] == {"k": [1, "two", {"three": None}]}
    assert (message["direction"], message["sender_type"], message["sender_id"]) == ("inbound", "customer", wa)
    assert message["conversation_id"] == conversation_id
    customer = ok(client.get(f"/v1/customers/{first['customer_id']}"))
    assert customer["display_name"] == "Ada L."
    conversation = ok(client.get(path))
    assert conversation["version"] == version + 1
    assert parse_time(conversation["last_inbound_at"]) == T0 + dt.timedelta(hours=2)
    assert parse_time(conversation["reply_window_ends_at"]) == T0 + dt.timedelta(hours=26)

    # A late message is recorded, but moves no clock back; an empty profile name keeps the known one.
    late = inbound(
        client, wa, occurred_at=(T0 + dt.timedelta(hours=1)).isoformat(), profile_name="", status=201
    )
    conversation = ok(client.get(path))
    assert conversation["version"] == version + 2
    assert parse_time(conversation["last_activity_at"]) == T0 + dt.timedelta(hours=2)
    assert parse_time(conversation["reply_window_ends_at"]) == T0 + dt.timedelta(hours=26)
    assert ok(client.get(f"/v1/customers/{first['customer_id']}"))["display_name"] == "Ada L."

    # A repeat of an appended message: same IDs, 200, nothing changes.
    repeat = inbound(
        client, wa, wamid_=ok(client.get(f"/v1/messages/{late['message_id']}"))["wamid"], status=200
    )
    assert (repeat["message_id"], repeat["duplicate"]) == (late["message_id"], True)
    assert ok(client.get(path))["version"] == version + 2

    # Once the conversation is closed, the next message opens a new one for the same customer.
    assert transition(client, conversation_id, "closed", "resolved").status_code == 200
    reopened = inbound(client, wa, status=201)
    assert reopened["conversation_created"] is True
    assert reopened["customer_created"] is False
    assert reopened["customer_id"] == first["customer_id"]
    assert reopened["conversation_id"] != conversation_id


def test_first_message_creates_the_customer_with_its_phone_identity(tenant: Tenant) -> None:
    client = tenant.client
    first = inbound(client, "14155552671", profile_name="Ada", status=201)
    assert (first["customer_created"], first["conversation_created"]) == (True, True)
    customer = ok(client.get(f"/v1/customers/{first['customer_id']}"))
    assert customer["display_name"] == "Ada"
    assert sorted((i["channel"], i["external_id"]) for i in customer["identities"]) == [
        ("phone", "+14155552671"),
        ("whatsapp", "14155552671"),
    ]
    history = ok(client.get(f"/v1/conversations/{first['conversation_id']}/history"))
    assert [(h["from_state"], h["to_state"], h["reason"]) for h in history] == [(None, "pending", "created")]
    # A wa_id that spells no valid phone number gets no phone identity; an empty profile name is no name.
    other = inbound(client, "999999", profile_name="", status=201)
    customer = ok(client.get(f"/v1/customers/{other['customer_id']}"))
    assert customer["display_name"] is None
    assert [(i["channel"], i["external_id"]) for i in customer["identities"]] == [("whatsapp", "999999")]
    # The same customer on a second business number: a second conversation, no second customer.
    elsewhere = inbound(client, "14155552671", "bn-2", status=201)
    assert (elsewhere["customer_created"], elsewhere["conversation_created"]) == (False, True)
    assert elsewhere["customer_id"] == first["customer_id"]
    assert elsewhere["conversation_id"] != first["conversation_id"]


def test_a_repeat_after_the_conversation_ended_opens_nothing(tenant: Tenant) -> None:
    client = tenant.client
    wa = wa_id()
    the_wamid = wamid()
    first = inbound(client, wa, wamid_=the_wamid, status=201)
    assert transition(client, first["conversation_id"], "closed", "resolved").status_code == 200
    repeat = inbound(client, wa, wamid_=the_wamid, status=200)
    assert repeat["duplicate"] is True
    assert (repeat["conversation_id"], repeat["message_id"]) == (
        first["conversation_id"],
        first["message_id"],
    )
    assert (repeat["conversation_state"], repeat["conversation_created"]) == ("closed", False)
    # No empty conversation was opened: the customer has exactly the one, closed.
    listed = ok(client.get("/v1/conversations", params={"customer_id": first["customer_id"]}))["items"]
    assert [c["id"] for c in listed] == [first["conversation_id"]]
    assert client.get("/v1/conversations/open", params={"wa_id": wa}).status_code == 404
