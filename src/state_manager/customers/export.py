"""Exporting everything the service holds about a customer as one JSON document, streamed.

The document (format "state-manager.customer-export", version 1; docs/data-rights.md shows it):

    {"format": "state-manager.customer-export", "format_version": 1,
     "tenant_id": "...", "customer_id": "...", "exported_at": "...",
     "customer": <as GET /v1/customers/{id}>,
     "customer_context": <as GET /v1/customers/{id}/context>,
     "conversations": [
       {"conversation": <as GET /v1/conversations/{id}>,
        "participants": [<as GET …/participants>], "state_history": [<as GET …/history>],
        "context": <as GET …/context>,
        "messages": [<as GET /v1/messages/{id}>, … oldest first]}, … oldest first],
     "events": [<as GET /v1/events, `seq` null while not yet numbered>, … in the order written],
     "audit_log": [<as GET /v1/audit>, … oldest first]}

The export is recorded (audit log and a customer.exported event) and committed before the first byte is
sent: data never leaves without a record of it, even if the download then fails half-way (a truncated
document is not valid JSON, so a client can tell). The document itself is read afterwards in one read
transaction, a page at a time, so that memory stays bounded whatever the number of messages; the export's
own audit entry is in it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

import orjson
from pydantic import BaseModel
from sqlalchemy import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from state_manager.audit import repository as audit_repo
from state_manager.audit import service as audit
from state_manager.audit.schemas import AuditEntryRead
from state_manager.context import service as context
from state_manager.conversations import repository as conversations_repo
from state_manager.conversations import service as conversations
from state_manager.conversations.schemas import ParticipantRead, StateChangeRead
from state_manager.customers import repository as repo
from state_manager.customers import rights_repository as rights_repo
from state_manager.customers import service as customers
from state_manager.db import Database
from state_manager.db.types import utcnow
from state_manager.errors import NotFound
from state_manager.events.emit import emit
from state_manager.events.types import EventType
from state_manager.messages import repository as messages_repo
from state_manager.messages import service as messages

FORMAT = "state-manager.customer-export"
FORMAT_VERSION = 1
ACTION = "customer.exported"
PAGE = 500


async def record_export(conn: AsyncConnection, tenant_id: str, customer_id: uuid.UUID, *, actor: str) -> None:
    """Audits and announces the export, in the caller's transaction; NotFound for an unknown customer."""
    if await repo.get(conn, tenant_id, customer_id) is None:
        raise NotFound(f"customer {customer_id} not found")
    audit_id = await audit.record(
        conn,
        tenant_id,
        actor=actor,
        action=ACTION,
        subject_type="customer",
        subject_id=str(customer_id),
        details={"format_version": FORMAT_VERSION},
    )
    emit(conn, tenant_id, EventType.CUSTOMER_EXPORTED, {"audit_id": str(audit_id)}, customer_id=customer_id)


def _json(value: BaseModel) -> bytes:
    return value.model_dump_json().encode()


def _array(items: Iterable[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


def _event(row: RowMapping) -> bytes:
    document = {
        "seq": row["seq"],
        "tenant_id": row["tenant_id"],
        "type": row["type"],
        **{
            # asyncpg's UUID is not uuid.UUID to orjson
            field: None if row[field] is None else str(row[field])
            for field in ("conversation_id", "customer_id", "message_id")
        },
        "occurred_at": row["occurred_at"],
        "payload": row["payload"],
    }
    return orjson.dumps(document, option=orjson.OPT_UTC_Z)


async def export_document(db: Database, tenant_id: str, customer_id: uuid.UUID) -> AsyncIterator[bytes]:
    """The export document, in pieces (see the module's docstring)."""
    async with db.transaction(tenant_id, write=False) as conn:
        customer = await customers.read(conn, tenant_id, customer_id)
        head: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tenant_id": tenant_id,
            "customer_id": str(customer_id),
            "exported_at": utcnow(),
        }
        yield orjson.dumps(head, option=orjson.OPT_UTC_Z)[:-1]  # the object stays open
        yield b',"customer":' + _json(customer)
        yield b',"customer_context":' + _json(await context.read(conn, tenant_id, "customer", customer_id))
        yield b',"conversations":['
        for index, row in enumerate(await rights_repo.conversations_of(conn, tenant_id, customer_id)):
            async for piece in _conversation(conn, tenant_id, row, first=index == 0):
                yield piece
        yield b'],"events":['
        people = await rights_repo.person_ids(conn, tenant_id, customer_id)
        after_id = 0
        while True:
            events = await rights_repo.events_about(conn, tenant_id, people, after_id=after_id, limit=PAGE)
            if events:
                yield (b"," if after_id else b"") + b",".join(_event(row) for row in events)
            if len(events) < PAGE:
                break
            after_id = events[-1]["id"]
        yield b'],"audit_log":['
        after = None
        while True:
            entries = await audit_repo.oldest_first_about(
                conn, tenant_id, "customer", str(customer_id), after=after, limit=PAGE
            )
            if entries:
                items = (_json(AuditEntryRead.model_validate(dict(row))) for row in entries)
                yield (b"," if after else b"") + b",".join(items)
            if len(entries) < PAGE:
                break
            after = (entries[-1]["occurred_at"], entries[-1]["id"])
        yield b"]}"


async def _conversation(
    conn: AsyncConnection, tenant_id: str, row: RowMapping, *, first: bool
) -> AsyncIterator[bytes]:
    conversation_id = row["id"]
    participants = await conversations_repo.participants_of(conn, tenant_id, conversation_id)
    history = await conversations_repo.state_history(conn, tenant_id, conversation_id)
    yield (
        (b"" if first else b",")
        + b'{"conversation":'
        + _json(conversations.to_read(row))
        + b',"participants":'
        + _array(_json(ParticipantRead.model_validate(dict(p))) for p in participants)
        + b',"state_history":'
        + _array(_json(StateChangeRead.model_validate(dict(h))) for h in history)
        + b',"context":'
        + _json(await context.read(conn, tenant_id, "conversation", conversation_id))
        + b',"messages":['
    )
    after = None
    while True:
        page = await messages_repo.list_page(
            conn, tenant_id, conversation_id, after=after, newest_first=False, limit=PAGE
        )
        if page:
            yield (b"," if after else b"") + b",".join(_json(messages.to_read(m)) for m in page)
        if len(page) < PAGE:
            break
        after = (page[-1]["occurred_at"], page[-1]["id"])
    yield b"]}"
