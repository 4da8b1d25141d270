"""Recording a customer's WhatsApp message: the hottest write path, chosen once per database.

Every backend has the general path: one transaction through SQLAlchemy Core that finds or creates the
customer and the open conversation and records the message (`service.record_inbound`). On PostgreSQL the
same work is one call of the stored function `sm_record_inbound` (migration 0002): one round trip instead
of six to eleven, which is what lets one instance record well over a thousand messages a second.
"""

from __future__ import annotations

import functools
import uuid

import asyncpg
import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.cache import LookupCache
from state_manager.cache.invalidation import changed, conversations_tag, customer_tag, thread_tag
from state_manager.conversations.lifecycle import ConversationState
from state_manager.conversations.repository import REPLY_WINDOW
from state_manager.customers import service as customers
from state_manager.customers.identity import IdentityChannel, phone_from_wa_id
from state_manager.customers.schemas import IdentityIn
from state_manager.db import Database
from state_manager.db.database import RETRY_AFTER_SECONDS, hooks_of
from state_manager.db.postgres import PostgresDatabase
from state_manager.db.types import utcnow
from state_manager.errors import LockTimeout, Unavailable
from state_manager.messages import media_urls, service
from state_manager.messages.schemas import InboundMessage, InboundRecorded

_RECORD_INBOUND = (
    "SELECT customer_id, customer_created, conversation_id, conversation_created, conversation_state,"
    " genesys_conversation_id, message_id, duplicate, profile_changed FROM sm_record_inbound("
    + ", ".join(f"${n}" for n in range(1, 22))
    + ")"
)


@functools.lru_cache(maxsize=65_536)
def _phone_of(wa_id: str) -> str | None:
    # Parsing with phonenumbers costs more than the rest of the request; customers write again and again.
    return phone_from_wa_id(wa_id)


def _changed_by(recorded: InboundRecorded, profile_changed: bool) -> tuple[str, ...]:
    """What the stored function changed: a new message adds to the conversation and its activity; a
    duplicate changes nothing, except a profile name refreshed before the duplicate was found."""
    tags = (
        []
        if recorded.duplicate
        else [conversations_tag(recorded.customer_id), thread_tag(recorded.conversation_id)]
    )
    if profile_changed:
        tags.append(customer_tag(recorded.customer_id))
    return tuple(tags)


class InboundRecorder:
    """The general path, on any database."""

    def __init__(self, db: Database, cache: LookupCache) -> None:
        self.db = db
        self.cache = cache

    async def record(self, tenant_id: str, data: InboundMessage) -> InboundRecorded:
        async with self.cache.publishing_changes(), self.db.transaction(tenant_id, write=True) as conn:
            return await self.record_in(conn, tenant_id, data)

    async def record_in(self, conn: AsyncConnection, tenant_id: str, data: InboundMessage) -> InboundRecorded:
        """The same, in the caller's transaction (whose `publishing_changes` announces the customer)."""
        return await service.record_inbound(conn, tenant_id, data)


class PostgresInboundRecorder(InboundRecorder):
    db: PostgresDatabase

    def __init__(self, db: PostgresDatabase, cache: LookupCache) -> None:
        super().__init__(db, cache)

    async def record(self, tenant_id: str, data: InboundMessage) -> InboundRecorded:
        async with self.db.driver_connection() as connection:
            recorded, profile_changed = await self._call(connection, tenant_id, data)
        if not recorded.duplicate or profile_changed:
            self.db.committed(tenant_id)  # the function wrote events (migration 0006)
        await self.cache.publish({(tenant_id, tag) for tag in _changed_by(recorded, profile_changed)})
        return recorded

    async def record_in(self, conn: AsyncConnection, tenant_id: str, data: InboundMessage) -> InboundRecorded:
        driver = (await conn.get_raw_connection()).driver_connection
        assert isinstance(driver, asyncpg.Connection)
        recorded, profile_changed = await self._call(driver, tenant_id, data)
        changed(tenant_id, *_changed_by(recorded, profile_changed))
        hooks_of(conn).committed.add(tenant_id)
        return recorded

    async def _call(
        self, connection: asyncpg.Connection, tenant_id: str, data: InboundMessage
    ) -> tuple[InboundRecorded, bool]:
        """What was recorded, and whether the customer's profile name changed."""
        media_urls.check_media(data.media)
        wa_id = customers.normalized(
            IdentityIn(channel=IdentityChannel.WHATSAPP, external_id=data.wa_id), "wa_id"
        )[1]
        now = utcnow()
        media = data.media
        try:
            row = await connection.fetchrow(
                _RECORD_INBOUND,
                tenant_id,
                wa_id,
                _phone_of(wa_id),
                data.business_number_id,
                data.business_display_number,
                data.profile_name or None,  # an empty profile name never replaces a known one
                uuid.uuid4(),  # the customer's ID, if it is new
                uuid.uuid4(),  # the conversation's, if one is opened
                uuid.uuid4(),  # its first state change's
                service.new_message_id(),
                data.wamid,
                data.type.value,
                data.text,
                media.url if media else None,
                media.mime_type if media else None,
                media.filename if media else None,
                media.caption if media else None,
                orjson.dumps(data.metadata).decode(),
                data.occurred_at or now,
                now,
                REPLY_WINDOW,
            )
        except (asyncpg.SerializationError, asyncpg.DeadlockDetectedError) as exc:
            raise Unavailable(
                "the conversation kept changing while it was being opened; retry",
                headers={"Retry-After": RETRY_AFTER_SECONDS},
            ) from exc
        except asyncpg.LockNotAvailableError as exc:  # the caller's transaction set a lock_timeout
            raise LockTimeout(
                "a row this needs stayed locked by other work; retry",
                headers={"Retry-After": RETRY_AFTER_SECONDS},
            ) from exc
        assert row is not None
        recorded = InboundRecorded(
            customer_id=row["customer_id"],
            customer_created=row["customer_created"],
            conversation_id=row["conversation_id"],
            conversation_created=row["conversation_created"],
            conversation_state=ConversationState(row["conversation_state"]),
            genesys_conversation_id=row["genesys_conversation_id"],
            message_id=row["message_id"],
            duplicate=row["duplicate"],
        )
        return recorded, row["profile_changed"]


def inbound_recorder(db: Database, cache: LookupCache) -> InboundRecorder:
    """The recorder for this database; called once, at start-up."""
    if isinstance(db, PostgresDatabase):
        return PostgresInboundRecorder(db, cache)
    return InboundRecorder(db, cache)
