"""What a write changed, named while its transaction runs, so that the caches drop it once it commits.

Repository functions that change what a cached lookup answers call `changed` (or one of the helpers) with
the tags of the rows they wrote; `LookupCache.publishing_changes` wraps the transaction and, once it has
committed, drops every entry carrying those tags in every process. A transaction that fails publishes
nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from state_manager.cache.local import Tag

_touched: ContextVar[set[Tag] | None] = ContextVar("cache_tags_touched", default=None)


def customer_tag(customer_id: uuid.UUID) -> str:
    """The customer's profile and identities, and which conversations are theirs (and open)."""
    return f"customer:{customer_id}"


def conversation_tag(conversation_id: uuid.UUID) -> str:
    """What hangs off one conversation: its participants, context and messages."""
    return f"conversation:{conversation_id}"


def message_tag(message_id: uuid.UUID) -> str:
    return f"message:{message_id}"


def changed(tenant_id: str, *tags: str) -> None:
    """Call from a write, inside its transaction, with the tags of what it changed."""
    touched = _touched.get()
    if touched is not None:
        touched.update((tenant_id, tag) for tag in tags)


def customer_changed(tenant_id: str, customer_id: uuid.UUID) -> None:
    changed(tenant_id, customer_tag(customer_id))


@contextmanager
def collecting() -> Iterator[set[Tag]]:
    """The tags named by writes inside the block."""
    touched: set[Tag] = set()
    reset = _touched.set(touched)
    try:
        yield touched
    finally:
        _touched.reset(reset)
