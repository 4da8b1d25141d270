"""The old Node.js state-manager's HTTP API, translated onto this service's conversations and messages.

Vocabulary of the old API, and what it means here:
- a "mapping" is one of our conversations; `internalId`, `mappingId`, `mapping_id` and a mapping's `id`
  are its UUID;
- `conversationId` / `conversation_id` is the *Genesys* conversation ID (our `genesys_conversation_id`),
  `communicationId` our `genesys_communication_id`;
- `waId` is the customer's WhatsApp identity, `contactName` the customer's display name,
  `phoneNumberId` / `displayPhoneNumber` the conversation's business number;
- a mapping's `status` is `active` while the conversation is open (pending, active, waiting, error),
  else `closed` or `expired`.

Fixed on the way, not reproduced (see the contract's section 8): every read and write is scoped to the
request's tenant; `total` counts every message, not the page; a status update really applies, merged
as a lattice, so `read` before `delivered` ends `read`; epoch-second timestamps are accepted; lowercase
directions are accepted; bad input is a 400, never a 500.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.analytics import reporting
from state_manager.analytics.periods import Granularity
from state_manager.analytics.service import CONVERSATION_METRICS, MESSAGE_METRICS
from state_manager.cache import Loaded, LookupCache
from state_manager.cache.invalidation import conversations_tag, customer_tag, thread_tag
from state_manager.cache.lookups import LEGACY_MAPPING
from state_manager.compat.schemas import (
    ConversationStatusChanged,
    ConversationStatusUpdate,
    CorrelateRequest,
    FormattedMapping,
    MappingRow,
    MessageItem,
    MessagePage,
    MessageTrack,
    MessageTracked,
    Stats,
    StatusUpdate,
    StatusUpdated,
)
from state_manager.context import service as context
from state_manager.context.schemas import ContextPatch
from state_manager.conversations import service as conversations
from state_manager.conversations.lifecycle import OPEN_STATES, ConversationState
from state_manager.conversations.models import conversations as conversations_table
from state_manager.conversations.schemas import ConversationRead, TransitionRequest
from state_manager.customers import service as customers
from state_manager.customers.identity import IdentityChannel
from state_manager.customers.schemas import IdentityIn
from state_manager.db import Database
from state_manager.db.types import utcnow
from state_manager.deps import Services
from state_manager.errors import BadRequest, Conflict, NotFound
from state_manager.events.relay import EventRelay
from state_manager.messages import service as messages
from state_manager.messages.models import messages as messages_table
from state_manager.messages.schemas import (
    Correlation,
    LinkIds,
    Media,
    MessageRead,
    MessageRecord,
    MessageType,
    ReceiptIn,
)
from state_manager.messages.status import ReceiptStatus
from state_manager.observability import health
from state_manager.pagination import MAX_LIMIT
from state_manager.queues.topology import Consumed

DEFAULT_PAGE_LIMIT = 50
# The old API kept a conversation's context as one opaque JSON value; here it is one context key.
CONTEXT_KEY = "legacy_context"
_STARTED = time.monotonic()
_RECEIPTS = {status.value for status in ReceiptStatus}
# Statuses the old API knew that no receipt reports: accepted and left as they are.
_NO_RECEIPT = {"queued", "received", "processed"}
_M = TypeVar("_M", bound=BaseModel)


class CompatError(Exception):
    """An error in the old API's own shape: `{"error": message, **extra}` with the old status code."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {**extra, "error": message}


def validated(model: type[_M], body: Mapping[str, Any]) -> _M:
    try:
        return model.model_validate(dict(body))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}"
            for error in exc.errors()
        )
        raise BadRequest(problems) from exc


def requested_tenant(header: str | None, query: str | None, body: Mapping[str, Any]) -> str | None:
    """The tenant a request names: `X-Tenant-ID`, else `?tenantId=`, else `body.tenantId`."""
    given = body.get("tenantId")
    if given is not None and not isinstance(given, str):
        raise BadRequest("tenantId must be a string")
    for candidate in (header, query, given):
        if candidate:
            return candidate
    return None


