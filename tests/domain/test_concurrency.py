"""Concurrent writers over HTTP: get-or-create, inbound messages, duplicates, receipts, context, If-Match."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections import Counter
from typing import Any

import httpx

from state_manager.messages.status import (
    Direction,
    Failure,
    Receipt,
    ReceiptStatus,
    StatusTimes,
    derive,
    merge,
)

from .helpers import (
    Tenant,
    business_number,
    inbound,
    ok,
    parse_time,
    record_message,
    wa_id,
    wamid,
)

T0 = dt.datetime(2026, 5, 1, 9, 0, tzinfo=dt.UTC)


def async_client(tenant: Tenant) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=tenant.base_url,
        headers={"Authorization": f"Bearer {tenant.key}"},
        timeout=60,
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
    )


async def all_at_once(requests: list[Any]) -> list[httpx.Response]:
    return list(await asyncio.gather(*requests))


async def test_fifty_get_or_create_calls_make_one_conversation(tenant: Tenant) -> None:
    wa, business = wa_id(), business_number()
    customer = ok(
        tenant.client.post(
            "/v1/customers", json={"identities": [{"channel": "whatsapp", "external_id": wa}]}
        ),
        201,
    )
    body = {"identity": {"channel": "whatsapp", "external_id": wa}, "business_number_id": business}
    async with async_client(tenant) as client:
        answers = await all_at_once([client.post("/v1/conversations", json=body) for _ in range(50)])
    assert Counter(a.status_code for a in answers) == {201: 1, 200: 49}, [a.text[:200] for a in answers]
    bodies = [a.json() for a in answers]
    assert len({b["conversation"]["id"] for b in bodies}) == 1
    assert sum(b["created"] for b in bodies) == 1
    assert all(b["created"] == (a.status_code == 201) for a, b in zip(answers, bodies, strict=True))
    listed = ok(tenant.client.get("/v1/conversations", params={"customer_id": customer["id"]}))["items"]
    assert [c["id"] for c in listed] == [bodies[0]["conversation"]["id"]]
    history = ok(tenant.client.get(f"/v1/conversations/{listed[0]['id']}/history"))
    assert [(h["from_state"], h["to_state"]) for h in history] == [(None, "pending")]


async def test_fifty_inbound_messages_from_a_new_customer(tenant: Tenant) -> None:
    wa, business = wa_id(), business_number()
    wamids = [wamid() for _ in range(50)]
    async with async_client(tenant) as client:
        answers = await all_at_once(
            [
                client.post(
                    "/v1/messages/inbound",
                    json={
                        "wa_id": wa,
                        "business_number_id": business,
                        "wamid": w,
                        "text": w,
                        "profile_name": "Ada",
                    },
                )
                for w in wamids
            ]
        )
    assert Counter(a.status_code for a in answers) == {201: 50}, [a.text[:200] for a in answers]
    bodies = [a.json() for a in answers]
    assert len({b["customer_id"] for b in bodies}) == 1
    assert len({b["conversation_id"] for b in bodies}) == 1
    assert sum(b["customer_created"] for b in bodies) == 1
    assert sum(b["conversation_created"] for b in bodies) == 1
    assert len({b["message_id"] for b in bodies}) == 50
    customers = ok(tenant.client.get("/v1/customers"))["items"]
    assert [c["id"] for c in customers] == [bodies[0]["customer_id"]]
    assert ("whatsapp", wa) in {(i["channel"], i["external_id"]) for i in customers[0]["identities"]}
    conversations = ok(tenant.client.get("/v1/conversations"))["items"]
    assert [c["id"] for c in conversations] == [bodies[0]["conversation_id"]]
    messages = ok(
        tenant.client.get(f"/v1/conversations/{conversations[0]['id']}/messages", params={"limit": 500})
    )
    assert sorted(m["wamid"] for m in messages["items"]) == sorted(wamids)


async def test_twenty_repeats_of_one_wamid_record_one_message(tenant: Tenant) -> None:
    wa, the_wamid = wa_id(), wamid()
    body = {"wa_id": wa, "business_number_id": business_number(), "wamid": the_wamid, "text": "once"}
    async with async_client(tenant) as client:
        answers = await all_at_once([client.post("/v1/messages/inbound", json=body) for _ in range(20)])
    assert Counter(a.status_code for a in answers) == {201: 1, 200: 19}, [a.text[:200] for a in answers]
    bodies = [a.json() for a in answers]
    assert Counter(b["duplicate"] for b in bodies) == {True: 19, False: 1}
    assert len({b["message_id"] for b in bodies}) == 1
    assert len({b["conversation_id"] for b in bodies}) == 1
    assert len({b["customer_id"] for b in bodies}) == 1
    assert len(ok(tenant.client.get("/v1/customers"))["items"]) == 1
    messages = ok(tenant.client.get(f"/v1/conversations/{bodies[0]['conversation_id']}/messages"))["items"]
    assert [m["wamid"] for m in messages] == [the_wamid]
    # The conversation's clocks moved once.
    conversation = ok(tenant.client.get(f"/v1/conversations/{bodies[0]['conversation_id']}"))
    assert conversation["last_inbound_at"] == messages[0]["occurred_at"]


async def test_concurrent_receipt_batches_for_one_message_lose_nothing(tenant: Tenant) -> None:
    conversation_id = inbound(tenant.client, wa_id(), status=201)["conversation_id"]
    the_wamid = wamid()
    message = record_message(tenant.client, conversation_id, wamid=the_wamid)
    rng = random.Random(7)
    receipts = []
    expected = StatusTimes()
    for _ in range(30):
        status = rng.choice(list(ReceiptStatus))
        at = T0 + dt.timedelta(seconds=rng.randrange(0, 40))
        error = (
            {"code": str(rng.randrange(3)), "title": rng.choice(["a", "b"])} if status == "failed" else None
        )
        receipts.append({"wamid": the_wamid, "status": status.value, "at": at.isoformat(), "error": error})
        failure = Failure(error["code"], error["title"]) if error else None
        expected = merge(expected, Receipt(status, at, failure if status is ReceiptStatus.FAILED else None))
    async with async_client(tenant) as client:
        answers = await all_at_once([client.post("/v1/receipts", json={"receipts": [r]}) for r in receipts])
    assert {a.status_code for a in answers} == {200}
    final = ok(tenant.client.get(f"/v1/messages/{message['id']}"))
    assert final["status"] == derive(expected, Direction.OUTBOUND).value
    for column in ("sent_at", "delivered_at", "read_at", "failed_at"):
        assert parse_time(final[column]) == getattr(expected, column), column
    assert (final["failure"]["code"], final["failure"]["title"]) == (
        expected.failure.code,
        expected.failure.title,
    )


async def test_receipts_racing_the_message_they_name_are_never_lost(tenant: Tenant) -> None:
    """Each receipt is posted at the same moment as its message: applied at once, or held and then applied.

    Whichever commits first, the other must see it: a receipt held while the message is being recorded
    must not stay held forever. (Each message has its own conversation, so that the writers do not queue
    behind one conversation row.)
    """
    lost = []
    async with async_client(tenant) as client:
        opened = await all_at_once(
            [
                client.post(
                    "/v1/messages/inbound",
                    json={"wa_id": wa_id(), "business_number_id": "bn-race", "wamid": wamid()},
                )
                for _ in range(30)
            ]
        )
        conversations = [ok(answer, 201)["conversation_id"] for answer in opened]
        for _ in range(2):
            pairs = [(conversation, wamid()) for conversation in conversations]
            requests = []
            for conversation, the_wamid in pairs:
                requests.append(
                    client.post(
                        f"/v1/conversations/{conversation}/messages",
                        json={"direction": "outbound", "wamid": the_wamid},
                    )
                )
                receipt = {"wamid": the_wamid, "status": "delivered", "at": T0.isoformat()}
                requests.append(client.post("/v1/receipts", json={"receipts": [receipt]}))
            answers = await all_at_once(requests)
            assert {a.status_code for a in answers} <= {200, 201}, [a.text[:200] for a in answers]
            for _, the_wamid in pairs:
                message = (await client.get(f"/v1/messages/by-wamid/{the_wamid}")).json()
                if message["status"] != "delivered":
                    lost.append((the_wamid, message["status"]))
    assert not lost, f"{len(lost)} receipt(s) left held: {lost}"


async def test_context_writers_racing_on_one_key_keep_the_latest(tenant: Tenant) -> None:
    conversation_id = inbound(tenant.client, wa_id(), status=201)["conversation_id"]
    path = f"/v1/conversations/{conversation_id}/context"
    order = list(range(20))
    random.Random(3).shuffle(order)
    async with async_client(tenant) as client:
        answers = await all_at_once(
            [
                client.patch(
                    path,
                    json={
                        "values": {"step": n, f"k{n}": n},
                        "at": (T0 + dt.timedelta(seconds=n)).isoformat(),
                    },
                )
                for n in order
            ]
        )
    assert {a.status_code for a in answers} == {200}
    values = ok(tenant.client.get(path))["values"]
    assert values == {"step": 19} | {f"k{n}": n for n in range(20)}


async def test_same_if_match_from_many_writers_lets_exactly_one_win(tenant: Tenant) -> None:
    conversation_id = inbound(tenant.client, wa_id(), status=201)["conversation_id"]
    path = f"/v1/conversations/{conversation_id}"
    etag = tenant.client.get(path).headers["ETag"]
    async with async_client(tenant) as client:
        answers = await all_at_once(
            [
                client.patch(path, json={"metadata": {"writer": n}}, headers={"If-Match": etag})
                for n in range(10)
            ]
        )
    assert Counter(a.status_code for a in answers) == {200: 1, 412: 9}, [a.text[:200] for a in answers]
    winner = next(a for a in answers if a.status_code == 200).json()
    current = ok(tenant.client.get(path))
    assert current["metadata"] == winner["metadata"]
    assert current["version"] == int(etag.strip('"')) + 1
