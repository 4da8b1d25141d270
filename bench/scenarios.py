"""What each scenario sends. A spec is plain data (it crosses into the load-generator processes); each
process turns it into a generator of pre-encoded requests, so building a request costs next to nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode

from bench.httpclient import encode_request

BUSINESS_NUMBER_ID = "100000001"
BUSINESS_DISPLAY_NUMBER = "+1 555 0100"
RECEIPT_STATUSES = ("sent", "delivered", "read")

# Brazilian mobile numbers (valid E.164, so the server also derives a phone identity from them).
LOOKUP_WA_ID = "551191{:07d}"  # customers seeded before the run, looked up at random
INBOUND_WA_ID = "551192{:07d}"  # customers written to during the inbound scenario


@dataclass(frozen=True)
class ScenarioSpec:
    name: str
    token: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


class RequestSource(Protocol):
    def next(self) -> tuple[bytes, int]:
        """The next request's bytes and how many items it carries (1 except for receipt batches)."""
        ...

    def inspect(self, body: bytes) -> None:
        """Look at a 2xx response body from inside the measured window (cheaply)."""
        ...

    def summary(self) -> dict[str, Any]: ...


def iso_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class Baseline:
    def __init__(self, spec: ScenarioSpec, host: str, worker: int, workers: int) -> None:
        self.raw = encode_request("GET", "/health/live", host)

    def next(self) -> tuple[bytes, int]:
        return self.raw, 1

    def inspect(self, body: bytes) -> None:
        pass

    def summary(self) -> dict[str, Any]:
        return {}


class Lookup:
    def __init__(self, spec: ScenarioSpec, host: str, worker: int, workers: int) -> None:
        wa_ids: list[str] = spec.params["wa_ids"]
        self.requests = [
            encode_request(
                "GET",
                "/v1/conversations/open?"
                + urlencode({"wa_id": wa_id, "business_number_id": spec.params["business_number_id"]}),
                host,
                token=spec.token,
            )
            for wa_id in wa_ids
        ]
        self.rng = random.Random(1000 + worker)

    def next(self) -> tuple[bytes, int]:
        return self.rng.choice(self.requests), 1

    def inspect(self, body: bytes) -> None:
        pass

    def summary(self) -> dict[str, Any]:
        return {"distinct_targets": len(self.requests)}


class Inbound:
    """One new message per request, from a customer picked at random from a pool.

    The first message of each customer creates the customer and an open conversation; later ones are
    appended to it, which is the common case in production. Every wamid is unique, so nothing is a
    duplicate unless the server says so.
    """

    def __init__(self, spec: ScenarioSpec, host: str, worker: int, workers: int) -> None:
        self.host = host
        self.token = spec.token
        self.customers: int = spec.params["customers"]
        self.prefix = f"wamid.{spec.params['run_tag']}.{worker}."
        self.rng = random.Random(2000 + worker)
        self.seq = 0
        self.head = (
            '{"wa_id":"%s","profile_name":"Ana","business_number_id":"'
            + BUSINESS_NUMBER_ID
            + '","business_display_number":"'
            + BUSINESS_DISPLAY_NUMBER
            + '","wamid":"%s","type":"text","text":"hi","occurred_at":"%s"}'
        )
        self._second = 0
        self._now = iso_now()
        self.conversations_created = 0

    def next(self) -> tuple[bytes, int]:
        second = int(time.time() * 10)
        if second != self._second:  # a fresh timestamp ten times a second is plenty
            self._second = second
            self._now = iso_now()
        self.seq += 1
        wa_id = INBOUND_WA_ID.format(self.rng.randrange(self.customers))
        body = (self.head % (wa_id, f"{self.prefix}{self.seq}", self._now)).encode()
        return encode_request("POST", "/v1/messages/inbound", self.host, token=self.token, body=body), 1

    def inspect(self, body: bytes) -> None:
        if b'"conversation_created":true' in body:
            self.conversations_created += 1

    def summary(self) -> dict[str, Any]:
        return {
            "messages_sent": self.seq,
            "customer_pool": self.customers,
            "conversations_created_in_window": self.conversations_created,
        }


class Receipts:
    """Batches of delivery receipts for outbound messages recorded before the run.

    Every message goes sent -> delivered -> read: the first pass over this process's share of the
    messages sends `sent`, the second `delivered`, the third `read`. If the run outlasts three passes
    the later receipts repeat `read` (no longer a state change); `stale_receipts` in the summary counts
    them, and the fix is more --receipt-messages.
    """

    def __init__(self, spec: ScenarioSpec, host: str, worker: int, workers: int) -> None:
        self.host = host
        self.token = spec.token
        all_wamids: list[str] = spec.params["wamids"]
        self.wamids = all_wamids[worker::workers]
        if not self.wamids:
            raise ValueError("no outbound messages for this load-generator process")
        self.batch: int = spec.params["batch"]
        self.base = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=5)
        self.cursor = 0
        self.stale = 0
        self.outcomes: Counter[str] = Counter()

    def _next_batch(self) -> list[tuple[str, str, dt.datetime]]:
        """(wamid, status, time) of the next `batch` statuses."""
        n = len(self.wamids)
        batch = []
        for _ in range(self.batch):
            pass_no, index = divmod(self.cursor, n)
            self.cursor += 1
            if pass_no >= len(RECEIPT_STATUSES):
                self.stale += 1
            status = RECEIPT_STATUSES[min(pass_no, len(RECEIPT_STATUSES) - 1)]
            batch.append((self.wamids[index], status, self.base + dt.timedelta(seconds=pass_no)))
        return batch

    def next(self) -> tuple[bytes, int]:
        receipts = [
            {"wamid": wamid, "status": status, "at": at.isoformat()}
            for wamid, status, at in self._next_batch()
        ]
        body = json.dumps({"receipts": receipts}, separators=(",", ":")).encode()
        return encode_request("POST", "/v1/receipts", self.host, token=self.token, body=body), self.batch

    def inspect(self, body: bytes) -> None:
        for outcome in ("applied", "unchanged", "held"):
            self.outcomes[outcome] += body.count(b'"outcome":"%s"' % outcome.encode())

    def summary(self) -> dict[str, Any]:
        return {
            "receipts_sent": self.cursor,
            "stale_receipts": self.stale,
            "messages": len(self.wamids),
            "outcomes_in_window": dict(self.outcomes),
        }