def legacy_status(state: ConversationState) -> str:
    return "active" if state in OPEN_STATES else state.value


# Health


async def health_report(services: Services) -> tuple[int, dict[str, Any]]:
    """The old `/health` body, from the same checks as `/health/ready`; `rabbitmq.queue_depth` is the
    inbound queue's, as the old service meant it to be."""
    checks = await health.all_checks(services)
    database, cache, queues = checks["database"], checks["cache"], checks["queues"]
    if queues.get("depths") and services.queues is not None:
        queues["queue_depth"] = queues["depths"].get(services.queues.topology.consumed[Consumed.INBOUND])
    status = {"failed": "unhealthy", "degraded": "degraded", "ok": "healthy"}[health.verdict(checks)]
    body = {
        "status": status,
        "timestamp": dt.datetime.now(dt.UTC).isoformat(),
        "checks": {
            "database": {"latency_ms": None, **database},
            "redis": {"latency_ms": None, **cache},
            "rabbitmq": queues,
        },
        "uptime_seconds": round(time.monotonic() - _STARTED, 3),
    }
    return (503 if status == "unhealthy" else 200), body


# Mappings


async def _customer_view(
    conn: AsyncConnection, tenant_id: str, customer_id: uuid.UUID
) -> tuple[str | None, str | None]:
    """The customer's WhatsApp ID and display name."""
    customer = await customers.read(conn, tenant_id, customer_id)
    wa_id = next((i.external_id for i in customer.identities if i.channel is IdentityChannel.WHATSAPP), None)
    return wa_id, customer.display_name


async def formatted(
    conn: AsyncConnection, tenant_id: str, conversation: ConversationRead
) -> FormattedMapping:
    wa_id, contact_name = await _customer_view(conn, tenant_id, conversation.customer_id)
    return FormattedMapping(
        waId=wa_id,
        conversationId=conversation.genesys_conversation_id,
        contactName=contact_name,
        phoneNumberId=conversation.business_number_id,
        displayPhoneNumber=conversation.business_display_number,
        communicationId=conversation.genesys_communication_id,
        status=legacy_status(conversation.state),
        lastActivityAt=conversation.last_activity_at,
        isNew=conversation.genesys_conversation_id is None,
        internalId=conversation.id,
        tenantId=tenant_id,
    )


async def _mapping_row(
    conn: AsyncConnection, tenant_id: str, normalized: str
) -> tuple[MappingRow, uuid.UUID]:
    """The customer's open conversation (the most recently active, whatever the business number), and
    the customer's ID."""
    conversation = await conversations.open_by_identity(
        conn, tenant_id, IdentityChannel.WHATSAPP.value, normalized, None
    )
    _, contact_name = await _customer_view(conn, tenant_id, conversation.customer_id)
    latest = await messages.list_page(
        conn, tenant_id, conversation.id, after=None, newest_first=True, limit=1
    )
    last = latest[0] if latest else None
    row = MappingRow(
        id=conversation.id,
        wa_id=normalized,
        conversation_id=conversation.genesys_conversation_id,
        communication_id=conversation.genesys_communication_id,
        last_message_id=(last.wamid or last.genesys_message_id) if last else None,
        contact_name=contact_name,
        phone_number_id=conversation.business_number_id,
        display_phone_number=conversation.business_display_number,
        status=legacy_status(conversation.state),
        last_activity_at=conversation.last_activity_at,
        created_at=conversation.created_at,
        updated_at=conversation.updated_at,
        metadata=conversation.metadata,
        tenant_id=tenant_id,
    )
    return row, conversation.customer_id


async def _by_genesys_id(
    conn: AsyncConnection, tenant_id: str, genesys_conversation_id: str, missing: str
) -> ConversationRead:
    try:
        return await conversations.by_genesys_id(conn, tenant_id, genesys_conversation_id)
    except NotFound as exc:
        raise CompatError(404, missing) from exc


