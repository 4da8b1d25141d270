"""RabbitMQ consumers of the existing service's five queues, and the publisher of its outputs.

What the existing service gets wrong, and what this one does instead:
- A poison message was requeued forever (about 130 times a second). Here a message that failed for a
  passing reason (the database away) is retried in place with exponential backoff, at most
  RABBITMQ_MAX_RETRIES times, then sent to the DLQ in the existing envelope; one that can never succeed
  (bad payload, unknown conversation) goes to the DLQ at once. A message is acked only once its outcome
  is committed, or confirmed by the broker in the DLQ.
- After a reconnect, consumption silently stopped. Here one loop owns the connection; every time it
  connects it declares the queues and registers every consumer again, and `/health` says what it sees.
- Up to 100 messages of one customer ran at once, in any order. Here messages with the same key (one
  customer's, or one message's receipts) run one after another in the order they came, and every queue
  is consumed by one process at a time: consumers are exclusive (a consume flag, not a queue argument),
  so another instance's consumer is refused and waits as a standby, taking over when the first goes away.
- Output was published before (or without) a commit, without confirms. Here it is written to the outbox
  with the state change and published with publisher confirms after the commit (queues/outbox.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.cache import LookupCache
from state_manager.db import Database
from state_manager.errors import BadRequest, NotFound, StateManagerError
from state_manager.messages.inbound import InboundRecorder
from state_manager.observability import metrics
from state_manager.observability.errors import error_summary
from state_manager.queues import handlers
from state_manager.queues.outbox import OutboxRelay, Outgoing
from state_manager.queues.schemas import DlqReason, dlq_envelope
from state_manager.queues.topology import Consumed, Topology
from state_manager.settings import Settings
from state_manager.strict_json import parse_body
from state_manager.tenants.auth import Authenticator, valid_tenant_id

log = logging.getLogger(__name__)

_CONNECT_BACKOFF_MAX_SECONDS = 15.0
_PUBLISH_TIMEOUT_SECONDS = 10.0
_DEPTH_CACHE_SECONDS = 5.0


class BrokerUnavailable(Exception):
    pass


def _event_on_close(closable: AbstractConnection | AbstractChannel) -> asyncio.Event:
    closed = asyncio.Event()
    closable.close_callbacks.add(lambda *_: closed.set())
    return closed


@dataclass(slots=True)
class QueueStatus:
    """What one consumed queue's consumer is doing, as `/health` reports it."""

    queue: str
    state: str = "connecting"  # connecting | consuming | standby | disconnected
    processed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    last_error: str | None = None


