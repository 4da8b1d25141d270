"""Analytics over real HTTP, on both backends, against answers computed by hand.

The fixture (all times UTC, Monday 2026-11-02; "alice" and "bob" are agents, "helper" a bot):

A  customer 1, number A   09:00:00 in, 09:00:30 in, 09:01 alice joins, 09:02 alice (delivered 09:02:05,
                          read 09:03), 09:10 in, 09:13 helper (failed 131047), 09:20 alice (read 09:25,
                          no delivered receipt), 09:30 alice leaves, 09:30 closed.
B  customer 2, number A   10:00 in, nobody answers, 11:00 expired.
C  customer 1, number A   12:00 in (2.5 h after A closed: a reopening); bob joins Tue 12:59, answers
                          Tue 13:00 (25 h later: the reply window lapsed Tue 12:00); still open.
D  customer 3, number B   09:05 in, 09:06 alice, 09:07 closed.

By hand, 2026-11-02 to 2026-11-04 by day:
- started 4 (Mon); closed 2 (A, D); expired 1 (B); reopened 1 (C); unanswered 1 (B)
- windows lapsed 2, both Tue: B's at 10:00 (never answered), C's at 12:00 (answered late)
- first responses: A 120 s (alice), D 60 s (alice), C 90,000 s (bob, Tue) -> 3, average 30,060 s
- replies: A 120 s (alice) and 180 s (helper), D 60 s, C 90,000 s -> 4, average 22,590 s
- resolution: A 1,800 s, D 120 s -> average 960 s; duration adds B's 3,600 s -> 1,840 s
- messages per conversation: (6 + 1 + 2 + 2) / 4 = 2.75
- messages: 6 in, 5 out; delivered 2 (A's 09:02, and 09:20 whose read implies it), read 2, failed 1;
  delivery time known for one: 5 s; read times 60 s and 300 s -> 180 s
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from harness import Api, eventually

from .helpers import (
    Tenant,
    assert_problem,
    business_number,
    inbound,
    ok,
    record_message,
    wa_id,
    wamid,
)

MONDAY = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
RANGE = {"from": "2026-11-02", "to": "2026-11-04", "tz": "UTC"}


def at(day: int, hour: int, minute: int, second: int = 0) -> str:
    return (MONDAY + dt.timedelta(days=day, hours=hour, minutes=minute, seconds=second)).isoformat()


def _transition(client: httpx.Client, conversation_id: str, state: str, when: str) -> None:
    ok(client.post(f"/v1/conversations/{conversation_id}/transitions", json={"state": state, "at": when}))


def _join(client: httpx.Client, conversation_id: str, agent: str, when: str) -> str:
    body = {"role": "agent", "participant_ref": agent, "joined_at": when}
    joined: str = ok(client.post(f"/v1/conversations/{conversation_id}/participants", json=body), 201)["id"]
    return joined


def _send(client: httpx.Client, conversation_id: str, sender: str, who: str, when: str) -> str:
    sent = wamid()
    record_message(
        client, conversation_id, wamid=sent, sender_type=sender, sender_id=who, occurred_at=when, text="ok"
    )
    return sent


def _receipts(client: httpx.Client, *receipts: dict[str, Any]) -> None:
    ok(client.post("/v1/receipts", json={"receipts": list(receipts)}))


def build_fixture(client: httpx.Client) -> dict[str, str]:
    """The conversations of the module docstring; returns their business numbers."""
    number_a, number_b = business_number(), business_number()
    customer_1, customer_2, customer_3 = wa_id(), wa_id(), wa_id()

    a = inbound(client, customer_1, number_a, occurred_at=at(0, 9, 0))["conversation_id"]
    inbound(client, customer_1, number_a, occurred_at=at(0, 9, 0, 30))
    alice_in_a = _join(client, a, "u-alice", at(0, 9, 1))
    first = _send(client, a, "agent", "u-alice", at(0, 9, 2))
    inbound(client, customer_1, number_a, occurred_at=at(0, 9, 10))
    bot = _send(client, a, "bot", "helper", at(0, 9, 13))
    late = _send(client, a, "agent", "u-alice", at(0, 9, 20))
    # Receipts out of order, one twice: the figures must not care.
    _receipts(
        client,
        {"wamid": late, "status": "read", "at": at(0, 9, 25)},
        {"wamid": first, "status": "read", "at": at(0, 9, 3)},
        {"wamid": bot, "status": "failed", "at": at(0, 9, 14), "error": {"code": "131047"}},
        {"wamid": first, "status": "delivered", "at": at(0, 9, 2, 5)},
        {"wamid": first, "status": "delivered", "at": at(0, 9, 2, 5)},
    )
    ok(client.post(f"/v1/conversations/{a}/participants/{alice_in_a}/leave", json={"left_at": at(0, 9, 30)}))
    _transition(client, a, "closed", at(0, 9, 30))

    b = inbound(client, customer_2, number_a, occurred_at=at(0, 10, 0))["conversation_id"]
    _transition(client, b, "expired", at(0, 11, 0))

    c = inbound(client, customer_1, number_a, occurred_at=at(0, 12, 0))["conversation_id"]
    assert c != a
    _join(client, c, "u-bob", at(1, 12, 59))
    _send(client, c, "agent", "u-bob", at(1, 13, 0))

    d = inbound(client, customer_3, number_b, occurred_at=at(0, 9, 5))["conversation_id"]
    _send(client, d, "agent", "u-alice", at(0, 9, 6))
    _transition(client, d, "closed", at(0, 9, 7))
    return {"a": number_a, "b": number_b}


@pytest.fixture
def fixture_tenant(tenant: Tenant) -> tuple[Tenant, dict[str, str]]:
    return tenant, build_fixture(tenant.client)


def report(client: httpx.Client, name: str, **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = ok(client.get(f"/v1/analytics/{name}", params={**RANGE, **params}))
    assert body["freshness"] == {"complete": True, "rebuilding": False, "events_behind": 0}
    return body


def test_conversation_kpis_by_day(fixture_tenant: tuple[Tenant, dict[str, str]]) -> None:
    tenant, _ = fixture_tenant
    body = report(tenant.client, "conversations")
    assert body["scope"]["tenant_id"] == tenant.id
    assert body["timezone"] == "UTC"
    assert body["from"] == "2026-11-02T00:00:00Z" or body["from"].startswith("2026-11-02T00:00:00")
    assert body["totals"] == {
        "started": 4,
        "closed": 2,
        "expired": 1,
        "reopened": 1,
        "unanswered": 1,
        "windows_lapsed": 2,
        "first_response_count": 3,
        "first_response_avg_seconds": 30060.0,
        "reply_count": 4,
        "reply_avg_seconds": 22590.0,
        "resolution_count": 2,
        "resolution_avg_seconds": 960.0,
        "duration_avg_seconds": 1840.0,
        "messages_per_conversation": 2.75,
    }
    monday, tuesday = body["series"]
    assert monday["period"].startswith("2026-11-02T00:00:00")
    assert (monday["started"], monday["windows_lapsed"], monday["first_response_count"]) == (4, 0, 2)
    assert (monday["first_response_avg_seconds"], monday["reply_count"], monday["reply_avg_seconds"]) == (
        90.0,
        3,
        120.0,
    )
    assert tuesday["period"].startswith("2026-11-03T00:00:00")
    assert (tuesday["started"], tuesday["windows_lapsed"], tuesday["first_response_count"]) == (0, 2, 1)
    assert tuesday["messages_per_conversation"] is None  # nothing started that day
    assert body["now"] == {"open": 1, "pending": 1, "active": 0, "waiting": 0, "error": 0}


def test_filters_by_business_number_and_agent(fixture_tenant: tuple[Tenant, dict[str, str]]) -> None:
    tenant, numbers = fixture_tenant
    only_b = report(tenant.client, "conversations", business_number=numbers["b"])["totals"]
    assert (only_b["started"], only_b["closed"], only_b["first_response_avg_seconds"]) == (1, 1, 60.0)
    assert only_b["resolution_avg_seconds"] == 120.0

    alice = report(tenant.client, "conversations", agent="u-alice")
    assert alice["filters"] == {"agent": "u-alice", "business_number": None}
    totals = alice["totals"]
    # A and D are alice's; the bot's reply in A is the bot's, not hers.
    assert (totals["started"], totals["closed"], totals["reply_count"], totals["reply_avg_seconds"]) == (
        2,
        2,
        2,
        90.0,
    )
    nobody = report(tenant.client, "conversations", agent="u-nobody")["totals"]
    assert nobody["started"] == 0
    assert nobody["first_response_avg_seconds"] is None


def test_message_delivery_figures(fixture_tenant: tuple[Tenant, dict[str, str]]) -> None:
    tenant, _ = fixture_tenant
    body = report(tenant.client, "messages")
    assert body["totals"] == {
        "inbound": 6,
        "outbound": 5,
        "delivered": 2,
        "read": 2,
        "failed": 1,
        "delivered_rate": 0.4,
        "read_rate": 0.4,
        "failed_rate": 0.2,
        "deliver_avg_seconds": 5.0,
        "read_avg_seconds": 180.0,
    }
    assert body["failure_codes"] == [{"code": "131047", "count": 1}]
    assert [row["outbound"] for row in body["series"]] == [4, 1]


def test_customers_and_busiest_hours(fixture_tenant: tuple[Tenant, dict[str, str]]) -> None:
    tenant, _ = fixture_tenant
    body = report(tenant.client, "customers")
    assert body["totals"] == {
        "customers": 3,
        "new": 3,
        "returning": 0,
        "conversations": 4,
        "conversations_per_customer": 1.333,
    }
    assert body["channels"] == [{"channel": "whatsapp", "customers": 3, "conversations": 4}]
    hours = {row["hour"]: row["inbound"] for row in body["busiest_hours"] if row["inbound"]}
    assert hours == {9: 4, 10: 1, 12: 1}
    assert [row["inbound"] for row in body["busiest_weekdays"]] == [6, 0, 0, 0, 0, 0, 0]

    # Tuesday's late answer to C started nothing: no customer that day.
    tuesday = report(tenant.client, "customers", **{"from": "2026-11-03", "to": "2026-11-04"})["totals"]
    assert (tuesday["customers"], tuesday["conversations_per_customer"]) == (0, None)


def test_returning_customers(tenant: Tenant) -> None:
    number, customer = business_number(), wa_id()
    first = inbound(tenant.client, customer, number, occurred_at=at(0, 8, 0))["conversation_id"]
    _transition(tenant.client, first, "closed", at(0, 8, 5))
    inbound(tenant.client, customer, number, occurred_at=at(3, 8, 0))
    inbound(tenant.client, wa_id(), number, occurred_at=at(3, 9, 0))
    week = report(tenant.client, "customers", **{"from": "2026-11-05", "to": "2026-11-06"})["totals"]
    assert (week["customers"], week["new"], week["returning"]) == (2, 1, 1)
    # Four days after the close: not a reopening.
    assert (
        report(tenant.client, "conversations", **{"from": "2026-11-05", "to": "2026-11-06"})["totals"][
            "reopened"
        ]
        == 0
    )


def test_agent_performance(fixture_tenant: tuple[Tenant, dict[str, str]]) -> None:
    tenant, _ = fixture_tenant
    agents = {row["agent"]: row for row in report(tenant.client, "agents")["agents"]}
    assert set(agents) == {"u-alice", "u-bob"}
    assert agents["u-alice"] == {
        "agent": "u-alice",
        "conversations_handled": 2,
        "first_response_count": 2,
        "first_response_avg_seconds": 90.0,
        "reply_count": 2,
        "reply_avg_seconds": 90.0,
        "messages_sent": 3,
        "handle_count": 1,
        "handle_avg_seconds": 1740.0,
        "concurrent_avg": round(1740 / 172800, 3),
        "concurrent_peak": 1,
    }
    bob = agents["u-bob"]
    assert (bob["conversations_handled"], bob["first_response_avg_seconds"], bob["messages_sent"]) == (
        1,
        90000.0,
        1,
    )
    # Still in C: no finished stint; in it from Tue 12:59 to the end of the window.
    assert (bob["handle_count"], bob["handle_avg_seconds"], bob["concurrent_peak"]) == (0, None, 1)
    assert bob["concurrent_avg"] == round((11 * 3600 + 60) / 172800, 3)


def test_time_zone_with_a_half_hour_offset(fixture_tenant: tuple[Tenant, dict[str, str]]) -> None:
    """Asia/Kolkata is UTC+05:30: its hours start at half past in UTC."""
    tenant, _ = fixture_tenant
    body = report(
        tenant.client,
        "conversations",
        granularity="hour",
        tz="Asia/Kolkata",
        **{"from": "2026-11-02T14:00:00+05:30", "to": "2026-11-02T16:00:00+05:30"},
    )
    assert body["timezone"] == "Asia/Kolkata"
    assert [(row["period"], row["started"]) for row in body["series"]] == [
        ("2026-11-02T14:00:00+05:30", 2),  # A 09:00Z and D 09:05Z
        ("2026-11-02T15:00:00+05:30", 1),  # B 10:00Z
    ]


def test_tenant_time_zone_is_the_default(api: Api, tenant: Tenant) -> None:
    ok(
        api.admin(
            "PATCH", f"/v1/admin/tenants/{tenant.id}", json={"settings": {"timezone": "America/New_York"}}
        )
    )
    inbound(tenant.client, wa_id(), business_number(), occurred_at=at(0, 3, 0))  # Sun 22:00 in New York
    body = ok(
        tenant.client.get("/v1/analytics/conversations", params={"from": "2026-11-01", "to": "2026-11-03"})
    )
    assert body["timezone"] == "America/New_York"
    assert [(row["period"][:10], row["started"]) for row in body["series"]] == [
        ("2026-11-01", 1),
        ("2026-11-02", 0),
    ]


def test_csv_export(fixture_tenant: tuple[Tenant, dict[str, str]]) -> None:
    tenant, _ = fixture_tenant
    response = tenant.client.get("/v1/analytics/conversations", params={**RANGE, "format": "csv"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [(row["period"][:10], row["started"], row["windows_lapsed"]) for row in rows] == [
        ("2026-11-02", "4", "0"),
        ("2026-11-03", "0", "2"),
    ]
    agents = tenant.client.get("/v1/analytics/agents", params={**RANGE, "format": "csv"})
    assert {row["agent"] for row in csv.DictReader(io.StringIO(agents.text))} == {"u-alice", "u-bob"}


def test_tenants_see_only_their_own_figures(
    fixture_tenant: tuple[Tenant, dict[str, str]], other_tenant: Tenant
) -> None:
    body = report(other_tenant.client, "conversations")
    assert body["totals"]["started"] == 0
    assert report(other_tenant.client, "agents")["agents"] == []


def test_organization_roll_up(
    api: Api, fixture_tenant: tuple[Tenant, dict[str, str]], make_tenant: Callable[[], Tenant]
) -> None:
    tenant, _ = fixture_tenant
    organization = ok(api.admin("GET", f"/v1/admin/tenants/{tenant.id}"))["organization_id"]
    sibling_id = f"{tenant.id}-b"
    api.admin(
        "POST", "/v1/admin/tenants", json={"id": sibling_id, "organization_id": organization, "name": "B"}
    )
    key = api.admin("POST", "/v1/admin/keys", json={"kind": "tenant", "name": "b", "tenant_id": sibling_id})
    with httpx.Client(base_url=api.base_url, headers={"Authorization": f"Bearer {key.json()['key']}"}) as sib:
        inbound(sib, wa_id(), business_number(), occurred_at=at(0, 9, 0))
    make_tenant()  # another organization's tenant stays out

    params = {**RANGE, "organization": organization}
    rolled = ok(api.admin("GET", "/v1/analytics/conversations", params=params))
    assert rolled["scope"]["organization_id"] == organization
    assert sorted(rolled["scope"]["tenant_ids"]) == sorted([tenant.id, sibling_id])
    assert rolled["totals"]["started"] == 5
    customers = ok(api.admin("GET", "/v1/analytics/customers", params=params))["totals"]
    assert customers["customers"] == 4

    refused = tenant.client.get("/v1/analytics/conversations", params=params)
    assert_problem(refused, 403)
    unknown = {"organization": "no-such-org"}
    assert_problem(api.request("GET", "/v1/analytics/conversations", key=api.admin_key, params=unknown), 404)


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"tz": "Mars/Olympus"}, 400),
        ({"from": "2026-11-05", "to": "2026-11-02"}, 400),
        ({"from": "2026-01-01", "to": "2026-03-01", "granularity": "hour"}, 400),
        ({"from": "yesterday"}, 400),
        ({"from": "2026-11-02T10:00:00"}, 400),  # no zone
        ({"from": "1900-01-01"}, 400),
        ({"granularity": "minute"}, 422),
        ({"format": "xml"}, 422),
    ],
)
def test_bad_parameters_get_a_clear_error(tenant: Tenant, params: dict[str, str], status: int) -> None:
    assert_problem(tenant.client.get("/v1/analytics/conversations", params=params), status)


def test_default_window_is_the_last_seven_days(tenant: Tenant) -> None:
    inbound(tenant.client, wa_id(), business_number())
    body = ok(tenant.client.get("/v1/analytics/conversations"))
    assert body["granularity"] == "day"
    assert len(body["series"]) == 7
    assert body["series"][-1]["started"] == 1
    assert body["totals"]["started"] == 1


# The projection itself


REPORTS = ("conversations", "messages", "customers", "agents")


def cli(api: Api, *args: str) -> str:
    done = api.server.cli(*args)
    assert done.returncode == 0, (args, done.stderr[-2000:])
    return done.stdout


def test_a_rebuild_from_the_tables_gives_what_the_events_built(
    api: Api, fixture_tenant: tuple[Tenant, dict[str, str]]
) -> None:
    tenant, _ = fixture_tenant
    built = {name: report(tenant.client, name) for name in REPORTS}
    cli(api, "analytics", "rebuild", "--tenant", tenant.id)
    assert {name: report(tenant.client, name) for name in REPORTS} == built


def test_archived_conversations_stay_in_the_figures(
    api: Api, fixture_tenant: tuple[Tenant, dict[str, str]]
) -> None:
    tenant, _ = fixture_tenant
    built = {name: report(tenant.client, name) for name in REPORTS}
    policy = {"settings": {"retention": {"closed_conversation_days": 1}}}
    ok(api.admin("PATCH", f"/v1/admin/tenants/{tenant.id}", json=policy))
    cli(api, "retention", "run", "--tenant", tenant.id)
    listed = ok(tenant.client.get("/v1/conversations", params={"limit": 50}))["items"]
    assert len(listed) == 1  # A, B and D were archived: only C is left in the live tables
    assert {name: report(tenant.client, name) for name in REPORTS} == built
    cli(api, "analytics", "rebuild", "--tenant", tenant.id)
    assert {name: report(tenant.client, name) for name in REPORTS} == built


def test_the_servers_keep_the_projection_current_by_themselves(api: Api, tenant: Tenant) -> None:
    inbound(tenant.client, wa_id(), business_number())

    def complete() -> bool:
        [status] = json.loads(cli(api, "analytics", "status", "--tenant", tenant.id, "--json"))
        return bool(status["complete"])

    assert eventually(complete, timeout=30)  # as the relay numbers the events, no report asked


def test_concurrent_load_and_handle_time(tenant: Tenant) -> None:
    """carol: X 10:00-10:30, Y 10:10-10:40, Z 10:30-10:50. At most two at once (leaving X and joining Z
    at 10:30 do not overlap); 4,800 s in conversations over a day; three stints averaging 1,600 s."""
    client = tenant.client
    stints = [((0, 10, 0), (0, 10, 30)), ((0, 10, 10), (0, 10, 40)), ((0, 10, 30), (0, 10, 50))]
    for joined, left in stints:
        conversation = inbound(client, wa_id(), business_number(), occurred_at=at(0, 9, 59))[
            "conversation_id"
        ]
        participant = _join(client, conversation, "u-carol", at(*joined))
        ok(
            client.post(
                f"/v1/conversations/{conversation}/participants/{participant}/leave",
                json={"left_at": at(*left)},
            )
        )
    day = {"from": "2026-11-02", "to": "2026-11-03", "tz": "UTC"}
    [carol] = report(client, "agents", **day)["agents"]
    assert (carol["agent"], carol["conversations_handled"], carol["concurrent_peak"]) == ("u-carol", 3, 2)
    assert (carol["handle_count"], carol["handle_avg_seconds"]) == (3, 1600.0)
    assert carol["concurrent_avg"] == round(4800 / 86400, 3)
    # Only the part inside the window counts: 10:30 to 10:45 holds 0 + 10 + 15 minutes of stints (X left
    # as it began), and only Y ended inside it.
    quarter = {"from": "2026-11-02T10:30:00Z", "to": "2026-11-02T10:45:00Z", "tz": "UTC"}
    [carol] = report(client, "agents", granularity="hour", **quarter)["agents"]
    assert carol["concurrent_avg"] == round((0 + 10 + 15) / 15, 3)
    assert (carol["handle_count"], carol["handle_avg_seconds"], carol["concurrent_peak"]) == (1, 1800.0, 2)


def test_customers_by_day_in_the_tenants_zone(fixture_tenant: tuple[Tenant, dict[str, str]]) -> None:
    """In Pacific/Kiritimati (UTC+14) Monday 09:00-12:00 UTC is Monday 23:00 to Tuesday 02:00 there: A and D
    (09:00, 09:05 UTC) fall on its Monday, B (10:00) and C (12:00) on its Tuesday. Customer 1 is new with A,
    back with C; customer 2 is new with B."""
    tenant, _ = fixture_tenant
    body = report(
        tenant.client, "customers", tz="Pacific/Kiritimati", **{"from": "2026-11-02", "to": "2026-11-04"}
    )
    assert [
        (row["period"], row["customers"], row["new"], row["conversations"]) for row in body["series"]
    ] == [
        ("2026-11-02T00:00:00+14:00", 2, 2, 2),
        ("2026-11-03T00:00:00+14:00", 2, 1, 2),
    ]