_MAPPING_ROW_JSON = TypeAdapter(MappingRow)


async def mapping_by_wa_id_cached(db: Database, cache: LookupCache, tenant_id: str, wa_id: str) -> bytes:
    """`GET /state/mapping/:waId` as JSON, through the cache: today's callers ask it for every message.
    The row shows the profile name and the latest message, hence the customer's and the thread's tags."""
    try:
        _, normalized = customers.normalized(IdentityIn(channel=IdentityChannel.WHATSAPP, external_id=wa_id))
    except (ValidationError, BadRequest) as exc:  # a wa_id no customer can have is not found
        raise CompatError(404, "Mapping not found") from exc

    async def load() -> Loaded:
        async with db.transaction(tenant_id, write=False) as conn:
            row, customer_id = await _mapping_row(conn, tenant_id, normalized)
        tags = (customer_tag(customer_id), conversations_tag(customer_id), thread_tag(row.id))
        return Loaded(_MAPPING_ROW_JSON.dump_json(row), "", tags)

    try:
        body, _ = await cache.get(LEGACY_MAPPING, tenant_id, normalized, load)
    except NotFound as exc:
        raise CompatError(404, "Mapping not found") from exc
    return body


async def mapping_by_genesys_id(
    conn: AsyncConnection, tenant_id: str, genesys_conversation_id: str
) -> FormattedMapping:
    conversation = await _by_genesys_id(conn, tenant_id, genesys_conversation_id, "Mapping not found")
    return await formatted(conn, tenant_id, conversation)


def create_mapping(body: Mapping[str, Any]) -> None:
    """`POST /state/mapping` never created anything in the old service either; it says so, as a 400/410."""
    if not body.get("waId"):
        raise CompatError(400, "waId is required")
    raise CompatError(
        410,
        "POST /state/mapping is deprecated and creates nothing: a conversation is created by the "
        "customer's first message (POST /v1/messages/inbound or /v1/inbound/whatsapp)",
    )


async def set_conversation_status(
    conn: AsyncConnection, tenant_id: str, genesys_conversation_id: str, body: Mapping[str, Any]
) -> ConversationStatusChanged:
    if not body.get("status"):
        raise CompatError(400, "status is required")
    update = validated(ConversationStatusUpdate, body)
    try:
        target = ConversationState(update.status.strip().lower())
    except ValueError as exc:
        allowed = ", ".join(state.value for state in ConversationState)
        raise CompatError(400, f"status must be one of {allowed}; not {update.status!r}") from exc
    conversation = await _by_genesys_id(conn, tenant_id, genesys_conversation_id, "Conversation not found")
    request = TransitionRequest(
        state=target, reason=update.reason or "PATCH /state/conversation", at=update.timestamp
    )
    changed = await conversations.transition(conn, tenant_id, conversation.id, request, None)
    view = await formatted(conn, tenant_id, changed)
    return ConversationStatusChanged(**view.model_dump(), updated=changed.version != conversation.version)


async def correlate(conn: AsyncConnection, tenant_id: str, body: Mapping[str, Any]) -> FormattedMapping:
    """Links the Genesys conversation to the conversation of any of its WhatsApp messages (not only the
    latest); linking again what is already linked is accepted and changes nothing."""
    if not all(body.get(f) for f in ("conversation_id", "communication_id", "whatsapp_message_id")):
        raise CompatError(400, "conversation_id, communication_id, and whatsapp_message_id are required")
    request = validated(CorrelateRequest, body)
    correlation = Correlation(
        whatsapp_message_id=request.whatsapp_message_id,
        genesys_conversation_id=request.conversation_id,
        genesys_communication_id=request.communication_id,
    )
    try:
        conversation = await messages.correlate(conn, tenant_id, correlation)
    except (NotFound, Conflict) as exc:
        raise CompatError(
            409, "Conversation already correlated or message not found", detail=exc.detail
        ) from exc
    return await formatted(conn, tenant_id, conversation)


# Messages


MAX_OFFSET = 2**31  # far beyond any page a caller reads; keeps the value in range for the driver


