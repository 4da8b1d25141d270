"""`GET /v1/conversations/{id}/agent-context`: what the agent portal shows, in one call."""

from __future__ import annotations

from .helpers import Tenant, assert_problem, genesys_id, inbound, ok, record_message, transition


def test_one_call_gives_the_agent_everything(tenant: Tenant, other_tenant: Tenant) -> None:
    client = tenant.client
    wa = "14155552671"
    earlier = inbound(client, wa, profile_name="Ada", status=201)
    assert transition(client, earlier["conversation_id"], "closed", "resolved").status_code == 200
    current = inbound(client, wa, status=201)
    conversation_id = current["conversation_id"]
    for n in range(4):
        record_message(client, conversation_id, genesys_message_id=genesys_id(), text=f"reply {n}")
    inbound(client, wa, text="last", status=201)
    ok(
        client.post(
            f"/v1/conversations/{conversation_id}/participants",
            json={"role": "agent", "participant_ref": "agent-7"},
        ),
        201,
    )
    ok(client.patch(f"/v1/conversations/{conversation_id}/context", json={"values": {"topic": "order"}}))
    ok(client.patch(f"/v1/customers/{current['customer_id']}/context", json={"values": {"tier": "gold"}}))

    view = ok(client.get(f"/v1/conversations/{conversation_id}/agent-context", params={"messages": 3}))
    assert view["conversation"]["id"] == conversation_id
    assert [p["participant_ref"] for p in view["participants"]] == ["agent-7"]
    assert view["customer"]["display_name"] == "Ada"
    assert {(i["channel"], i["external_id"]) for i in view["customer"]["identities"]} == {
        ("whatsapp", wa),
        ("phone", "+14155552671"),
    }
    assert view["conversation_context"]["values"] == {"topic": "order"}
    assert view["customer_context"]["values"] == {"tier": "gold"}
    # The latest three of six messages, oldest first, each with its status.
    assert [m["text"] for m in view["messages"]] == ["reply 2", "reply 3", "last"]
    assert [m["status"] for m in view["messages"]] == ["queued", "queued", "received"]
    assert view["more_messages"] is True
    assert [c["id"] for c in view["earlier_conversations"]] == [earlier["conversation_id"]]

    everything = ok(client.get(f"/v1/conversations/{conversation_id}/agent-context", params={"messages": 50}))
    assert len(everything["messages"]) == 6
    assert everything["more_messages"] is False
    assert_problem(other_tenant.client.get(f"/v1/conversations/{conversation_id}/agent-context"), 404)
    assert_problem(
        client.get(f"/v1/conversations/{conversation_id}/agent-context", params={"messages": -1}), 422
    )
    assert ok(client.get(f"/v1/customers/{current['customer_id']}"))["id"] == view["customer"]["id"]
