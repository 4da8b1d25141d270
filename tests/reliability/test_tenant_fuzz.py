"""Tenant-ID fuzzing and header injection in X-Tenant-ID (issue 8, "Hostile input").

Two tenants, A and B, each with a customer, a conversation and a message. For generated X-Tenant-ID values
(hypothesis: mutations of both IDs: case, padding, wildcards, separators, look-alikes, percent-encoding,
both joined) sent with A's tenant key, with a service key and through the old API's `?tenantId=` and body
`tenantId`, every answer is either a 4xx problem or acts for exactly the tenant the key may act for and the
header names; no read shows B's data to A's key, and no write lands in a tenant other than the one named,
checked afterwards by reading through each owner. tests/domain/test_isolation.py has the fixed cases
(another tenant's IDs, invalid forms, keys of each kind); this adds the generated ones and the
header-level tricks.
"""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import Api, Tenant

PROBLEM_JSON = "application/problem+json"


@dataclass
class Seeded:
    tenant: Tenant
    customer_id: str
    conversation_id: str
    wamid: str
    wa_id: str


def seed(api: Api, tenant: Tenant, wa_id: str) -> Seeded:
    wamid = f"wamid.fuzz{uuid.uuid4().hex}"
    body = {"wa_id": wa_id, "business_number_id": "bn-fuzz", "wamid": wamid, "text": "secret of " + tenant.id}
    created = api.post("/v1/messages/inbound", key=tenant.key, json=body)
    assert created.status_code == 201, created.text
    data = created.json()
    return Seeded(tenant, data["customer_id"], data["conversation_id"], wamid, wa_id)


