"""What a run needs before it measures: its own tenant and key, seeded conversations, outbound messages.

Everything goes through the public HTTP API, so seeding also checks that the endpoints behave.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bench.httpclient import JsonClient
from bench.scenarios import (
    BUSINESS_DISPLAY_NUMBER,
    BUSINESS_NUMBER_ID,
    INBOUND_WA_ID,
    LOOKUP_WA_ID,
    iso_now,
)

T = TypeVar("T")
# Requests a second the benchmark's tenant key may send: see `create_tenant`.
BENCH_KEY_RATE_LIMIT = 1_000_000.0


class SetupError(RuntimeError):
    pass


@dataclass
class Fixture:
    tenant_id: str
    token: str
    lookup_wa_ids: list[str] = field(default_factory=list)
    conversation_ids: list[str] = field(default_factory=list)
    outbound_wamids: list[str] = field(default_factory=list)
    timings: dict[str, dict[str, float]] = field(default_factory=dict)


def _expect(what: str, status: int, body: Any, *ok: int) -> Any:
    if status not in ok:
        raise SetupError(f"{what}: HTTP {status}: {body}")
    return body


async def create_tenant(url: str, admin_key: str, run_tag: str) -> tuple[str, str]:
    """A fresh organization and tenant named after the run, and a tenant key for it.

    The key's own rate limit is far above what one machine can send: the limiter still counts every
    request (its cost is part of what is measured), but never refuses one. The default, 10,000 a second,
    is below what the cached lookup reaches on a fast machine.
    """
    client = JsonClient(url, admin_key, connections=1)
    try:
        org = _expect(
            "create organization",
            *await client.request(
                "POST", "/v1/admin/organizations", {"id": run_tag, "name": f"bench {run_tag}"}
            ),
            201,
        )
        tenant = _expect(
            "create tenant",
            *await client.request(
                "POST",
                "/v1/admin/tenants",
                {"id": run_tag, "organization_id": org["id"], "name": f"bench {run_tag}"},
            ),
            201,
        )
        key = _expect(
            "create tenant key",
            *await client.request(
                "POST",
                "/v1/admin/keys",
                {
                    "kind": "tenant",
                    "name": "bench",
                    "tenant_id": tenant["id"],
                    "rate_limit_per_second": BENCH_KEY_RATE_LIMIT,
                },
            ),
            201,
        )
    finally:
        client.close()
    return str(tenant["id"]), str(key["key"])


async def _fan_out(
    count: int, concurrency: int, job: Callable[[int], Awaitable[T]]
) -> tuple[list[T], dict[str, float]]:
    results: list[T | None] = [None] * count
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            i = next_index
            next_index += 1
            results[i] = await job(i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, max(count, 1)))))
    elapsed = time.perf_counter() - started
    done = [r for r in results if r is not None]
    return done, {"count": count, "seconds": round(elapsed, 2), "per_second": round(count / elapsed, 1)}


async def _first_messages(
    url: str, fixture: Fixture, wa_ids: list[str], run_tag: str, step: str, concurrency: int
) -> list[tuple[str, str]]:
    """One inbound message from each WhatsApp ID: a customer and an open conversation each. Returns
    (wa_id, conversation_id) pairs and records the step's timing."""
    client = JsonClient(url, fixture.token, connections=concurrency)

    async def one(i: int) -> tuple[str, str]:
        wa_id = wa_ids[i]
        body = {
            "wa_id": wa_id,
            "profile_name": "Ana",
            "business_number_id": BUSINESS_NUMBER_ID,
            "business_display_number": BUSINESS_DISPLAY_NUMBER,
            "wamid": f"wamid.{run_tag}.{step}.{i}",
            "type": "text",
            "text": "hi",
            "occurred_at": iso_now(),
        }
        status, data = await client.request("POST", "/v1/messages/inbound", body)
        _expect(f"seed inbound message for {wa_id}", status, data, 201, 200)
        return wa_id, str(data["conversation_id"])

    try:
        await client.open()
        pairs, fixture.timings[step] = await _fan_out(len(wa_ids), concurrency, one)
    finally:
        client.close()
    return pairs


async def seed_inbound_customers(
    url: str, fixture: Fixture, count: int, run_tag: str, concurrency: int = 32
) -> None:
    """The inbound scenario's customers, each with its open conversation, so that the window measures
    the common case (a message appended) on tables that hold data, as on a server in service."""
    wa_ids = [INBOUND_WA_ID.format(i) for i in range(count)]
    await _first_messages(url, fixture, wa_ids, run_tag, "seed_inbound_customers", concurrency)


async def seed_conversations(
    url: str, fixture: Fixture, count: int, run_tag: str, concurrency: int = 32
) -> None:
    """One customer with one open conversation each, through the inbound endpoint."""
    wa_ids = [LOOKUP_WA_ID.format(i) for i in range(count)]
    pairs = await _first_messages(url, fixture, wa_ids, run_tag, "seed_inbound", concurrency)
    fixture.lookup_wa_ids = [wa_id for wa_id, _ in pairs]
    fixture.conversation_ids = [conversation_id for _, conversation_id in pairs]

    # Every seeded customer must be found, or the lookup figures would measure 404s.
    client = JsonClient(url, fixture.token, connections=1)
    try:
        target = (
            f"/v1/conversations/open?wa_id={fixture.lookup_wa_ids[0]}&business_number_id={BUSINESS_NUMBER_ID}"
        )
        status, data = await client.request("GET", target)
    finally:
        client.close()
    _expect("look up a seeded conversation", status, data, 200)


async def seed_outbound(url: str, fixture: Fixture, count: int, run_tag: str, concurrency: int = 32) -> None:
    """Outbound messages spread over the seeded conversations, for the receipts to apply to."""
    if not fixture.conversation_ids:
        raise SetupError("outbound messages need seeded conversations")
    client = JsonClient(url, fixture.token, connections=concurrency)
    conversations = fixture.conversation_ids

    async def one(i: int) -> str:
        wamid = f"wamid.out.{run_tag}.{i}"
        body = {
            "direction": "outbound",
            "wamid": wamid,
            "type": "text",
            "text": "hello",
            "sender_type": "agent",
            "sender_id": "agent-1",
        }
        conversation_id = conversations[i % len(conversations)]
        status, data = await client.request("POST", f"/v1/conversations/{conversation_id}/messages", body)
        _expect("seed outbound message", status, data, 201)
        return wamid

    try:
        await client.open()
        fixture.outbound_wamids, fixture.timings["seed_outbound"] = await _fan_out(count, concurrency, one)
    finally:
        client.close()


async def cache_figures(url: str, admin_key: str) -> dict[str, Any]:
    """`GET /v1/admin/cache`: the server's lookup counters per cache (all its workers)."""
    client = JsonClient(url, admin_key, connections=1)
    try:
        await client.open()
        status, data = await client.request("GET", "/v1/admin/cache")
    finally:
        client.close()
    figures: dict[str, Any] = _expect("read the cache figures", status, data, 200)
    return figures
