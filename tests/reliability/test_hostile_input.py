"""Hostile bodies, URLs and IDs over HTTP (issue 8, "Hostile input"), on both backends.

tests/domain/test_bad_input.py has the schema-level refusals and the 4 MiB limit on the main routes; this
adds deep nesting far past the 32-level limit, invalid UTF-8 and raw control bytes in bodies, query strings
and paths, overlong headers, and wildcards and path tricks in every lookup by a caller's ID: they never match
another row (LIKE wildcards, case, look-alikes, prefixes) and never answer 5xx. Every refusal by the service
is a 4xx problem+json.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from harness import Api, Tenant

PROBLEM_JSON = "application/problem+json"


def refused(response: httpx.Response) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.headers.get("content-type", "").startswith(PROBLEM_JSON), response.text[:300]
    assert response.json()["status"] == response.status_code


def customers(api: Api, tenant: Tenant) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = api.get("/v1/customers", key=tenant.key).json()["items"]
    return items


def nested(depth: int) -> bytes:
    return b'{"attributes": {"x": ' + b"[" * depth + b"]" * depth + b"}}"


@pytest.mark.parametrize("depth", [33, 1_000, 200_000])
def test_deeply_nested_bodies_are_refused(api: Api, depth: int) -> None:
    tenant = api.new_tenant()
    headers = {"Content-Type": "application/json"}
    inbound = b'{"wa_id": "491511234567", "business_number_id": "bn", "wamid": "wamid.deep", "metadata": '
    for method, path, body in (
        ("POST", "/v1/customers", nested(depth)),
        ("POST", "/v1/messages/inbound", inbound + b"[" * depth + b"]" * depth + b"}"),
        ("POST", "/v1/inbound/whatsapp", b'{"object": "x", "entry": ' + b"[" * depth + b"]" * depth + b"}"),
        ("POST", "/state/message", b'{"waId": ' + b"[" * depth + b"]" * depth + b"}"),
    ):
        response = api.request(method, path, key=tenant.key, content=body, headers=headers)
        assert 400 <= response.status_code < 500, (path, response.status_code, response.text[:200])
        if path.startswith("/v1/"):
            refused(response)
    assert customers(api, tenant) == []
    assert api.get("/health/ready").status_code == 200


def test_invalid_utf8_and_control_bytes(api: Api) -> None:
    tenant = api.new_tenant()
    headers = {"Content-Type": "application/json"}
    for body in (
        b'{"display_name": "\xff\xfe"}',
        b'{"display_name": "\xc3\x28"}',  # a lead byte without its continuation
        b'{"display_name": "\xed\xa0\x80"}',  # a surrogate encoded as UTF-8
        b'{"display_name": "\xc0\xaf"}',  # an overlong "/"
        b'{"display_name": "a\x00b"}',  # a raw NUL inside a string
        b'{"display_name": "a\nb"}',  # a raw control character inside a string
        b"\xef\xbb\xbf{}",  # a byte-order mark
        b"\x00" * 64,
    ):
        response = api.post("/v1/customers", key=tenant.key, content=body, headers=headers)
        refused(response)
    for path in (
        "/v1/messages/by-wamid/%ff%fe",
        "/v1/customers/by-identity/email/%c0%af",
        "/v1/customers/%ff",
    ):
        response = api.get(path, key=tenant.key)
        refused(response)
    for params in ({"agent_id": "\udcff"}, {"business_number_id": "%ff"}, {"cursor": "\x00"}):
        raw = httpx.QueryParams(
            {k: v.encode("utf-8", "surrogateescape").decode("latin-1") for k, v in params.items()}
        )
        response = api.get("/v1/conversations", key=tenant.key, params=raw)
        assert response.status_code < 500, (params, response.text[:200])
        if response.status_code >= 400:
            refused(response)
    response = api.get("/v1/conversations?agent_id=%ff%fe%00", key=tenant.key)
    refused(response)
    assert customers(api, tenant) == []


def test_overlong_and_many_headers(api: Api) -> None:
    tenant = api.new_tenant()
    for headers in (
        {"X-Tenant-ID": "t" * 60_000},
        {"If-Match": '"' + "9" * 60_000 + '"'},
        {"X-Request-ID": "r" * 60_000},
        {"Authorization": "Bearer smk_" + "a" * 60_000},
        {f"X-Filler-{n}": "x" * 100 for n in range(200)},
    ):
        merged = {"Authorization": f"Bearer {tenant.key}", **headers}
        response = api.client.patch(
            f"/v1/customers/{uuid.uuid4()}", headers=merged, json={"display_name": "x"}
        )
        # The HTTP parser's own limit answers without the service (no problem body); the service's
        # refusals are problems. Never a 5xx, never a write.
        assert response.status_code < 500, (list(headers)[:1], response.status_code)
        if response.headers.get("content-type", "").startswith(PROBLEM_JSON):
            refused(response)
        assert len(response.headers.get("x-request-id", "")) <= 128
    assert customers(api, tenant) == []


# Not ".", ".." or "../": every HTTP client resolves them into another route (a list, a redirect) first.
TRICKS = [
    "%", "%%", "_", "*", "?", "..%2F", "%2F", "%2e%2e%2f", "%00", "%25", "\\", "'", '"',
    "' OR '1'='1", "%' OR 1=1 --", "[a-z]*", ".*", "^", "$", "{}", "null", "0", "-1",
]  # fmt: skip


def variants(real: str) -> list[str]:
    """IDs that a sloppy lookup (LIKE, case folding, prefix, normalisation) would confuse with `real`."""
    return [
        real.upper(), real.lower(), real[:-1], real[:-1] + "_", real[:-1] + "%", real[:5] + "%",
        "%" + real[5:], real.replace("_", "%"), real + " ", " " + real, real + "%00", real + "\t",
        real.replace("a", "\u0430").replace("e", "\u0435"), real.replace(".", "\uff0e"), real * 20,
        real + "/..%2F", "x" * 5000, *TRICKS,
    ]  # fmt: skip


def test_wildcards_and_path_tricks_never_match_another_row(api: Api) -> None:
    tenant, other = api.new_tenant(), api.new_tenant()
    wamid = "wamid.ABC_def1"
    genesys_conversation = "gc_conv1"
    genesys_message = "gm_MSG1"
    created = api.post(
        "/v1/messages/inbound",
        key=tenant.key,
        json={"wa_id": "491511234567", "business_number_id": "bn_1", "wamid": wamid, "text": "x"},
    )
    assert created.status_code == 201, created.text
    ids = created.json()
    conversation = f"/v1/conversations/{ids['conversation_id']}"
    assert api.patch(
        conversation, key=tenant.key, json={"genesys_conversation_id": genesys_conversation}
    ).is_success
    recorded = api.post(
        f"{conversation}/messages",
        key=tenant.key,
        json={"direction": "outbound", "wamid": "wamid.OUT_1", "genesys_message_id": genesys_message},
    )
    assert recorded.status_code == 201, recorded.text
    email = "a_b%c@example.com"
    added = api.post(
        f"/v1/customers/{ids['customer_id']}/identities",
        key=tenant.key,
        json={"channel": "email", "external_id": email},
    )
    assert added.status_code == 201, added.text
    lookups = {
        "/v1/messages/by-wamid/{}": wamid,
        "/v1/messages/by-genesys-id/{}": genesys_message,
        "/v1/conversations/by-genesys-id/{}": genesys_conversation,
        "/v1/customers/by-identity/email/{}": email,
        "/v1/customers/by-identity/whatsapp/{}": "491511234567",
        "/state/mapping/{}": "491511234567",
        "/state/conversation/{}": genesys_conversation,
    }
    wrong = []
    for template, real in lookups.items():
        found = api.get(template.format(httpx.URL(path="/" + real).raw_path.decode()[1:]), key=tenant.key)
        assert found.status_code == 200, (template, found.text[:200])
        for variant in variants(real):
            if variant == real:
                continue
            sendable = variant.isascii() and variant.isprintable() and " " not in variant
            path = template.format(variant) if sendable and ("%" in variant or "/" in variant) else None
            for url in {path, template.format(_quote(variant))} - {None}:
                try:
                    # A connection of its own: a malformed request-target closes the one it was sent on.
                    with httpx.Client(base_url=api.base_url, timeout=30) as own:
                        response = own.get(str(url), headers={"Authorization": f"Bearer {tenant.key}"})
                except httpx.TransportError:
                    # A raw, malformed request-target ("%" not followed by hex): uvicorn's HTTP parser
                    # drops the connection before the service sees it. No answer is not a match.
                    assert url == path, url
                    continue
                if response.status_code >= 500 or response.status_code == 200:
                    # Identities are normalised on purpose (trimmed; e-mail lowercased): the same identity
                    # spelt differently is a hit, anything else is not.
                    if response.status_code == 200 and variant.strip().lower() == real.lower():
                        continue
                    wrong.append((url, response.status_code, response.text[:120]))
            # The other tenant never finds it, by any spelling.
            response = api.get(template.format(_quote(variant)), key=other.key)
            if response.status_code not in range(400, 500):
                wrong.append(("other tenant", template, variant[:40], response.status_code))
    # Filters with wildcards match nothing.
    for params in (
        {"agent_id": "%"},
        {"agent_id": "_"},
        {"business_number_id": "bn%"},
        {"business_number_id": "bn_"},
    ):
        response = api.get("/v1/conversations", key=tenant.key, params=params)
        if response.status_code == 200 and response.json()["items"]:
            wrong.append(("filter", params))
    # A write by a wildcard ID changes nothing: a receipt for "wamid.%" is held, not applied.
    receipt = {"receipts": [{"wamid": "wamid.%", "status": "read", "at": "2026-01-01T10:00:00Z"}]}
    answer = api.post("/v1/receipts", key=tenant.key, json=receipt)
    if answer.status_code == 200:
        assert answer.json()["results"][0]["outcome"] == "held", answer.text
    message = api.get("/v1/messages/by-wamid/wamid.OUT_1", key=tenant.key).json()
    assert message["read_at"] is None
    assert not wrong, "\n".join(map(str, wrong))


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")