def page_window(query: Mapping[str, str]) -> tuple[int, int]:
    """`limit` (0 to MAX_LIMIT; larger is capped) and `offset` (0 or more) from the query string."""
    values = []
    for name, default in (("limit", DEFAULT_PAGE_LIMIT), ("offset", 0)):
        raw = query.get(name)
        if raw is None or raw == "":
            values.append(default)
            continue
        try:
            value = int(raw)
        except ValueError:
            value = -1
        if not 0 <= value <= MAX_OFFSET:
            raise BadRequest(f"{name} must be a whole number from 0 to {MAX_OFFSET}; not {raw!r}")
        values.append(value)
    limit, offset = values
    return min(limit, MAX_LIMIT), offset


def _text(message: MessageRead) -> str:
    if message.text:
        return message.text
    meta = message.metadata
    body = meta.get("body")
    for candidate in (
        meta.get("text"),
        body.get("text") if isinstance(body, dict) else None,
        meta.get("message"),
    ):
        if isinstance(candidate, str):
            return candidate
    return ""


def message_item(message: MessageRead) -> MessageItem:
    return MessageItem(
        id=message.id,
        wamid=message.wamid,
        genesysMessageId=message.genesys_message_id,
        mappingId=message.conversation_id,
        direction=message.direction.value.upper(),
        status=message.status.value,
        mediaUrl=message.media.url if message.media else None,
        text=_text(message),
        timestamp=message.occurred_at,
        deliveredAt=message.delivered_at,
        created_at=message.created_at,
    )


async def _page(
    conn: AsyncConnection, tenant_id: str, conversation_id: uuid.UUID, limit: int, offset: int
) -> MessagePage:
    m = messages_table.c
    where = (m.tenant_id == tenant_id, m.conversation_id == conversation_id)
    total = (await conn.execute(select(func.count()).select_from(messages_table).where(*where))).scalar_one()
    rows = []
    if limit:
        query = (
            select(messages_table)
            .where(*where)
            .order_by(m.occurred_at.desc(), m.id.desc())
            .limit(limit)
            .offset(offset)
        )
        rows = list((await conn.execute(query)).mappings().all())
    return MessagePage(
        messages=[message_item(messages.to_read(row)) for row in rows],
        total=int(total),
        limit=limit,
        offset=offset,
    )


async def messages_by_genesys_id(
    conn: AsyncConnection, tenant_id: str, genesys_conversation_id: str, limit: int, offset: int
) -> MessagePage:
    conversation = await _by_genesys_id(conn, tenant_id, genesys_conversation_id, "Conversation not found")
    return await _page(conn, tenant_id, conversation.id, limit, offset)


async def messages_by_mapping_id(
    conn: AsyncConnection, tenant_id: str, mapping_id: str, limit: int, offset: int
) -> MessagePage:
    try:
        conversation = await conversations.read(conn, tenant_id, uuid.UUID(mapping_id))
    except (ValueError, NotFound) as exc:
        raise CompatError(404, "Mapping not found") from exc
    return await _page(conn, tenant_id, conversation.id, limit, offset)


def _receipt_status(status: str) -> ReceiptStatus | None:
    """The receipt a status stands for; None for the statuses no receipt reports."""
    value = status.strip().lower()
    if value in _RECEIPTS:
        return ReceiptStatus(value)
    if value in _NO_RECEIPT:
        return None
    known = ", ".join(sorted(_RECEIPTS | _NO_RECEIPT))
    raise CompatError(400, f"Invalid status {status!r}; use one of {known}", success=False)


