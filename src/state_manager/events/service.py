"""The event machinery of one process, opened once: bus, relay and hub; and the event pages of the API."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.db import Database
from state_manager.errors import EventsTrimmed
from state_manager.events import repository as repo
from state_manager.events.bus import EventBus, open_event_bus
from state_manager.events.hub import EventHub
from state_manager.events.relay import EventRelay
from state_manager.events.schemas import EventPage, EventRead
from state_manager.events.types import EventType
from state_manager.settings import Settings


@dataclass(slots=True)
class EventSystem:
    bus: EventBus
    relay: EventRelay
    hub: EventHub
    ws_backlog: int

    async def start(self) -> None:
        await self.bus.start(self.hub.deliver)
        self.hub.start()
        self.relay.start()

    async def close(self) -> None:
        await self.relay.close()
        await self.hub.close()
        await self.bus.close()

    def report(self) -> dict[str, Any]:
        return {**self.bus.report(), "relay": self.relay.report(), "subscribers": self.hub.subscriber_count}


def open_events(settings: Settings, db: Database) -> EventSystem:
    bus = open_event_bus(settings)
    return EventSystem(
        bus=bus,
        relay=EventRelay(db, bus, sweep_seconds=settings.events_sweep_seconds),
        hub=EventHub(db, catch_up_seconds=settings.events_catchup_seconds),
        ws_backlog=settings.events_ws_backlog,
    )


async def refuse_trimmed(conn: AsyncConnection, tenant_id: str, after: int) -> None:
    """Resuming from before events that retention removed would skip them without a word: refused,
    saying where the kept events start."""
    trimmed = await repo.trimmed_through(conn, tenant_id)
    if after < trimmed:
        raise EventsTrimmed(
            f"events up to {trimmed} were removed by retention; resume with after={trimmed}",
            extra={"trimmed_through": trimmed},
        )


async def page(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    after: int,
    limit: int,
    types: list[EventType],
    conversation_id: uuid.UUID | None,
    customer_id: uuid.UUID | None,
) -> EventPage:
    head = await repo.head(conn, tenant_id)
    rows = await repo.after(
        conn,
        tenant_id,
        after,
        limit,
        until=head,
        types=[t.value for t in types],
        conversation_id=conversation_id,
        customer_id=customer_id,
    )
    # After the read: a trim that committed before it is seen here (statements of one transaction see
    # ever newer commits on PostgreSQL), so no page silently skips trimmed events.
    await refuse_trimmed(conn, tenant_id, after)
    # A short page covered everything up to the head, whether or not it matched the filters.
    next_after = rows[-1]["seq"] if len(rows) == limit else max(after, head)
    return EventPage(
        events=[EventRead.model_validate(dict(row)) for row in rows], head=head, next_after=next_after
    )
