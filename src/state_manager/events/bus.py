"""How numbered events reach every process and durable consumers: Redis in production, nothing to cross
on the embedded default.

- `RedisBus`: one script per batch appends each event to the tenant's stream `sm:{tenant}:events`
  (entry ID `<seq>-1`, so appending an event twice is refused by Redis itself: a relay that publishes a
  batch again after a crash adds nothing) and publishes the batch on `sm:events` for live fan-out.
  Durable consumers read the stream (XREAD / XREADGROUP); its length is capped (`EVENTS_STREAM_MAXLEN`),
  and the events table stays the source of truth (`GET /v1/events?after=`).
- `InProcessBus`: the relay hands the batch to this process's hub. With several workers on the embedded
  default, each hub also reads what the others numbered from the table (`EventHub` catch-up).

Pub/sub may lose a message (a subscriber reconnecting); the hub notices the gap in `seq` and reads what
it missed from the table, so nothing is lost, only later.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis

from state_manager.events.schemas import Published
from state_manager.observability.errors import error_summary
from state_manager.settings import Settings

log = logging.getLogger("state_manager.events")

CHANNEL = "sm:events"
THROUGH_BATCH = 500  # streams asked about per round trip
Deliver = Callable[[Sequence[Published]], None]

# ARGV: channel, stream length cap, the number the batch follows, (seq, event JSON) per event, then the
# batch as the channel's message. The stream stays in order with no hole: a batch whose predecessor the
# stream lacks is refused (0), and the relay publishes the missing events first.
_APPEND = """
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local last = 0
if #top > 0 then last = tonumber(string.match(top[1][1], '^(%d+)')) end
if last < tonumber(ARGV[3]) then return 0 end
for i = 4, #ARGV - 1, 2 do
  if tonumber(ARGV[i]) > last then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], ARGV[i] .. '-1', 'event', ARGV[i + 1])
  end
end
redis.call('PUBLISH', ARGV[1], ARGV[#ARGV])
return 1
"""


def stream_key(tenant_id: str) -> str:
    return f"sm:{{{tenant_id}}}:events"


def _through(top: list[Any]) -> int:
    """The number of the newest entry XREVRANGE COUNT 1 returned (0 for an empty or missing stream)."""
    return int(top[0][0].split(b"-", 1)[0]) if top else 0


class EventBus(abc.ABC):
    name: str

    @abc.abstractmethod
    async def start(self, deliver: Deliver) -> None: ...

    @abc.abstractmethod
    async def publish(self, tenant_id: str, batch: Sequence[Published], *, follows: int) -> bool:
        """Publishes a batch that follows event number `follows`; False if the bus lacks that one (publish
        what it lacks first). Raises unless the bus took the batch."""

    @abc.abstractmethod
    async def published_through(self, tenant_id: str) -> int | None:
        """The tenant's last event the bus holds durably; None if it holds nothing to catch up on."""

    async def published_through_each(self, tenant_ids: Sequence[str]) -> dict[str, int | None]:
        """`published_through` of several tenants (the relay's sweep asks for all of them at once)."""
        return {tenant_id: await self.published_through(tenant_id) for tenant_id in tenant_ids}

    async def close(self) -> None:
        return None

    def report(self) -> dict[str, Any]:
        return {"backend": self.name, "status": "ok"}


class InProcessBus(EventBus):
    name = "in-process"

    def __init__(self) -> None:
        self._deliver: Deliver | None = None

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def publish(self, tenant_id: str, batch: Sequence[Published], *, follows: int) -> bool:
        if self._deliver is not None:
            self._deliver(batch)
        return True

    async def published_through(self, tenant_id: str) -> int | None:
        return None  # a process that died took its hub with it; the others read the table


class RedisBus(EventBus):
    name = "redis"

    def __init__(self, url: str, *, timeout: float, stream_maxlen: int) -> None:
        self._redis = Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._subscriber = Redis.from_url(url, socket_connect_timeout=timeout)
        self._append = self._redis.register_script(_APPEND)
        self._stream_maxlen = stream_maxlen
        self._listener: asyncio.Task[None] | None = None
        self.subscribed = False
        self.last_error: str | None = None

    async def start(self, deliver: Deliver) -> None:
        ready = asyncio.Event()
        self._listener = asyncio.create_task(self._listen(deliver, ready), name="event-bus-listener")
        # Starting without Redis still works: the hub reads the table until the bus is back.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), timeout=2.0)

    async def publish(self, tenant_id: str, batch: Sequence[Published], *, follows: int) -> bool:
        arguments: list[bytes | str | int] = [CHANNEL, self._stream_maxlen, follows]
        for event in batch:
            arguments += [str(event.seq), event.json]
        # The channel's message: the events, one JSON document per line (JSON never holds a raw newline).
        taken = await self._append(
            keys=[stream_key(tenant_id)], args=[*arguments, b"\n".join(e.json for e in batch)]
        )
        return bool(taken)

    async def published_through(self, tenant_id: str) -> int | None:
        return _through(await self._redis.xrevrange(stream_key(tenant_id), count=1))

    async def published_through_each(self, tenant_ids: Sequence[str]) -> dict[str, int | None]:
        found: dict[str, int | None] = {}
        for start in range(0, len(tenant_ids), THROUGH_BATCH):
            batch = tenant_ids[start : start + THROUGH_BATCH]
            async with self._redis.pipeline(transaction=False) as pipe:
                for tenant_id in batch:
                    pipe.xrevrange(stream_key(tenant_id), count=1)
                found.update(zip(batch, map(_through, await pipe.execute()), strict=True))
        return found

    async def _listen(self, deliver: Deliver, ready: asyncio.Event) -> None:
        delay = 0.1
        while True:
            pubsub = self._subscriber.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                self.subscribed = True
                ready.set()
                delay = 0.1
                async for message in pubsub.listen():
                    deliver([Published.from_document(line) for line in message["data"].split(b"\n")])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = error_summary(exc)
                if self.subscribed:
                    log.warning("event channel lost (%s); the hub reads the table until it is back", exc)
                self.subscribed = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._redis.aclose()
        await self._subscriber.aclose()

    def report(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "status": "ok" if self.subscribed else "degraded",
            "subscribed": self.subscribed,
            "last_error": self.last_error,
        }


def open_event_bus(settings: Settings) -> EventBus:
    """Redis when REDIS_URL is set; this process alone otherwise."""
    if settings.redis_url:
        return RedisBus(
            settings.redis_url,
            timeout=settings.events_publish_timeout_seconds,
            stream_maxlen=settings.events_stream_maxlen,
        )
    return InProcessBus()