class WebhookStatuses(Receipts):
    """The same statuses as `Receipts`, as Meta sends them: raw WhatsApp webhook bodies, `batch`
    statuses in each, to `POST /v1/inbound/whatsapp` (which also stores every body)."""

    def next(self) -> tuple[bytes, int]:
        statuses = [
            {
                "id": wamid,
                "status": status,
                "timestamp": str(int(at.timestamp())),
                "recipient_id": "5511900000000",
            }
            for wamid, status, at in self._next_batch()
        ]
        value = {
            "messaging_product": "whatsapp",
            "metadata": {
                "display_phone_number": BUSINESS_DISPLAY_NUMBER,
                "phone_number_id": BUSINESS_NUMBER_ID,
            },
            "statuses": statuses,
        }
        webhook = {
            "object": "whatsapp_business_account",
            "entry": [{"id": "100200300400500", "changes": [{"value": value, "field": "messages"}]}],
        }
        body = json.dumps(webhook, separators=(",", ":")).encode()
        return encode_request(
            "POST", "/v1/inbound/whatsapp", self.host, token=self.token, body=body
        ), self.batch


class Mix:
    """What the callers ask of one tenant, in proportion: the open conversation (inbound and outbound
    transformers, each message), a message by wamid (status webhooks), a customer by WhatsApp ID, the
    agent context (agent portal), and new inbound messages from the same customers, which change what
    the lookups answer. Reports nothing itself; the run reads the hit ratio from `GET /v1/admin/cache`."""

    WEIGHTS = (("open", 45), ("message", 15), ("customer", 10), ("agent", 10), ("inbound", 20))

    def __init__(self, spec: ScenarioSpec, host: str, worker: int, workers: int) -> None:
        self.host, self.token = host, spec.token
        params = spec.params
        self.wa_ids: list[str] = params["wa_ids"]
        self.conversation_ids: list[str] = params["conversation_ids"]
        self.seed_tag: str = params["run_tag"]
        self.prefix = f"wamid.{params['run_tag']}.mix.{worker}."
        self.rng = random.Random(3000 + worker)
        self.kinds = [kind for kind, weight in self.WEIGHTS for _ in range(weight)]
        self.seq = 0
        self.sent: Counter[str] = Counter()

    def next(self) -> tuple[bytes, int]:
        kind = self.rng.choice(self.kinds)
        i = self.rng.randrange(len(self.wa_ids))
        self.sent[kind] += 1
        get = {
            "open": "/v1/conversations/open?"
            + urlencode({"wa_id": self.wa_ids[i], "business_number_id": BUSINESS_NUMBER_ID}),
            "message": f"/v1/messages/by-wamid/wamid.{self.seed_tag}.seed.{i}",
            "customer": f"/v1/customers/by-identity/whatsapp/{self.wa_ids[i]}",
            "agent": f"/v1/conversations/{self.conversation_ids[i]}/agent-context?messages=20",
        }.get(kind)
        if get is not None:
            return encode_request("GET", get, self.host, token=self.token), 1
        self.seq += 1
        body = json.dumps(
            {
                "wa_id": self.wa_ids[i],
                "business_number_id": BUSINESS_NUMBER_ID,
                "wamid": f"{self.prefix}{self.seq}",
                "type": "text",
                "text": "hi",
                "occurred_at": iso_now(),
            }
        ).encode()
        return encode_request("POST", "/v1/messages/inbound", self.host, token=self.token, body=body), 1

    def inspect(self, body: bytes) -> None:
        pass

    def summary(self) -> dict[str, Any]:
        return {"requests_by_kind": dict(self.sent)}


SOURCES: dict[str, type[Baseline] | type[Lookup] | type[Inbound] | type[Receipts] | type[Mix]] = {
    "baseline": Baseline,
    "lookup": Lookup,
    "lookup-half": Lookup,
    "mix": Mix,
    "inbound": Inbound,
    "receipts": Receipts,
    "webhook": WebhookStatuses,
}


def make_source(spec: ScenarioSpec, host: str, worker: int, workers: int) -> RequestSource:
    return SOURCES[spec.name](spec, host, worker, workers)
