"""Customers over HTTP: identities (normalised), lookups, conflicts, merge-patch updates, pagination."""

from __future__ import annotations

import pytest

from .helpers import Tenant, assert_problem, list_all, ok, wa_id


@pytest.mark.parametrize("written", ["+1 415 555 2671", "14155552671", "+1 (415) 555-2671", " +14155552671 "])
def test_phone_identities_are_stored_in_e164(tenant: Tenant, written: str) -> None:
    client = tenant.client
    created = ok(
        client.post(
            "/v1/customers",
            json={"display_name": "Ada", "identities": [{"channel": "phone", "external_id": written}]},
        ),
        201,
    )
    assert [(i["channel"], i["external_id"]) for i in created["identities"]] == [("phone", "+14155552671")]
    assert created["version"] == 1
    # Found by the normalised form and by other spellings of the same number.
    for spelling in ("+14155552671", "14155552671", "+1 415 555 2671"):
        found = ok(client.get(f"/v1/customers/by-identity/phone/{spelling}"))
        assert found["id"] == created["id"], spelling
    assert ok(client.get(f"/v1/customers/{created['id']}")) == found


def test_create_with_several_identities_and_look_each_up(tenant: Tenant) -> None:
    client = tenant.client
    wa = wa_id()
    identities = [
        {"channel": "whatsapp", "external_id": f"+{wa}"},
        {"channel": "email", "external_id": "Ada.Lovelace@Example.COM"},
        {"channel": "genesys", "external_id": "ext-contact:42"},
        {"channel": "whatsapp_bsuid", "external_id": "BR.1502576394655843"},
        {"channel": "phone", "external_id": "+442071838750"},
        {"channel": "phone", "external_id": "442071838750"},  # the same identity twice: kept once
    ]
    response = client.post(
        "/v1/customers",
        json={
            "display_name": "Ada",
            "language": "en-GB",
            "preferences": {"contact": "whatsapp"},
            "consent": {"marketing": False},
            "attributes": {"plan": "pro"},
            "identities": identities,
        },
    )
    created = ok(response, 201)
    assert response.headers["ETag"] == '"1"'
    got = {(i["channel"], i["external_id"]) for i in created["identities"]}
    assert got == {
        ("whatsapp", wa),
        ("email", "ada.lovelace@example.com"),
        ("genesys", "ext-contact:42"),
        ("whatsapp_bsuid", "BR.1502576394655843"),
        ("phone", "+442071838750"),
    }
    for channel, external_id in got:
        response = client.get(f"/v1/customers/by-identity/{channel}/{external_id}")
        assert ok(response)["id"] == created["id"], (channel, external_id)
        assert response.headers["ETag"] == '"1"'
    assert_problem(client.get(f"/v1/customers/by-identity/whatsapp/{wa_id()}"), 404, "not-found")
    assert_problem(client.get("/v1/customers/by-identity/fax/123456"), 422)
    assert_problem(client.get("/v1/customers/by-identity/phone/0123456789"), 422)
    for refused in ("+99912345678", "+1 not a number"):  # no country code 999; not digits
        answer = client.post(
            "/v1/customers",
            json={"display_name": "x", "identities": [{"channel": "phone", "external_id": refused}]},
        )
        assert_problem(answer, 422)
        assert refused not in answer.text  # refusals never echo the input (docs/security.md, "Errors")


def test_an_identity_belongs_to_one_customer(tenant: Tenant) -> None:
    client = tenant.client
    email = {"channel": "email", "external_id": "shared@example.com"}
    first = ok(client.post("/v1/customers", json={"display_name": "first", "identities": [email]}), 201)
    # Creating another customer with it: 409 naming the owner, and nothing of the second customer is kept.
    conflict = assert_problem(
        client.post(
            "/v1/customers",
            json={
                "display_name": "second",
                "identities": [
                    {"channel": "phone", "external_id": "+14155552671"},
                    email | {"external_id": "SHARED@example.com"},
                ],
            },
        ),
        409,
        "conflict",
    )
    assert conflict["customer_id"] == first["id"]
    assert [c["id"] for c in ok(client.get("/v1/customers"))["items"]] == [first["id"]]
    assert_problem(client.get("/v1/customers/by-identity/phone/+14155552671"), 404)
    # Adding it to another customer: 409; adding it again to its owner: harmless.
    second = ok(client.post("/v1/customers", json={"display_name": "second"}), 201)
    conflict = assert_problem(
        client.post(f"/v1/customers/{second['id']}/identities", json=email), 409, "conflict"
    )
    assert conflict["customer_id"] == first["id"]
    again = ok(client.post(f"/v1/customers/{first['id']}/identities", json=email), 201)
    assert again["identities"] == first["identities"]
    assert ok(client.get(f"/v1/customers/{second['id']}"))["identities"] == []
    added = ok(
        client.post(
            f"/v1/customers/{second['id']}/identities",
            json={"channel": "phone", "external_id": "14155552671"},
        ),
        201,
    )
    assert [(i["channel"], i["external_id"]) for i in added["identities"]] == [("phone", "+14155552671")]
    assert_problem(
        client.post(
            f"/v1/customers/{first['id']}/identities",
            json={"channel": "phone", "external_id": "+1 415 555 2671"},
        ),
        409,
    )


