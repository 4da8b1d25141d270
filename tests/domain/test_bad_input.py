"""Bad input writes nothing: every refused request is a 4xx problem+json with a `code`, never a 5xx or HTML.

Each case runs against a fresh tenant holding one seeded conversation (an inbound and an outbound message,
context, a participant). After the refused request, everything the tenant can list is as it was before,
and receipts of a refused batch were neither applied nor held.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from .helpers import (
    Tenant,
    assert_problem,
    inbound,
    ok,
    record_message,
    wa_id,
    wamid,
)

FIVE_MIB = 5 * 1024 * 1024


@dataclass(frozen=True)
class Seeded:
    wa_id: str
    customer: str
    conversation: str
    message: str
    wamid: str
    unknown_wamid: str
    participant: str

    def fill(self, text: str) -> str:
        return text.format(**self.__dict__)


def seed(tenant: Tenant) -> Seeded:
    client = tenant.client
    wa = wa_id()
    first = inbound(client, wa, status=201)
    the_wamid = wamid()
    message = record_message(client, first["conversation_id"], wamid=the_wamid)
    participant = ok(
        client.post(
            f"/v1/conversations/{first['conversation_id']}/participants",
            json={"role": "agent", "participant_ref": "agent-1"},
        ),
        201,
    )
    ok(client.patch(f"/v1/conversations/{first['conversation_id']}/context", json={"values": {"k": 1}}))
    ok(client.patch(f"/v1/customers/{first['customer_id']}/context", json={"values": {"k": 1}}))
    return Seeded(
        wa,
        first["customer_id"],
        first["conversation_id"],
        message["id"],
        the_wamid,
        wamid(),
        participant["id"],
    )


def state(client: httpx.Client, seeded: Seeded) -> dict[str, Any]:
    """Everything the tenant can list."""
    conversation = f"/v1/conversations/{seeded.conversation}"
    paths = [
        "/v1/customers?limit=500",
        "/v1/conversations?limit=500",
        f"/v1/customers/{seeded.customer}",
        f"/v1/customers/{seeded.customer}/context",
        conversation,
        f"{conversation}/messages?limit=500",
        f"{conversation}/history",
        f"{conversation}/participants",
        f"{conversation}/context",
    ]
    return {path: ok(client.get(path)) for path in paths}


def quick_state(client: httpx.Client, seeded: Seeded) -> list[Any]:
    """What a refused create or receipt batch would most likely change, read in one go per case."""
    return [
        ok(client.get("/v1/customers?limit=500")),
        ok(client.get(f"/v1/conversations/{seeded.conversation}/messages?limit=500")),
    ]


def receipt(**fields: Any) -> dict[str, Any]:
    return {"wamid": "{wamid}", "status": "delivered", "at": "2026-01-01T10:00:00Z"} | fields


def batch(bad: dict[str, Any]) -> dict[str, Any]:
    """A batch with valid receipts for a known and an unknown message, and one bad item in the middle."""
    return {
        "receipts": [
            receipt(status="sent"),
            receipt(wamid="{unknown_wamid}", status="read"),
            bad,
            receipt(status="read", at="2026-01-01T10:01:00Z"),
        ]
    }


def inbound_body(**fields: Any) -> dict[str, Any]:
    return {"wa_id": "{wa_id}", "business_number_id": "bn-1", "wamid": "wamid.new-1", "text": "x"} | fields


def new_inbound(**fields: Any) -> dict[str, Any]:
    """An inbound message from a new customer: would create a customer, a conversation and a message."""
    return inbound_body(**({"wa_id": "4915112345678"} | fields))


def message_body(**fields: Any) -> dict[str, Any]:
    return {"direction": "outbound", "wamid": "wamid.new-2", "text": "x"} | fields


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    json: Any = None
    raw: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    status: int | None = None  # None: any 4xx


C = "/v1/conversations/{conversation}"
MALFORMED = b'{"display_name": "x", '

CASES = [
    # Malformed JSON and wrong shapes.
    Case("customer: malformed JSON", "POST", "/v1/customers", raw=MALFORMED, status=400),
    Case("customer: not JSON", "POST", "/v1/customers", raw=b"display_name=x", status=400),
    Case("customer: JSON array", "POST", "/v1/customers", json=[{"display_name": "x"}], status=422),
    Case("customer: empty body", "POST", "/v1/customers", raw=b"", status=422),
    Case("customer: NaN is not JSON", "POST", "/v1/customers", raw=b'{"attributes": {"x": NaN}}'),
    Case("customer: Infinity is not JSON", "POST", "/v1/customers", raw=b'{"attributes": {"x": Infinity}}'),
    Case("customer: wrong type", "POST", "/v1/customers", json={"display_name": 5}, status=422),
    Case("customer: attributes a list", "POST", "/v1/customers", json={"attributes": [1]}, status=422),
    Case("customer: unknown field", "POST", "/v1/customers", json={"name": "x"}, status=422),
    Case("customer: bad language", "POST", "/v1/customers", json={"language": "english!"}, status=422),
    Case(
        "customer: unknown channel",
        "POST",
        "/v1/customers",
        json={"identities": [{"channel": "fax", "external_id": "1"}]},
        status=422,
    ),
    *(
        Case(
            f"customer: phone {value!r}",
            "POST",
            "/v1/customers",
            json={
                "display_name": "x",
                "identities": [
                    {"channel": "email", "external_id": "ok@example.com"},
                    {"channel": "phone", "external_id": value},
                ],
            },
            status=422,
        )
        for value in ("0123456789", "abc", "+1555", "+15551234567", "", "+", "+1 415 555 2671 ext")
    ),
    *(
        Case(
            f"customer: wa_id {value!r}",
            "POST",
            "/v1/customers",
            json={"identities": [{"channel": "whatsapp", "external_id": value}]},
            status=422,
        )
        for value in ("0123456789", "12345", "abc", "1" * 21, "+")
    ),
    Case(
        "customer: bad email",
        "POST",
        "/v1/customers",
        json={"identities": [{"channel": "email", "external_id": "no-at"}]},
        status=422,
    ),
    Case(
        "customer: 21 identities",
        "POST",
        "/v1/customers",
        json={"identities": [{"channel": "email", "external_id": f"u{n}@x.io"} for n in range(21)]},
        status=422,
    ),
    Case(
        "customer patch: bad type", "PATCH", "/v1/customers/{customer}", json={"attributes": "x"}, status=422
    ),
    Case(
        "customer patch: If-Match garbage",
        "PATCH",
        "/v1/customers/{customer}",
        json={"display_name": "y"},
        headers=(("If-Match", "garbage"),),
        status=400,
    ),
    Case(
        "customer patch: stale If-Match",
        "PATCH",
        "/v1/customers/{customer}",
        json={"display_name": "y"},
        headers=(("If-Match", '"999"'),),
        status=412,
    ),
    Case("customer: not a UUID", "PATCH", "/v1/customers/not-a-uuid", json={"display_name": "y"}, status=422),
    Case(
        "identity: phone 0123456789",
        "POST",
        "/v1/customers/{customer}/identities",
        json={"channel": "phone", "external_id": "0123456789"},
        status=422,
    ),
    # Inbound messages.
    Case("inbound: malformed JSON", "POST", "/v1/messages/inbound", raw=b'{"wa_id": ', status=400),
    *(
        Case(
            f"inbound: wa_id {value!r}",
            "POST",
            "/v1/messages/inbound",
            json=new_inbound(wa_id=value),
            status=422,
        )
        for value in ("0123456789", "abc", "12345", "", "1" * 21, "+", "+0123456789", "12 34 56 78")
    ),
    Case(
        "inbound: wa_id a number",
        "POST",
        "/v1/messages/inbound",
        json=new_inbound(wa_id=4915112345678),
        status=422,
    ),
    *(
        Case(
            f"inbound: occurred_at {value!r}",
            "POST",
            "/v1/messages/inbound",
            json=new_inbound(occurred_at=value),
            status=422,
        )
        for value in (
            "2026-01-01T10:00:00",  # naive
            "2026-01-01 10:00:00",
            "yesterday",
            "",
            0,
            -1,
            946684799,  # before 2000-01-01
            4102444800,  # 2100-01-01
            "99999999999",
            1e20,
            True,
            [2026, 1, 1],
        )
    ),
    Case(
        "inbound: epoch with 400 digits",
        "POST",
        "/v1/messages/inbound",
        raw=json.dumps(new_inbound()).replace('"text"', '"occurred_at": ' + "1" * 400 + ', "text"').encode(),
    ),
    Case(
        "inbound: epoch with 30 digits",
        "POST",
        "/v1/messages/inbound",
        raw=json.dumps(new_inbound()).replace('"text"', '"occurred_at": ' + "1" * 30 + ', "text"').encode(),
    ),
    Case(
        "inbound: year 1 east of UTC",
        "POST",
        "/v1/messages/inbound",
        json=new_inbound(occurred_at="0001-01-01T00:00:00+01:00"),
        status=422,
    ),
    Case(
        "inbound: year 9999 west of UTC",
        "POST",
        "/v1/messages/inbound",
        json=new_inbound(occurred_at="9999-12-31T23:59:59-01:00"),
        status=422,
    ),
    Case(
        "inbound: no wamid",
        "POST",
        "/v1/messages/inbound",
        json={"wa_id": "4915112345678", "business_number_id": "b"},
        status=422,
    ),
    Case(
        "inbound: bad wamid", "POST", "/v1/messages/inbound", json=new_inbound(wamid="has space"), status=422
    ),
    Case(
        "inbound: bad business number",
        "POST",
        "/v1/messages/inbound",
        json=new_inbound(business_number_id="no/slash"),
        status=422,
    ),
    Case("inbound: unknown type", "POST", "/v1/messages/inbound", json=new_inbound(type="bogus"), status=422),
    Case(
        "inbound: bad media url",
        "POST",
        "/v1/messages/inbound",
        json=new_inbound(type="image", media={"url": "ftp://x"}),
        status=422,
    ),
    Case(
        "inbound: existing customer, naive time",
        "POST",
        "/v1/messages/inbound",
        json=inbound_body(occurred_at="2026-01-01T10:00:00"),
        status=422,
    ),
    # Messages of a conversation, links.
    Case("message: no id", "POST", C + "/messages", json={"direction": "outbound", "text": "x"}, status=422),
    Case(
        "message: bad direction", "POST", C + "/messages", json=message_body(direction="sideways"), status=422
    ),
    Case(
        "message: naive time",
        "POST",
        C + "/messages",
        json=message_body(occurred_at="2026-01-01T10:00:00"),
        status=422,
    ),
    Case(
        "message: bad sender type",
        "POST",
        C + "/messages",
        json=message_body(sender_type="robot"),
        status=422,
    ),
    Case(
        "link: bad wamid",
        "POST",
        "/v1/messages/{message}/link",
        json={"genesys_message_id": "a b"},
        status=422,
    ),
    Case(
        "link: one bad ID refuses both",
        "POST",
        "/v1/messages/{message}/link",
        json={"wamid": "{unknown_wamid}", "genesys_message_id": "x y"},
        status=422,
    ),
    # Receipts: one bad item refuses the whole batch.
    Case("receipts: unknown status", "POST", "/v1/receipts", json=batch(receipt(status="bogus")), status=422),
    Case(
        "receipts: naive time",
        "POST",
        "/v1/receipts",
        json=batch(receipt(at="2026-01-01T10:00:00")),
        status=422,
    ),
    Case("receipts: epoch out of range", "POST", "/v1/receipts", json=batch(receipt(at=12)), status=422),
    Case(
        "receipts: year 1 east of UTC",
        "POST",
        "/v1/receipts",
        json=batch(receipt(at="0001-01-01T00:30:00+01:00")),
        status=422,
    ),
    Case(
        "receipts: both ids",
        "POST",
        "/v1/receipts",
        json=batch(receipt(genesys_message_id="g-1")),
        status=422,
    ),
    Case(
        "receipts: no id",
        "POST",
        "/v1/receipts",
        json=batch({"status": "read", "at": "2026-01-01T10:00:00Z"}),
        status=422,
    ),
    Case(
        "receipts: error on a read",
        "POST",
        "/v1/receipts",
        json=batch(receipt(status="read", error={"code": "1"})),
        status=422,
    ),
    Case("receipts: bad wamid", "POST", "/v1/receipts", json=batch(receipt(wamid="a b")), status=422),
    Case("receipts: unknown field", "POST", "/v1/receipts", json=batch(receipt(extra=1)), status=422),
    Case("receipts: not a list", "POST", "/v1/receipts", json={"receipts": receipt()}, status=422),
    Case("receipts: empty", "POST", "/v1/receipts", json={"receipts": []}, status=422),
    Case(
        "receipts: 1001",
        "POST",
        "/v1/receipts",
        json={"receipts": [receipt(status="sent")] * 1000 + [receipt()]},
        status=422,
    ),
    Case("receipts: malformed JSON", "POST", "/v1/receipts", raw=b'{"receipts": [{"wamid": "x"', status=400),
    # Conversations.
    Case("transition: unknown state", "POST", C + "/transitions", json={"state": "bogus"}, status=422),
    Case("transition: state in capitals", "POST", C + "/transitions", json={"state": "CLOSED"}, status=422),
    Case(
        "transition: naive at",
        "POST",
        C + "/transitions",
        json={"state": "closed", "at": "2026-01-01T10:00:00"},
        status=422,
    ),
    Case(
        "transition: year 1 east of UTC",
        "POST",
        C + "/transitions",
        json={"state": "closed", "at": "0001-01-01T00:00:00+01:00"},
        status=422,
    ),
    Case(
        "transition: long reason",
        "POST",
        C + "/transitions",
        json={"state": "closed", "reason": "x" * 201},
        status=422,
    ),
    Case(
        "conversation patch: bad genesys id", "PATCH", C, json={"genesys_conversation_id": "a b"}, status=422
    ),
    Case("conversation patch: metadata list", "PATCH", C, json={"metadata": [1]}, status=422),
    Case(
        "conversation patch: If-Match garbage",
        "PATCH",
        C,
        json={"metadata": {"x": 1}},
        headers=(("If-Match", "v1"),),
        status=400,
    ),
    Case(
        "open: unknown customer",
        "POST",
        "/v1/conversations",
        json={"customer_id": "00000000-0000-4000-8000-000000000000", "business_number_id": "bn-2"},
        status=404,
    ),
    Case(
        "open: both references",
        "POST",
        "/v1/conversations",
        json={
            "customer_id": "{customer}",
            "identity": {"channel": "whatsapp", "external_id": "{wa_id}"},
            "business_number_id": "bn-2",
        },
        status=422,
    ),
    Case(
        "open: bad wa_id",
        "POST",
        "/v1/conversations",
        json={"identity": {"channel": "whatsapp", "external_id": "0123"}, "business_number_id": "bn-2"},
        status=422,
    ),
    Case(
        "participant: bad role",
        "POST",
        C + "/participants",
        json={"role": "boss", "participant_ref": "x"},
        status=422,
    ),
    Case(
        "participant: naive joined_at",
        "POST",
        C + "/participants",
        json={"role": "agent", "participant_ref": "x", "joined_at": "2026-01-01T10:00:00"},
        status=422,
    ),
    Case(
        "participant: year 1 east of UTC",
        "POST",
        C + "/participants",
        json={"role": "agent", "participant_ref": "x", "joined_at": "0001-01-01T00:00:00+01:00"},
        status=422,
    ),
    Case(
        "leave: year 1 east of UTC",
        "POST",
        C + "/participants/{participant}/leave",
        json={"left_at": "0001-01-01T00:00:00+01:00"},
        status=422,
    ),
    # Context.
    Case(
        "context: naive at",
        "PATCH",
        C + "/context",
        json={"values": {"k": 2}, "at": "2026-01-01T10:00:00"},
        status=422,
    ),
    Case(
        "context: epoch out of range", "PATCH", C + "/context", json={"values": {"k": 2}, "at": 5}, status=422
    ),
    Case("context: bad key", "PATCH", C + "/context", json={"values": {"k": 2, "a b": 1}}, status=422),
    Case("context: no values", "PATCH", C + "/context", json={"values": {}}, status=422),
    Case(
        "context: 201 keys",
        "PATCH",
        "/v1/customers/{customer}/context",
        json={"values": {f"k{n}": n for n in range(201)}},
        status=422,
    ),
    # Bodies over MAX_BODY_BYTES (4 MiB by default), declared with Content-Length.
    *(
        Case(f"oversize: {method} {path}", method, path, raw=b'{"x": "' + b"x" * FIVE_MIB + b'"}', status=413)
        for method, path in (
            ("POST", "/v1/customers"),
            ("POST", "/v1/messages/inbound"),
            ("POST", "/v1/receipts"),
            ("POST", C + "/messages"),
            ("PATCH", C + "/context"),
            ("PATCH", "/v1/customers/{customer}"),
        )
    ),
]


def fill(value: Any, seeded: Seeded) -> Any:
    if isinstance(value, str):
        return seeded.fill(value) if "{" in value and "}" in value and not value.startswith('{"') else value
    if isinstance(value, list):
        return [fill(v, seeded) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, seeded) for k, v in value.items()}
    return value


def send(client: httpx.Client, case: Case, seeded: Seeded) -> httpx.Response:
    headers = dict(case.headers)
    if case.raw is not None:
        raw = case.raw
        if b"{wa_id}" in raw:
            raw = raw.replace(b"{wa_id}", seeded.wa_id.encode())
        return client.request(
            case.method,
            seeded.fill(case.path),
            content=raw,
            headers={"Content-Type": "application/json", **headers},
        )
    return client.request(case.method, seeded.fill(case.path), json=fill(case.json, seeded), headers=headers)


@pytest.fixture
def seeded(tenant: Tenant) -> Seeded:
    return seed(tenant)


def family(case: Case) -> str:
    return case.name.split(":")[0].split(" ")[0]


FAMILIES = sorted({family(c) for c in CASES})


def problem_mismatch(response: httpx.Response, status: int | None) -> str | None:
    """Why the response is not the expected problem, or None when it is."""
    content_type = response.headers.get("content-type", "")
    if not content_type.startswith("application/problem+json"):
        return f"{response.status_code} {content_type}: {response.text[:150]}"
    body = response.json()
    if not isinstance(body.get("code"), str) or body.get("status") != response.status_code:
        return f"no code/status: {body}"
    if status is None and not 400 <= response.status_code < 500:
        return f"{response.status_code} {body.get('code')}: {body.get('detail')}"
    if status is not None and response.status_code != status:
        return f"{response.status_code} (expected {status}) {body.get('code')}: {body.get('detail')}"
    if response.status_code == 422 and not body.get("errors"):
        return f"422 without field errors: {body}"
    return None


@pytest.mark.parametrize("group", FAMILIES)
def test_refused_requests_write_nothing(tenant: Tenant, seeded: Seeded, group: str) -> None:
    """Every case of a family against one seeded tenant; each must be refused and change nothing."""
    client = tenant.client
    before = state(client, seeded)
    failures = []
    quick_before = quick_state(client, seeded)
    for case in (c for c in CASES if family(c) == group):
        # One connection per case: a 5xx closes the connection it was sent on.
        with tenant.new_client(Authorization=f"Bearer {tenant.key}") as own:
            response = send(own, case, seeded)
        wrong = problem_mismatch(response, case.status)
        if wrong is not None:
            failures.append(f"{case.name}: {wrong}")
        quick_after = quick_state(client, seeded)
        if quick_after != quick_before:
            failures.append(f"{case.name}: wrote something")
            quick_before = quick_after
    after = state(client, seeded)
    if after != before:
        failures.append(f"changed: {sorted(path for path in after if after[path] != before[path])}")
    # Nothing was held for the unknown wamid of a refused receipt batch: a message recorded with it now
    # has no receipt applied.
    later = record_message(client, seeded.conversation, wamid=seeded.unknown_wamid)
    assert (later["status"], later["read_at"]) == ("queued", None)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/customers"),
        ("POST", "/v1/messages/inbound"),
        ("POST", "/v1/receipts"),
        ("PATCH", C + "/context"),
    ],
)
def test_oversize_body_while_streaming_is_413(tenant: Tenant, seeded: Seeded, method: str, path: str) -> None:
    """Without Content-Length (chunked), the limit applies while the body is read."""
    body = b'{"x": "' + b"x" * FIVE_MIB + b'"}'

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 256 * 1024):
            yield body[start : start + 256 * 1024]

    before = state(tenant.client, seeded)
    response = tenant.client.request(
        method, seeded.fill(path), content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 413, "payload-too-large")
    assert state(tenant.client, seeded) == before


def test_a_fresh_tenant_stays_empty_after_refused_creates(tenant: Tenant) -> None:
    client = tenant.client
    wa = wa_id()
    for body in (
        {"wa_id": wa, "business_number_id": "bn", "wamid": wamid(), "occurred_at": "2026-01-01T10:00:00"},
        {"wa_id": wa, "business_number_id": "bn", "wamid": wamid(), "occurred_at": 12},
        {"wa_id": "0" + wa, "business_number_id": "bn", "wamid": wamid()},
        {"wa_id": wa, "business_number_id": "bn", "wamid": wamid(), "type": "bogus"},
    ):
        assert_problem(client.post("/v1/messages/inbound", json=body), 422)
    for identities in (
        [{"channel": "phone", "external_id": "0123456789"}],
        [{"channel": "whatsapp", "external_id": wa}, {"channel": "phone", "external_id": "abc"}],
        [{"channel": "phone", "external_id": "+1555"}],
    ):
        assert_problem(
            client.post("/v1/customers", json={"display_name": "x", "identities": identities}), 422
        )
    assert_problem(
        client.post("/v1/customers", content=b"{", headers={"Content-Type": "application/json"}),
        400,
        "bad-request",
    )
    assert_problem(
        client.post(
            "/v1/receipts", json={"receipts": [{"wamid": wamid(), "status": "bogus", "at": 1767261600}]}
        ),
        422,
    )
    assert ok(client.get("/v1/customers")) == {"items": [], "next_cursor": None}
    assert ok(client.get("/v1/conversations")) == {"items": [], "next_cursor": None}
    assert_problem(client.get(f"/v1/customers/by-identity/whatsapp/{wa}"), 404)


def cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode().rstrip("=")


BAD_QUERIES: list[tuple[str, dict[str, Any]]] = [
    ("/v1/customers", {"cursor": cursor("2026-01-01T00:00:00+00:00", 5)}),
    ("/v1/customers", {"cursor": cursor("2026-01-01T00:00:00+00:00", None)}),
    (
        "/v1/customers",
        {"cursor": cursor("0001-01-01T00:00:00+05:00", "6c1a3f0e-64a5-4a43-9c6f-4ff2b7a1d8d1")},
    ),
    ("/v1/customers", {"cursor": cursor("2026-01-01T00:00:00", "6c1a3f0e-64a5-4a43-9c6f-4ff2b7a1d8d1")}),
    ("/v1/customers", {"cursor": cursor(1, 2, 3)}),
    ("/v1/customers", {"cursor": "%%%"}),
    ("/v1/conversations", {"cursor": cursor("2026-01-01T00:00:00+00:00", ["x"])}),
    ("/v1/conversations", {"started_before": "2026-01-01T00:00:00"}),
    # PostgreSQL text cannot hold NUL: refused in the URL on every backend.
    ("/v1/messages/by-wamid/w%00x", {}),
    ("/v1/conversations/by-genesys-id/g%00", {}),
    ("/v1/customers/by-identity/email/a%00@example.com", {}),
    ("/v1/conversations", {"agent_id": "a\x00b"}),
    ("/v1/conversations", {"state": "bogus"}),
    ("/v1/conversations", {"customer_id": "nope"}),
    ("/v1/conversations", {"business_number_id": "a b"}),
    ("/v1/conversations", {"limit": "many"}),
    (
        C + "/messages",
        {"cursor": cursor("0001-01-01T00:00:00+05:00", "6c1a3f0e-64a5-4a43-9c6f-4ff2b7a1d8d1")},
    ),
    (C + "/messages", {"cursor": cursor("2026-01-01T00:00:00+00:00", 7)}),
]


def test_bad_queries_are_4xx(tenant: Tenant, seeded: Seeded) -> None:
    failures = []
    for path, params in BAD_QUERIES:
        with tenant.new_client(Authorization=f"Bearer {tenant.key}") as own:
            response = own.get(seeded.fill(path), params=params)
        wrong = problem_mismatch(response, None)
        if wrong is not None:
            failures.append(f"GET {path} {params}: {wrong}")
    assert not failures, "\n".join(failures)


def test_time_filters_beyond_any_stored_time_mean_no_bound(tenant: Tenant, seeded: Seeded) -> None:
    """Year 1 east of UTC cannot be converted to UTC; as a filter it still means "since forever"."""
    everything = tenant.client.get("/v1/conversations").json()["items"]
    assert everything
    for params, expected in (
        ({"started_after": "0001-01-01T00:00:00+01:00"}, everything),
        ({"started_before": "9999-12-31T23:59:59-01:00"}, everything),
        ({"started_after": "9999-12-31T23:59:59-01:00"}, []),
        ({"started_before": "0001-01-01T00:00:00+01:00"}, []),
    ):
        response = tenant.client.get("/v1/conversations", params=params)
        assert response.status_code == 200, (params, response.text)
        assert response.json()["items"] == expected, params


UNUSUAL: list[tuple[str, str, dict[str, Any], str]] = [
    ("POST", "/v1/customers", {"display_name": "a\u0000b"}, "display_name"),
    ("POST", "/v1/customers", {"attributes": {"k": "a\u0000b"}}, "attributes"),
    ("POST", "/v1/customers", {"attributes": {"k\u0000": 1}}, "attributes"),
    ("POST", "/v1/customers", {"attributes": {"big": 2**62, "deep": [[[[[[[[[[{}]]]]]]]]]]}}, "attributes"),
    ("POST", "/v1/customers", {"display_name": "\U0001f600 \u202e \ufeff"}, "display_name"),
    ("POST", "/v1/customers", {"display_name": "half a pair \ud83d"}, "display_name"),
    ("POST", "/v1/customers", {"attributes": {"account": 2**64 + 1}}, "attributes"),
    ("POST", "/v1/customers", {"attributes": {"account": -(2**63) - 1}}, "attributes"),
    ("POST", "/v1/customers", {"attributes": {"int64": [2**63 - 1, -(2**63)]}}, "attributes"),
    ("POST", "/v1/customers", {"attributes": {"id": "1234567890123456789012345"}}, "attributes"),
    ("POST", C + "/messages", {"direction": "outbound", "wamid": "w.nul", "text": "x\u0000y"}, "text"),
    (
        "POST",
        C + "/messages",
        {"direction": "outbound", "wamid": "w.meta", "metadata": {"v": "\u0000"}},
        "metadata",
    ),
    ("PATCH", C + "/context", {"values": {"k": "a\u0000b"}}, "values"),
]


def test_unusual_but_valid_json_is_stored_or_refused_never_500(tenant: Tenant, seeded: Seeded) -> None:
    """Valid JSON a database may dislike (NUL characters, big numbers): stored as sent, or a clean 4xx."""
    client = tenant.client
    failures = []
    for method, path, body, field in UNUSUAL:
        before = state(client, seeded)
        with tenant.new_client(Authorization=f"Bearer {tenant.key}") as own:
            # json.dumps escapes what UTF-8 cannot carry (a lone surrogate), as a real client would.
            content = json.dumps(body)
            headers = {"Content-Type": "application/json"}
            response = own.request(method, seeded.fill(path), content=content, headers=headers)
        name = f"{method} {path} {body!r}"
        if response.status_code >= 300:
            wrong = problem_mismatch(response, None)
            if wrong is not None:
                failures.append(f"{name}: {wrong}")
            if state(client, seeded) != before:
                failures.append(f"{name}: refused but wrote something")
            continue
        stored = response.json()[field]
        sent = body[field]
        if (stored if field != "values" else {k: stored.get(k) for k in sent}) != sent:
            failures.append(f"{name}: stored {stored!r}")
    assert not failures, "\n".join(failures)
