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


# Tags are narrow on purpose: a new message must not drop what did not change (the customer's profile,
# the other messages), or the hit ratio falls with every write.


def customer_tag(customer_id: uuid.UUID) -> str:
    """The customer's profile, identities and customer context."""
    return f"customer:{customer_id}"


def conversations_tag(customer_id: uuid.UUID) -> str:
    """The rows of the customer's conversations: states, times, Genesys IDs, which one is open."""
    return f"conversations-of:{customer_id}"


def thread_tag(conversation_id: uuid.UUID) -> str:
    """What hangs off one conversation: its messages, their statuses, participants and context."""
    return f"thread:{conversation_id}"


def ended_tag(conversation_id: uuid.UUID) -> str:
    """The conversation reached a final state (what is kept only while it is open leaves the cache)."""
    return f"ended:{conversation_id}"


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