def test_patch_merges_objects_per_key_and_null_removes(tenant: Tenant) -> None:
    client = tenant.client
    created = ok(
        client.post(
            "/v1/customers",
            json={
                "display_name": "Ada",
                "language": "en",
                "attributes": {"plan": "pro", "address": {"city": "London", "zip": "N1"}, "score": 3},
                "preferences": {"channel": "whatsapp"},
            },
        ),
        201,
    )
    path = f"/v1/customers/{created['id']}"
    response = client.patch(
        path,
        json={"attributes": {"score": None, "address": {"zip": None, "street": "Main"}, "new": [1, 2]}},
    )
    patched = ok(response)
    assert patched["attributes"] == {
        "plan": "pro",
        "address": {"city": "London", "street": "Main"},
        "new": [1, 2],
    }
    assert patched["preferences"] == {"channel": "whatsapp"}
    assert patched["display_name"] == "Ada"
    assert patched["language"] == "en"
    assert patched["version"] == 2
    assert response.headers["ETag"] == '"2"'
    # Fields left out stay; a null display name clears it.
    cleared = ok(client.patch(path, json={"display_name": None, "consent": {"marketing": True}}))
    assert cleared["display_name"] is None
    assert cleared["language"] == "en"
    assert cleared["consent"] == {"marketing": True}
    assert cleared["attributes"] == patched["attributes"]
    assert ok(client.get(path)) == cleared
    # If-Match: the current version succeeds, a stale one is 412 and changes nothing; garbage is 400.
    current = client.get(path).headers["ETag"]
    ok(client.patch(path, json={"attributes": {"plan": "team"}}, headers={"If-Match": current}))
    stale = assert_problem(
        client.patch(path, json={"attributes": {"plan": "free"}}, headers={"If-Match": current}), 412
    )
    assert stale["current_version"] == int(current.strip('"')) + 1
    assert_problem(
        client.patch(path, json={"attributes": {"plan": "free"}}, headers={"If-Match": "nonsense"}), 400
    )
    assert ok(client.get(path))["attributes"]["plan"] == "team"


def test_cursor_pagination_returns_every_customer_once_in_a_stable_order(tenant: Tenant) -> None:
    client = tenant.client
    created = [ok(client.post("/v1/customers", json={"display_name": f"c{i}"}), 201)["id"] for i in range(7)]
    first_page = ok(client.get("/v1/customers", params={"limit": 3}))
    assert [c["id"] for c in first_page["items"]] == created[:3]
    assert first_page["next_cursor"]
    listed = list_all(client, "/v1/customers", 3)
    assert [c["id"] for c in listed] == created
    assert listed == list_all(client, "/v1/customers", 3)  # stable
    assert [c["id"] for c in list_all(client, "/v1/customers", 7)] == created
    assert [c["id"] for c in list_all(client, "/v1/customers", 500)] == created
    # A customer created while paging appears once, after the others.
    second_page = ok(client.get("/v1/customers", params={"limit": 3, "cursor": first_page["next_cursor"]}))
    late = ok(client.post("/v1/customers", json={"display_name": "late"}), 201)["id"]
    rest = list_all(client, "/v1/customers", 3, cursor=second_page["next_cursor"])
    seen = [c["id"] for c in first_page["items"] + second_page["items"] + rest]
    assert seen == [*created, late]
    assert_problem(client.get("/v1/customers", params={"cursor": "not-a-cursor"}), 400, "bad-request")
    assert_problem(client.get("/v1/customers", params={"limit": 0}), 422)
    assert_problem(client.get("/v1/customers", params={"limit": 501}), 422)
