"""A WebSocket subscription: replay from the table, then live from the hub, with no gap and no repeat.

Frames sent (text, JSON): `{"kind": "events", "events": [{...}, ...]}`, the events in `seq` order (as many
as were waiting: under load one frame carries several, which is what lets one process feed many
subscribers);
`{"kind": "live", "seq": n}` once the replay has caught up (n: the last number covered);
`{"kind": "heartbeat", "seq": n}` every `heartbeat` seconds of silence (n: the last number covered,
whether or not it matched the filters: resume with `after=n`).

Close codes: 4400 bad parameters, 4401 no valid key, 4403 the key may not act for that tenant,
4410 `after` is before events the tenant's retention policy removed (the reason says where to resume),
4408 too slow (its queue of `EVENTS_WS_BACKLOG` events filled; resume with `after=` the last `seq` seen;
a client that reads nothing at all for `CLOSE_WAIT_SECONDS` only sees its connection dropped),
1012 the server is shutting down.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Annotated

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.websockets import WebSocket, WebSocketDisconnect

from state_manager.db import Database
from state_manager.errors import EventsTrimmed
from state_manager.events import repository as repo
from state_manager.events.hub import PAGE, EventHub, Subscription, TenantFeed
from state_manager.events.schemas import Published
from state_manager.events.service import refuse_trimmed
from state_manager.events.types import EventType
from state_manager.observability import metrics

TOO_SLOW = 4408
TRIMMED = 4410
GOING_AWAY = 1012
# A client too slow may still take the close frame once it reads again; one that does not read within this
# time has its connection dropped without it.
CLOSE_WAIT_SECONDS = 5.0


def comma_separated(value: object) -> object:
    return [part for part in value.split(",") if part] if isinstance(value, str) else value


class SubscribeOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    after: int | None = Field(
        default=None, ge=0, description="Replay the events after this number first; absent = live only"
    )
    types: Annotated[list[EventType], BeforeValidator(comma_separated)] = Field(
        default_factory=list, description="Comma-separated event types; absent = all"
    )
    conversation_id: uuid.UUID | None = None
    customer_id: uuid.UUID | None = None
    heartbeat: float = Field(
        default=15.0, ge=0.5, le=300, description="Seconds of silence before a heartbeat"
    )


def _frame(kind: str, seq: int) -> str:
    return orjson.dumps({"kind": kind, "seq": seq}).decode()


def _events_frame(events: list[Published]) -> str:
    return '{"kind":"events","events":[' + ",".join(event.text for event in events) + "]}"


class LiveSubscription:
    def __init__(
        self,
        websocket: WebSocket,
        db: Database,
        hub: EventHub,
        tenant_id: str,
        options: SubscribeOptions,
        *,
        capacity: int,
    ) -> None:
        self.websocket = websocket
        self.db = db
        self.hub = hub
        self.tenant_id = tenant_id
        self.options = options
        self.subscription = Subscription(
            tenant_id,
            types=frozenset(t.value for t in options.types),
            conversation_id=None if options.conversation_id is None else str(options.conversation_id),
            customer_id=None if options.customer_id is None else str(options.customer_id),
            capacity=capacity,
        )
        self.covered = 0  # every event up to this number was sent, or did not match the filters

    async def serve(self) -> None:
        feed = await self.hub.feed(self.tenant_id)
        metrics.WS_SUBSCRIBERS.inc()
        try:
            sending = asyncio.create_task(self._send(feed))
            closing = asyncio.create_task(self.subscription.too_slow.wait())
            listening = asyncio.create_task(self._until_client_leaves())
            done, pending = await asyncio.wait(
                {sending, closing, listening}, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
                    await task
            if closing in done:
                metrics.WS_CLOSED.labels("too_slow").inc()
                await self._close(TOO_SLOW, f"too slow; resume with after={self.covered}")
            elif sending in done and (error := sending.exception()) is not None:
                if isinstance(error, EventsTrimmed):
                    metrics.WS_CLOSED.labels("trimmed").inc()
                    await self._close(TRIMMED, error.detail[:120])
                    return
                if not isinstance(error, WebSocketDisconnect):
                    raise error
                metrics.WS_CLOSED.labels("client").inc()
            else:
                metrics.WS_CLOSED.labels("client").inc()
        except asyncio.CancelledError:
            metrics.WS_CLOSED.labels("shutdown").inc()
            await self._close(GOING_AWAY, "server shutting down")
            raise
        finally:
            self.hub.release(feed, self.subscription)
            metrics.WS_SUBSCRIBERS.dec()

    async def _close(self, code: int, reason: str) -> None:
        # A client that does not read may not take the close frame either: do not wait for it forever.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.websocket.close(code=code, reason=reason), CLOSE_WAIT_SECONDS)

    async def _until_client_leaves(self) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return

    async def _send(self, feed: TenantFeed) -> None:
        if self.options.after is None:
            self.covered = feed.last_seq
        else:
            self.covered = self.options.after
            await self._replay(feed)
        self.hub.attach(feed, self.subscription)  # no await since the replay reached feed.last_seq
        await self.websocket.send_text(_frame("live", self.covered))
        queue = self.subscription.queue
        while True:
            try:
                first = await asyncio.wait_for(queue.get(), self.options.heartbeat)
            except TimeoutError:
                # An event announced in the same turn of the loop as the timeout is already queued, and
                # counted in feed.last_seq: it goes out first, or covering it would drop it unsent.
                if queue.empty():
                    self.covered = max(self.covered, feed.last_seq)
                    await self.websocket.send_text(_frame("heartbeat", self.covered))
                continue
            waiting = [first]
            while not queue.empty():
                waiting.append(queue.get_nowait())
            await self._send_events([event for event in waiting if event.seq > self.covered], "live")

    async def _send_events(self, events: list[Published], phase: str) -> None:
        if events:
            await self.websocket.send_text(_events_frame(events))
            metrics.EVENTS_SENT.labels(phase).inc(len(events))
            self.covered = events[-1].seq

    async def _replay(self, feed: TenantFeed) -> None:
        """Sends the matching events after `covered` from the table until it reaches what the feed has
        handed out; returns with no await between that check and the caller's attach."""
        options = self.options
        while self.covered < feed.last_seq:
            target = feed.last_seq
            async with self.db.transaction(self.tenant_id, write=False) as conn:
                rows = await repo.after(
                    conn,
                    self.tenant_id,
                    self.covered,
                    PAGE,
                    until=target,
                    types=[t.value for t in options.types],
                    conversation_id=options.conversation_id,
                    customer_id=options.customer_id,
                )
                # Retention may trim while a long replay runs: refused, never skipped silently.
                await refuse_trimmed(conn, self.tenant_id, self.covered)
            await self._send_events([Published.from_row(row) for row in rows], "replay")
            if len(rows) < PAGE:
                self.covered = target
