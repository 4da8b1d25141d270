"""Small helpers shared by the domain tests: IDs, request shorthands and problem+json checks."""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

PROBLEM_JSON = "application/problem+json"
UTC = dt.UTC


@dataclass
class Tenant:
    """A fresh tenant of one backend, with a client that sends its tenant key."""

    id: str
    key: str
    key_id: str | None
    base_url: str
    client: httpx.Client

    def new_client(self, **headers: str) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=60)


def wa_id() -> str:
    """A random, valid WhatsApp ID (12 digits, not starting with 0)."""
    return str(secrets.randbelow(9) + 1) + "".join(str(secrets.randbelow(10)) for _ in range(11))


def wamid() -> str:
    return "wamid.HBgL" + secrets.token_hex(12)


def genesys_id() -> str:
    return str(uuid.uuid4())


def business_number() -> str:
    return "bn-" + secrets.token_hex(4)


def iso(moment: dt.datetime) -> str:
    return moment.isoformat()


def parse_time(value: str | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def assert_problem(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status (and code, when given)."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    content_type = response.headers.get("content-type", "")
    assert content_type.startswith(PROBLEM_JSON), (content_type, response.text[:200])
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert isinstance(body.get("code"), str), body
    assert body["code"], body
    if code is not None:
        assert body["code"] == code, body
    return body


def assert_client_error(response: httpx.Response) -> dict[str, Any]:
    """Any 4xx problem+json with a `code` (never a 5xx, never HTML or plain JSON)."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    return assert_problem(response, response.status_code)


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.text[:500])
    return response.json()


def inbound(
    client: httpx.Client,
    wa: str,
    business: str = "bn-1",
    *,
    wamid_: str | None = None,
    status: int | tuple[int, ...] = (200, 201),
    **extra: Any,
) -> dict[str, Any]:
    body = {"wa_id": wa, "business_number_id": business, "wamid": wamid_ or wamid(), "text": "hi"} | extra
    response = client.post("/v1/messages/inbound", json=body)
    expected = (status,) if isinstance(status, int) else status
    assert response.status_code in expected, (response.status_code, response.text[:500])
    data: dict[str, Any] = response.json()
    return data


def record_message(
    client: httpx.Client, conversation_id: str, *, status: int = 201, **body: Any
) -> dict[str, Any]:
    body.setdefault("direction", "outbound")
    body.setdefault("text", "hello")
    data: dict[str, Any] = ok(client.post(f"/v1/conversations/{conversation_id}/messages", json=body), status)
    return data


def transition(
    client: httpx.Client, conversation_id: str, state: str, reason: str | None = None, **headers: str
) -> httpx.Response:
    return client.post(
        f"/v1/conversations/{conversation_id}/transitions",
        json={"state": state, "reason": reason},
        headers=headers,
    )


def list_all(client: httpx.Client, path: str, limit: int, **params: Any) -> list[dict[str, Any]]:
    """Every item of a paginated list, following next_cursor; fails on a runaway loop."""
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):
        query = {"limit": limit, **params} | ({"cursor": cursor} if cursor else {})
        page = ok(client.get(path, params=query))
        assert len(page["items"]) <= limit
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination did not end")