class KeyedSerial:
    """Runs the jobs of one key one after another, in the order they were submitted; jobs of different keys
    run at the same time. A job must not raise."""

    def __init__(self) -> None:
        self._waiting: dict[str, deque[Callable[[], Awaitable[None]]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, key: str, job: Callable[[], Awaitable[None]]) -> None:
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.append(job)
            return
        self._waiting[key] = deque([job])
        task = asyncio.create_task(self._drain(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, key: str) -> None:
        waiting = self._waiting[key]
        try:
            while waiting:
                await waiting[0]()
                waiting.popleft()
        finally:
            del self._waiting[key]

    @property
    def busy(self) -> int:
        return sum(len(w) for w in self._waiting.values())

    async def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class QueueConsumers:
    """Owns the RabbitMQ connection: consumers, DLQ, the outbox relay's publisher, and their state."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        cache: LookupCache,
        auth: Authenticator,
        inbound: InboundRecorder,
    ) -> None:
        assert settings.rabbitmq_url is not None
        self.settings = settings
        self.db = db
        self.cache = cache
        self.auth = auth
        self.topology = Topology.from_settings(settings)
        self.queues = {consumed: QueueStatus(name) for consumed, name in self.topology.consumed.items()}
        self.connected = False
        self.last_error: str | None = None
        self.relay = OutboxRelay(db, self._publish, sweep_seconds=settings.outbox_sweep_seconds)
        self._serial = KeyedSerial()
        self._work = handlers.Work(self._write, inbound)
        # Handlers at work at once: fewer than the pool's connections, so that the relay and HTTP requests
        # always find one (the prefetch may hold far more messages than that, waiting their turn).
        self._running = asyncio.Semaphore(
            max(1, min(settings.rabbitmq_prefetch_count, settings.db_pool_size // 2))
        )
        self._generation = 0  # bumped per connection: a delivery of a closed channel is not processed
        self._publisher: AbstractChannel | None = None
        self._connection: AbstractConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._depths: tuple[float, dict[str, int]] = (0.0, {})

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name="rabbitmq-connection"),
            asyncio.create_task(self.relay.run(), name="outbox-relay"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._serial.cancel()
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()

    # The connection

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                connection = await aio_pika.connect(
                    self.settings.rabbitmq_url,
                    heartbeat=self.settings.rabbitmq_heartbeat,
                    timeout=10,
                    client_properties={"connection_name": "state-manager"},
                )
            except Exception as exc:
                self._disconnected(exc)
                failures += 1
                delay = min(_CONNECT_BACKOFF_MAX_SECONDS, 0.5 * 2 ** min(failures, 6))
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                continue
            failures = 0
            self._connection = connection
            try:
                await self._serve(connection)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._disconnected(exc)
            finally:
                self._publisher = None
                with contextlib.suppress(Exception):
                    await connection.close()
            await asyncio.sleep(random.uniform(0.2, 1.0))

    def _disconnected(self, exc: BaseException | None) -> None:
        self.connected = False
        self._generation += 1
        for status in self.queues.values():
            status.state = "disconnected"
        if exc is not None:
            self.last_error = error_summary(exc)
            log.warning("RabbitMQ unavailable; reconnecting", extra={"error": f"{type(exc).__name__}: {exc}"})

    async def _serve(self, connection: AbstractConnection) -> None:
        closed = _event_on_close(connection)
        self._generation += 1
        generation = self._generation
        setup = await connection.channel(publisher_confirms=False)
        for name in self.topology.every_queue:
            # Exactly today's declaration: durable, no arguments.
            await setup.declare_queue(name, durable=True)
        await setup.close()
        self._publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
        self.connected = True
        self.last_error = None
        log.info("RabbitMQ connected; consuming", extra={"queues": list(self.topology.consumed.values())})
        self.relay.notify_all()  # output that waited for the broker goes out now
        holders = [
            asyncio.create_task(self._hold(connection, consumed, generation)) for consumed in self.queues
        ]
        try:
            await closed.wait()
        finally:
            for holder in holders:
                holder.cancel()
            await asyncio.gather(*holders, return_exceptions=True)
            self._disconnected(None)

    async def _hold(self, connection: AbstractConnection, consumed: Consumed, generation: int) -> None:
        """Consumes `consumed` exclusively; while another process does, waits as a standby and asks again."""
        status = self.queues[consumed]
        while not connection.is_closed:
            try:
                channel = await connection.channel(publisher_confirms=False)
                channel_closed = _event_on_close(channel)
                await channel.set_qos(prefetch_count=self.settings.rabbitmq_prefetch_count)
                queue = await channel.get_queue(status.queue, ensure=False)
                await queue.consume(
                    lambda message: self._received(consumed, generation, message), exclusive=True
                )
            except aiormq.exceptions.ChannelAccessRefused:
                status.state = "standby"  # another instance consumes it; the channel was closed
                await asyncio.sleep(self.settings.rabbitmq_standby_retry_seconds)
                continue
            except Exception as exc:
                # A channel that would not open (the server closed it, say): ask again, never give up on
                # the queue while the connection lives.
                status.state = "connecting"
                status.last_error = error_summary(exc)
                log.warning("cannot consume; trying again", extra={"queue": status.queue, "error": str(exc)})
                await asyncio.sleep(self.settings.rabbitmq_standby_retry_seconds)
                continue
            status.state = "consuming"
            await channel_closed.wait()
            status.state = "connecting"

    # Processing

    async def _received(self, consumed: Consumed, generation: int, message: AbstractIncomingMessage) -> None:
        """Called in delivery order; queues the message behind earlier ones with the same key."""
        document: dict[str, Any] | None = None
        problem: str | None = None
        try:
            parsed = parse_body(message.body)
        except (json.JSONDecodeError, StateManagerError) as exc:
            problem = f"not a JSON message this service can read: {exc}"
        else:
            if isinstance(parsed, dict):
                document = parsed
            else:
                problem = "the message is not a JSON object"
        if document is None:
            key = f"unreadable:{uuid.uuid4()}"
        else:
            tenant = document.get("tenantId") or self.settings.default_tenant_id
            key = handlers.ordering_key(consumed, str(tenant), document)
        self._serial.submit(key, lambda: self._process(consumed, generation, message, document, problem))

    async def _process(
        self,
        consumed: Consumed,
        generation: int,
        message: AbstractIncomingMessage,
        document: dict[str, Any] | None,
        problem: str | None,
    ) -> None:
        status = self.queues[consumed]
        retries = 0
        tenant_id: str | None = None
        while generation == self._generation:
            try:
                if document is None:
                    raise handlers.Rejected(DlqReason.INVALID_PAYLOAD, problem or "unreadable")
                async with self._running:
                    tenant_id = await self._tenant_of(document)
                    delivery = handlers.Delivery(tenant_id, document, handlers.digest(message.body))
                    await handlers.HANDLERS[consumed](self._work, delivery)
            except Exception as exc:
                reason, passing = handlers.classify(exc)
                detail = exc.message if isinstance(exc, handlers.Rejected) else f"{type(exc).__name__}: {exc}"
                # What /health/ready shows (no key needed): the reason or the class, not the text.
                status.last_error = error_summary(exc) if passing else f"rejected: {reason.value}"
                if passing and retries < self.settings.rabbitmq_max_retries:
                    retries += 1
                    status.retried += 1
                    metrics.QUEUE_MESSAGES.labels(status.queue, "retried").inc()
                    log.warning(
                        "queue message failed; retrying",
                        extra={"queue": status.queue, "retry": retries, "error": detail},
                    )
                    await asyncio.sleep(self._backoff(retries))
                    continue
                original = document if document is not None else message.body.decode(errors="replace")
                if not await self._dead_letter(original, reason, detail, retries, status):
                    return  # not acked: the broker delivers it again
                await self._ack(message)
                return
            status.processed += 1
            metrics.QUEUE_MESSAGES.labels(status.queue, "processed").inc()
            await self._ack(message)
            self.relay.notify(tenant_id)
            return
        # The channel the message came on has closed: the broker delivers it again on the next one.

    def _backoff(self, retry: int) -> float:
        ceiling = self.settings.rabbitmq_retry_max_seconds
        delay: float = min(ceiling, self.settings.rabbitmq_retry_base_seconds * 2.0 ** (retry - 1))
        return delay * random.uniform(0.8, 1.2)

    async def _ack(self, message: AbstractIncomingMessage) -> None:
        try:
            await message.ack()
        except Exception as exc:
            # The channel closed after the commit: the broker delivers the message again, and processing
            # it again changes nothing (every handler is idempotent).
            log.info("ack lost; the message will be redelivered", extra={"error": str(exc)})

    async def _dead_letter(
        self, original: Any, reason: DlqReason, detail: str, retries: int, status: QueueStatus
    ) -> bool:
        envelope = dlq_envelope(original, reason, detail, retries, status.queue)
        try:
            await self._confirmed(self.topology.dlq, json.dumps(envelope).encode(), str(uuid.uuid4()))
        except Exception as exc:
            log.warning("DLQ publish failed; the message stays queued", extra={"error": str(exc)})
            return False
        status.dead_lettered += 1
        metrics.QUEUE_MESSAGES.labels(status.queue, f"dlq:{reason.value}").inc()
        log.warning(
            "queue message sent to the DLQ",
            extra={"queue": status.queue, "reason": reason.value, "error": detail, "retries": retries},
        )
        return True

    async def _tenant_of(self, document: dict[str, Any]) -> str:
        given = document.get("tenantId")
        if given is None or given == "":
            return self.settings.default_tenant_id
        if not isinstance(given, str):
            raise handlers.Rejected(DlqReason.INVALID_PAYLOAD, "tenantId must be a string")
        try:
            return await self.auth.known_tenant(valid_tenant_id(given))
        except (BadRequest, NotFound) as exc:
            raise handlers.Rejected(
                DlqReason.INVALID_PAYLOAD, f"tenantId {given[:80]!r}: {exc.detail}"
            ) from exc

    @asynccontextmanager
    async def _write(self, tenant_id: str) -> AsyncIterator[AsyncConnection]:
        # A bounded wait for locks: a message stuck behind a held row is retried with backoff (and its key's
        # later messages wait), instead of holding a connection for as long as the row stays locked.
        async with (
            self.cache.publishing_changes(),
            self.db.transaction(
                tenant_id, write=True, lock_timeout=self.settings.queue_lock_timeout_seconds
            ) as conn,
        ):
            yield conn

    # Publishing

    async def _confirmed(self, queue: str, body: bytes, message_id: str) -> None:
        channel = self._publisher
        if channel is None or channel.is_closed:
            raise BrokerUnavailable("not connected to RabbitMQ")
        # aiormq's own timeout does not cover every wait: a publish caught by a dropped connection was seen
        # waiting for good (the outbox relay stuck inside its transaction, every later output held back).
        async with asyncio.timeout(_PUBLISH_TIMEOUT_SECONDS):
            await channel.default_exchange.publish(
                aio_pika.Message(
                    body,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    content_type="application/json",
                    message_id=message_id,
                ),
                routing_key=queue,
                mandatory=True,
                timeout=_PUBLISH_TIMEOUT_SECONDS,
            )

    async def _publish(self, batch: Sequence[Outgoing]) -> None:
        """Publishes in order (the channel writes in call order) and returns once every one is confirmed."""
        results = await asyncio.gather(
            *(
                self._confirmed(self.topology.outputs[item.destination], item.body, str(item.id))
                for item in batch
            ),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise failures[0]
        for item in batch:
            metrics.QUEUE_PUBLISHED.labels(self.topology.outputs[item.destination]).inc()

    # Health

    async def depths(self) -> dict[str, int]:
        """Messages waiting in each consumed queue, read at most every few seconds on a channel of its own:
        a failing check closes that channel, never the consumers'."""
        read_at, cached = self._depths
        if time.monotonic() - read_at < _DEPTH_CACHE_SECONDS:
            return cached
        connection = self._connection
        if connection is None or connection.is_closed or not self.connected:
            raise BrokerUnavailable("not connected to RabbitMQ")
        channel = await connection.channel(publisher_confirms=False)
        try:
            found = {}
            for name in self.topology.consumed.values():
                queue = await channel.declare_queue(name, passive=True)
                found[name] = queue.declaration_result.message_count or 0
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        self._depths = (time.monotonic(), found)
        return found

    def report(self) -> dict[str, Any]:
        """The consumers' state as this process sees it; asks the broker nothing."""
        states = {status.queue: status.state for status in self.queues.values()}
        if not self.connected:
            overall = "error"
        elif all(state in ("consuming", "standby") for state in states.values()):
            overall = "ok"
        else:
            overall = "starting"
        return {
            "status": overall,
            "connected": self.connected,
            "last_error": self.last_error,
            "in_progress": self._serial.busy,
            "outbox": {"published": self.relay.published, "last_error": self.relay.last_error},
            "queues": {
                status.queue: {
                    "state": status.state,
                    "processed": status.processed,
                    "retried": status.retried,
                    "dead_lettered": status.dead_lettered,
                    "last_error": status.last_error,
                }
                for status in self.queues.values()
            },
        }