async def track_message(conn: AsyncConnection, tenant_id: str, body: Mapping[str, Any]) -> MessageTracked:
    """Records a message of a mapping once (a repeated wamid is a duplicate); a given status that a
    receipt reports (sent, delivered, read, failed) is applied as that receipt."""
    if not body.get("wamid") or not body.get("mappingId"):
        raise CompatError(400, "wamid and mappingId are required")
    track = validated(MessageTrack, body)
    receipt = _receipt_status(track.status) if track.status else None
    text = track.text
    if text is None:
        meta_text = track.metadata.get("text")
        text = meta_text if isinstance(meta_text, str) else None
    record = MessageRecord(
        direction=track.direction,
        wamid=track.wamid,
        genesys_message_id=track.genesysMessageId,
        type=MessageType.TEXT if track.mediaUrl is None else MessageType.UNKNOWN,
        text=text,
        media=None if track.mediaUrl is None else Media(url=track.mediaUrl),
        occurred_at=track.timestamp,
        metadata=track.metadata,
    )
    try:
        message, created = await messages.record(conn, tenant_id, track.mappingId, record)
    except NotFound as exc:
        raise CompatError(404, "Mapping not found") from exc
    if message.wamid != track.wamid:
        # Found by its Genesys ID, but it is another message: nothing was recorded under this wamid.
        raise CompatError(409, "genesysMessageId is already tracked for another message", id=str(message.id))
    if receipt is not None:
        at = track.timestamp or utcnow()
        await messages.apply_receipts(conn, tenant_id, [ReceiptIn(wamid=track.wamid, status=receipt, at=at)])
    return MessageTracked(duplicate=not created, id=message.id)


async def update_message_status(
    conn: AsyncConnection, tenant_id: str, wamid: str, body: Mapping[str, Any]
) -> StatusUpdated:
    """Applies the status as a receipt. Receipts merge, so they may come in any order or twice: `read`
    then a late `delivered` stays `read`, and a `sent` after `read` is recorded without going back."""
    if not body.get("status"):
        raise CompatError(400, "status is required")
    update = validated(StatusUpdate, body)
    receipt = _receipt_status(update.status)
    try:
        message = await messages.by_external_id(conn, tenant_id, "wamid", wamid)
    except NotFound as exc:
        raise CompatError(400, "Message not found", success=False) from exc
    previous = message.status.value
    if update.genesysMessageId is not None and update.genesysMessageId != message.genesys_message_id:
        try:
            message = await messages.link_ids(
                conn, tenant_id, message.id, LinkIds(genesys_message_id=update.genesysMessageId)
            )
        except Conflict as exc:
            raise CompatError(409, exc.detail, success=False) from exc
    status = message.status.value
    if receipt is not None:
        at = update.timestamp or utcnow()
        results = await messages.apply_receipts(
            conn, tenant_id, [ReceiptIn(wamid=wamid, status=receipt, at=at)]
        )
        status = results[0].status.value if results[0].status is not None else status
    return StatusUpdated(wamid=wamid, previousStatus=previous, status=status)


# Context


async def _context_owner(conn: AsyncConnection, tenant_id: str, genesys_conversation_id: str) -> uuid.UUID:
    conversation = await _by_genesys_id(conn, tenant_id, genesys_conversation_id, "Conversation not found")
    return conversation.id


async def set_context(
    conn: AsyncConnection, tenant_id: str, genesys_conversation_id: str, body: Mapping[str, Any]
) -> None:
    """Replaces the conversation's whole context value, as the old API did."""
    if body.get("context") is None:
        raise CompatError(400, "context is required")
    owner = await _context_owner(conn, tenant_id, genesys_conversation_id)
    await context.patch(
        conn, tenant_id, "conversation", owner, ContextPatch(values={CONTEXT_KEY: body["context"]})
    )


async def get_context(conn: AsyncConnection, tenant_id: str, genesys_conversation_id: str) -> Any:
    owner = await _context_owner(conn, tenant_id, genesys_conversation_id)
    found = await context.read(conn, tenant_id, "conversation", owner)
    return found.values.get(CONTEXT_KEY)


# Statistics