def customers_of(api: Api, tenant: Tenant) -> list[dict[str, Any]]:
    response = api.get("/v1/customers", key=tenant.key, params={"limit": 200})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def assert_refusal(response: httpx.Response) -> None:
    """A 4xx problem+json (429 counts: a rate limit is a documented refusal)."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.headers.get("content-type", "").startswith(PROBLEM_JSON), response.text[:300]
    assert response.json()["status"] == response.status_code


def acted_for(api: Api, key: str, headers: dict[str, str]) -> str | None:
    """The tenant GET /v1/tenant acts for with these headers, or None when refused (checked to be 4xx)."""
    response = api.get("/v1/tenant", key=key, headers=headers)
    if response.status_code == 200:
        tenant_id: str = response.json()["id"]
        return tenant_id
    assert_refusal(response)
    return None


@pytest.fixture
def two_tenants(api: Api) -> tuple[Seeded, Seeded]:
    a, b = api.new_tenant("fuzz A"), api.new_tenant("fuzz B")
    # The same WhatsApp ID in both: a lookup leaking across tenants would find the other's.
    return seed(api, a, "491511234567"), seed(api, b, "491511234567")


@pytest.fixture
def service_key(api: Api) -> str:
    created = api.admin("POST", "/v1/admin/keys", json={"kind": "service", "name": "tenant fuzz"}).json()
    key: str = created["key"]
    return key


def mutations(a: str, b: str) -> st.SearchStrategy[str]:
    """Tenant IDs near A's and B's: what a confused or hostile caller might send."""
    base = st.sampled_from([a, b])
    # Cyrillic te, ie, a, o and the Unicode hyphen: each looks like the ASCII letter it replaces.
    lookalike = str.maketrans({"t": "\u0442", "e": "\u0435", "a": "\u0430", "o": "\u043e", "-": "\u2010"})
    return st.one_of(
        base,
        base.map(str.upper),
        base.map(lambda s: s.translate(lookalike)),
        base.map(lambda s: s.replace("-", "_")),
        base.map(lambda s: s[:-1] + "%"),
        base.map(lambda s: s[:-1] + "_"),
        base.map(lambda s: s[: len(s) // 2] + "*"),
        base.map(lambda s: s + "%00"),
        base.map(lambda s: s.replace("-", "%2D")),
        st.tuples(base, st.sampled_from([",", ";", " ", ", ", "\t", "/", "|", "%2C"]), base).map("".join),
        st.tuples(
            st.sampled_from(["", " ", "\t", "x", "."]), base, st.sampled_from(["", " ", "\t", "x"])
        ).map("".join),
        st.sampled_from(["%", "_", "*", "..", "../" + a, ".", "default", "harness", "-", "a" * 65]),
        st.text(alphabet=st.sampled_from(list(a + b + "%_*.,; \t")), min_size=1, max_size=40),
    )


def test_generated_tenant_ids_never_cross_tenants(
    api: Api, two_tenants: tuple[Seeded, Seeded], service_key: str
) -> None:
    a, b = two_tenants
    a_before, b_before = customers_of(api, a.tenant), customers_of(api, b.tenant)
    names = {a.tenant.id, b.tenant.id}
    written: dict[str, list[str]] = {a.tenant.id: [], b.tenant.id: []}

    @settings(
        max_examples=60,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(value=mutations(a.tenant.id, b.tenant.id), with_service_key=st.booleans())
    def probe(value: str, with_service_key: bool) -> None:
        try:
            headers = {"X-Tenant-ID": value}
            httpx.Headers(headers)  # values httpx will not send (control characters) are the raw test's
        except (ValueError, httpx.LocalProtocolError):
            return
        key = service_key if with_service_key else a.tenant.key
        try:
            tenant_id = acted_for(api, key, headers)
        except httpx.LocalProtocolError:
            return
        stripped = value.strip(" \t")
        if tenant_id is not None:
            # It acts for exactly the tenant named (HTTP drops the padding); a tenant key only for its own.
            assert tenant_id == stripped, (value, tenant_id)
            assert with_service_key or tenant_id == a.tenant.id, (value, tenant_id)
        # Reads: never B's data with A's key; with the service key only when B is named exactly.
        for path in (
            f"/v1/customers/{b.customer_id}",
            f"/v1/conversations/{b.conversation_id}",
            f"/v1/messages/by-wamid/{b.wamid}",
        ):
            response = api.get(path, key=key, headers=headers)
            if response.status_code == 200:
                assert with_service_key, (value, path)
                assert stripped == b.tenant.id, (value, path)
            else:
                assert_refusal(response)
        # A write: lands in the tenant named, or nowhere.
        marker = f"fuzz-{uuid.uuid4().hex[:10]}"
        response = api.post("/v1/customers", key=key, headers=headers, json={"display_name": marker})
        if response.status_code == 201:
            assert tenant_id is not None, value
            assert tenant_id in names | {api.server.default_tenant_id}, value
            written.setdefault(tenant_id, []).append(marker)
        else:
            assert_refusal(response)
        # The old API names the tenant in the query or the body as well: with A's key, never B.
        old = api.get(f"/state/conversation/{uuid.uuid4()}", key=a.tenant.key, params={"tenantId": value})
        assert old.status_code in (400, 403, 404, 429), (value, old.status_code, old.text[:200])

    probe()
    # Read back through each owner: exactly the markers written for it, nothing else.
    for seeded, before in ((a, a_before), (b, b_before)):
        after = customers_of(api, seeded.tenant)
        new = sorted(c["display_name"] for c in after if c["id"] not in {x["id"] for x in before})
        assert new == sorted(written[seeded.tenant.id]), (seeded.tenant.id, new)
    assert not written[b.tenant.id] or all(m.startswith("fuzz-") for m in written[b.tenant.id])


def test_a_tenant_key_never_reaches_the_other_tenant_through_the_old_api(
    api: Api, two_tenants: tuple[Seeded, Seeded]
) -> None:
    a, b = two_tenants
    for where in ("header", "query", "body"):
        headers = {"X-Tenant-ID": b.tenant.id} if where == "header" else {}
        params = {"tenantId": b.tenant.id} if where == "query" else {}
        body = {"waId": b.wa_id, "wamid": f"wamid.x{uuid.uuid4().hex}", "mappingId": b.conversation_id}
        if where == "body":
            body["tenantId"] = b.tenant.id
        read = api.get(f"/state/mapping/{b.wa_id}", key=a.tenant.key, headers=headers, params=params)
        write = api.post("/state/message", key=a.tenant.key, headers=headers, params=params, json=body)
        for response in (read, write):
            # Refused, or (a GET carries no body to name B in) acting for A: A has the same WhatsApp ID.
            if response.status_code == 200:
                assert where == "body", (where, response.text[:300])
                assert b.tenant.id not in response.text, response.text[:300]
                assert b.conversation_id not in response.text, response.text[:300]
            else:
                assert response.status_code in (400, 403, 404), (where, response.status_code, response.text)
                assert "error" in response.json()
    messages = api.get(f"/v1/conversations/{b.conversation_id}/messages", key=b.tenant.key).json()["items"]
    assert [m["wamid"] for m in messages] == [b.wamid]


def raw_request(api: Api, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """One request written to the socket as given (what httpx refuses to send); the status and body."""
    host, port = "127.0.0.1", api.server.process.port
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(head + b"\r\n" + body)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                header, _, rest = data.partition(b"\r\n\r\n")
                length = next(
                    (int(line.split(b":", 1)[1]) for line in header.split(b"\r\n") if
                     line.lower().startswith(b"content-length:")),
                    None,
                )  # fmt: skip
                if length is not None and len(rest) >= length:
                    break
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, data


def test_header_injection_in_x_tenant_id(
    api: Api, two_tenants: tuple[Seeded, Seeded], service_key: str
) -> None:
    a, b = two_tenants
    before = customers_of(api, b.tenant)

    def head(key: str, *tenant_lines: bytes, method: bytes = b"GET", path: bytes = b"/v1/tenant") -> bytes:
        lines = [method + b" " + path + b" HTTP/1.1", b"Host: x", b"Authorization: Bearer " + key.encode()]
        lines += [b"X-Tenant-ID: " + line for line in tenant_lines]
        lines += [b"Connection: close", b""]
        return b"\r\n".join(lines) + b"\r\n"

    tid_a, tid_b = a.tenant.id.encode(), b.tenant.id.encode()
    for key in (a.tenant.key, service_key):
        # Two X-Tenant-ID headers, in either order: refused, whoever added which.
        for lines in ((tid_a, tid_b), (tid_b, tid_a), (tid_a, tid_a)):
            status, data = raw_request(api, head(key, *lines))
            assert status == 400, (lines, data[:300])
            assert b"application/problem+json" in data, data[:300]
            assert b"X-Tenant-ID once" in data, data[:300]
        # A bare CR or LF inside the value, a NUL, an obs-fold continuation, CR LF smuggling a second
        # header: the HTTP parser or the tenant check refuses each; none acts for B.
        for value in (tid_a + b"\rX-Tenant-ID: " + tid_b, tid_a + b"\x00" + tid_b, tid_b + b"\r\n " + tid_a):
            status, data = raw_request(api, head(key, value))
            assert 400 <= status < 500 or status == 0, (value, data[:300])
            assert tid_b not in data.partition(b"\r\n\r\n")[2] or status != 200, data[:300]
        status, data = raw_request(api, head(key, tid_a + b"\r\nX-Tenant-ID: " + tid_b))
        assert status == 400, data[:300]
        # Comma-joined (how proxies merge repeated headers) and padded with whitespace.
        for value in (tid_a + b"," + tid_b, tid_b + b", " + tid_a, b" " + tid_b + b" ,"):
            status, data = raw_request(api, head(key, value))
            assert status == 400, (value, data[:300])
        status, data = raw_request(api, head(key, b"  " + tid_a + b"\t"))
        assert status == 200, data[:300]
        assert b'"id":"' + tid_a + b'"' in data, data[:300]
        # Latin-1 bytes and an overlong value.
        for value in (tid_a + b"\xe9", b"\xff" * 8, tid_a * 200):
            status, data = raw_request(api, head(key, value))
            assert status == 400, (value[:40], data[:300])
        # A write with two headers writes nothing anywhere.
        body = b'{"display_name": "smuggled"}'
        write = head(key, tid_a, tid_b, method=b"POST", path=b"/v1/customers").replace(
            b"Connection: close\r\n",
            b"Connection: close\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n",
        )
        status, data = raw_request(api, write, body)
        assert status == 400, data[:300]
    assert customers_of(api, b.tenant) == before
    assert all(c["display_name"] != "smuggled" for c in customers_of(api, a.tenant))
