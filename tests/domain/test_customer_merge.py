"""Merging two customers: identities, conversations and context move to the one kept; the other is gone;
every lookup (cached ones included) answers with the one kept; the merge is announced."""

from __future__ import annotations

from .helpers import Tenant, assert_problem, inbound, ok, wa_id
from .test_events import wait_for_events


def test_merge_moves_everything_and_is_announced(tenant: Tenant) -> None:
    client = tenant.client
    first_wa, second_wa = wa_id(), wa_id()
    kept = inbound(client, first_wa, "bn-merge-1", profile_name="Ana")
    merged = inbound(client, second_wa, "bn-merge-2", profile_name="Ana Maria")
    kept_id, merged_id = kept["customer_id"], merged["customer_id"]
    ok(
        client.patch(
            f"/v1/customers/{merged_id}", json={"language": "pt", "attributes": {"tier": "gold", "x": 1}}
        )
    )
    ok(client.patch(f"/v1/customers/{kept_id}", json={"attributes": {"x": 2}}))
    context = "/v1/customers/{}/context"
    ok(
        client.patch(
            context.format(kept_id),
            json={"values": {"old": "kept", "new": "kept"}, "at": "2026-01-01T10:00:00Z"},
        )
    )
    ok(
        client.patch(
            context.format(merged_id), json={"values": {"old": "merged"}, "at": "2026-01-01T09:00:00Z"}
        )
    )
    ok(
        client.patch(
            context.format(merged_id), json={"values": {"new": "merged"}, "at": "2026-01-01T11:00:00Z"}
        )
    )
    # Cached before the merge: must not answer with the removed customer after it.
    ok(client.get(f"/v1/customers/by-identity/whatsapp/{second_wa}"))
    ok(client.get("/v1/conversations/open", params={"wa_id": second_wa, "business_number_id": "bn-merge-2"}))
    version = ok(client.get(f"/v1/customers/{kept_id}"))["version"]

    assert_problem(
        client.post(
            f"/v1/customers/{kept_id}/merge", json={"customer_id": merged_id}, headers={"If-Match": '"999"'}
        ),
        412,
    )
    result = ok(
        client.post(
            f"/v1/customers/{kept_id}/merge",
            json={"customer_id": merged_id},
            headers={"If-Match": f'"{version}"'},
        )
    )
    assert result["id"] == kept_id
    assert result["display_name"] == "Ana"  # the kept customer's own fields win
    assert result["language"] == "pt"  # what it lacked comes from the other
    assert result["attributes"] == {"tier": "gold", "x": 2}
    assert result["version"] == version + 1
    assert {(i["channel"], i["external_id"]) for i in result["identities"]} >= {
        ("whatsapp", first_wa),
        ("whatsapp", second_wa),
    }
    assert_problem(client.get(f"/v1/customers/{merged_id}"), 404)
    assert ok(client.get(f"/v1/customers/by-identity/whatsapp/{second_wa}"))["id"] == kept_id
    moved = ok(
        client.get("/v1/conversations/open", params={"wa_id": second_wa, "business_number_id": "bn-merge-2"})
    )
    assert moved["id"] == merged["conversation_id"]
    assert moved["customer_id"] == kept_id
    assert ok(client.get(context.format(kept_id)))["values"] == {"old": "kept", "new": "merged"}
    # The next message from the merged number lands in the moved conversation.
    again = inbound(client, second_wa, "bn-merge-2")
    assert (again["customer_id"], again["conversation_id"]) == (kept_id, merged["conversation_id"])

    events = wait_for_events(client, 1, types="customer.merged")
    assert len(events) == 1
    assert events[0]["customer_id"] == kept_id
    assert events[0]["payload"] == {"merged_customer_id": merged_id, "version": version + 1}


def test_merge_refusals_change_nothing(tenant: Tenant, other_tenant: Tenant) -> None:
    client = tenant.client
    first = inbound(client, wa_id(), "bn-clash")
    second = inbound(client, wa_id(), "bn-clash")
    clash = assert_problem(
        client.post(
            f"/v1/customers/{first['customer_id']}/merge", json={"customer_id": second["customer_id"]}
        ),
        409,
    )
    assert clash["business_number_ids"] == ["bn-clash"]
    assert ok(client.get(f"/v1/customers/{second['customer_id']}"))["id"] == second["customer_id"]
    same = {"customer_id": first["customer_id"]}
    assert_problem(client.post(f"/v1/customers/{first['customer_id']}/merge", json=same), 400)
    foreign = inbound(other_tenant.client, wa_id(), "bn-clash")
    assert_problem(
        client.post(
            f"/v1/customers/{first['customer_id']}/merge", json={"customer_id": foreign["customer_id"]}
        ),
        404,
    )
    assert_problem(
        client.post(f"/v1/customers/{first['customer_id']}/merge", json={"customer_id": "nope"}), 422
    )
    assert (
        ok(other_tenant.client.get(f"/v1/customers/{foreign['customer_id']}"))["id"] == foreign["customer_id"]
    )