async def stats(db: Database, relay: EventRelay, tenant_id: str) -> Stats:
    """Counts of the tenant's own conversations and messages; "today" and the average first response
    time of today's answers (seconds; 0 when none yet) in the tenant's time zone."""
    today = await reporting.run(
        db,
        relay,
        reporting.Scope(tenant_ids=(tenant_id,), tenant_id=tenant_id),
        reporting.Params(None, None, Granularity.DAY, None, None, None),
        "conversations",
        periods=1,
    )
    midnight = dt.datetime.fromisoformat(today["from"].isoformat()).astimezone(dt.UTC)
    c, m = conversations_table.c, messages_table.c
    async with db.transaction(tenant_id, write=False) as conn:
        by_state = {
            str(state): int(count)
            for state, count in (
                await conn.execute(
                    select(c.state, func.count()).where(c.tenant_id == tenant_id).group_by(c.state)
                )
            ).all()
        }
        total_messages, messages_today = (
            await conn.execute(
                select(func.count(), func.count().filter(m.occurred_at >= midnight)).where(
                    m.tenant_id == tenant_id
                )
            )
        ).one()
    active = sum(count for state, count in by_state.items() if ConversationState(state) in OPEN_STATES)
    return Stats(
        totalMappings=sum(by_state.values()),
        totalMessages=int(total_messages),
        activeConversations=active,
        activeConversationsRaw=str(active),
        waitingConversations=by_state.get(ConversationState.WAITING.value, 0),
        totalMessagesToday=int(messages_today),
        avgResponseTime=today["totals"]["first_response_avg_seconds"] or 0,
        timestamp=utcnow(),
        tenantId=tenant_id,
    )


def _sum_of(*names: str) -> Callable[[Mapping[str, Any]], Any]:
    return lambda row: sum(row[name] or 0 for name in names)


# What `metric` may name: every figure of the conversation and message reports by its own name, and the
# names the old service's callers are likely to send.
_ALIASES: dict[str, tuple[str, Callable[[Mapping[str, Any]], Any]]] = {
    "conversations": ("conversations", itemgetter("started")),
    "messages": ("messages", _sum_of("inbound", "outbound")),
    "response_time": ("conversations", itemgetter("first_response_avg_seconds")),
    "resolution_time": ("conversations", itemgetter("resolution_avg_seconds")),
}
_INTERVALS = {
    "hour": Granularity.HOUR,
    "hourly": Granularity.HOUR,
    "1h": Granularity.HOUR,
    "day": Granularity.DAY,
    "daily": Granularity.DAY,
    "1d": Granularity.DAY,
    "week": Granularity.WEEK,
    "weekly": Granularity.WEEK,
    "1w": Granularity.WEEK,
}


def _metric(name: str) -> tuple[str, Callable[[Mapping[str, Any]], Any]]:
    if name in _ALIASES:
        return _ALIASES[name]
    for report, names in (("conversations", CONVERSATION_METRICS), ("messages", MESSAGE_METRICS)):
        if name in names:
            return report, itemgetter(name)
    known = sorted({*_ALIASES, *CONVERSATION_METRICS, *MESSAGE_METRICS})
    raise CompatError(400, f"unknown metric {name!r}; one of: {', '.join(known)}")


async def analytics_metrics(
    db: Database, relay: EventRelay, tenant_id: str, query: Mapping[str, str]
) -> dict[str, Any]:
    """One metric per period: `{metric, interval, from, to, timezone, data: [{timestamp, value}]}`."""
    metric, interval = query.get("metric") or "conversations", query.get("interval") or "day"
    if interval not in _INTERVALS:
        raise CompatError(400, f"unknown interval {interval!r}; one of: hour, day, week")
    report, value_of = _metric(metric)
    params = reporting.Params(query.get("from"), query.get("to"), _INTERVALS[interval], None, None, None)
    found = await reporting.run(
        db, relay, reporting.Scope(tenant_ids=(tenant_id,), tenant_id=tenant_id), params, report
    )
    return {
        "metric": metric,
        "interval": interval,
        "from": found["from"].isoformat(),
        "to": found["to"].isoformat(),
        "timezone": found["timezone"],
        "data": [{"timestamp": row["period"], "value": value_of(row)} for row in found["series"]],
    }
