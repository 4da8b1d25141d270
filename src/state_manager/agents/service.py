"""The agent portal's view of a conversation, read in one transaction so that its parts agree."""

from __future__ import annotations

import uuid

from pydantic import TypeAdapter
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.agents.schemas import EARLIER_CONVERSATIONS, AgentContext
from state_manager.cache import Loaded, LookupCache
from state_manager.cache.invalidation import thread_tag
from state_manager.cache.lookups import AGENT_CONTEXT
from state_manager.context import service as context
from state_manager.conversations import service as conversations
from state_manager.customers import service as customers
from state_manager.db import Database
from state_manager.messages import service as messages


async def agent_context(
    conn: AsyncConnection, tenant_id: str, conversation_id: uuid.UUID, *, message_count: int
) -> AgentContext:
    conversation = await conversations.read(conn, tenant_id, conversation_id)
    latest = await messages.list_page(
        conn, tenant_id, conversation_id, after=None, newest_first=True, limit=message_count + 1
    )
    earlier = await conversations.list_page(
        conn,
        tenant_id,
        states=None,
        customer_id=conversation.customer_id,
        agent_id=None,
        business_number_id=None,
        started_after=None,
        started_before=None,
        before=None,
        limit=EARLIER_CONVERSATIONS + 1,
    )
    return AgentContext(
        conversation=conversation,
        participants=await conversations.participants(conn, tenant_id, conversation_id),
        customer=await customers.read(conn, tenant_id, conversation.customer_id),
        conversation_context=await context.read(conn, tenant_id, "conversation", conversation_id),
        customer_context=await context.read(conn, tenant_id, "customer", conversation.customer_id),
        messages=list(reversed(latest[:message_count])),
        more_messages=len(latest) > message_count,
        earlier_conversations=[c for c in earlier if c.id != conversation_id][:EARLIER_CONVERSATIONS],
    )


_AGENT_CONTEXT_JSON = TypeAdapter(AgentContext)


async def agent_context_cached(
    db: Database, cache: LookupCache, tenant_id: str, conversation_id: uuid.UUID, *, message_count: int
) -> bytes:
    """`agent_context` as JSON, through the cache (no ETag: the conversation's version does not change
    with its messages). Its tags cover every part: the customer's (profile, identities,
    customer context), the customer's conversations' (this one's row and the earlier ones) and this
    conversation's thread (messages, statuses, participants, conversation context)."""

    async def load() -> Loaded:
        async with db.transaction(tenant_id, write=False) as conn:
            found = await agent_context(conn, tenant_id, conversation_id, message_count=message_count)
        entry = conversations.cacheable(found.conversation)
        # The other conversations' reply windows are in the answer too.
        windows = [conversations.window_left(c) for c in found.earlier_conversations]
        valid_for = min([s for s in (entry.valid_for, *windows) if s is not None], default=None)
        tags = (*entry.tags, thread_tag(conversation_id))
        return Loaded(_AGENT_CONTEXT_JSON.dump_json(found), "", tags, valid_for)

    body, _ = await cache.get(AGENT_CONTEXT, tenant_id, f"{conversation_id}:{message_count}", load)
    return body
