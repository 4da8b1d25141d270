"""A per-process cache of serialised read models, dropped by customer when a write commits.

Hot lookups (the open conversation of a WhatsApp user) are answered from memory, with no I/O at all.
Correctness rests on three rules:
- Every write that changes what a cached answer would say names the customer it touched
  (`changes.customer_changed`); after the commit, every process drops that customer's entries
  (`invalidation.py` carries the news across processes).
- A reader takes a token before it reads the database, and its answer is kept only if no invalidation
  for that customer (and no clear) happened since: a read that raced a write is never cached.
- Entries expire after a TTL in any case, so an invalidation lost with a broken connection to Redis
  costs at most that long; the subscriber also clears everything when it reconnects.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CachedRead:
    body: bytes
    etag: str
    customer: tuple[str, uuid.UUID]
    expires_at: float


class ReadCache:
    """Bounded LRU of read models. `ttl_seconds=0` turns it off (every lookup reads the database)."""

    def __init__(self, ttl_seconds: float, max_entries: int = 100_000) -> None:
        self.ttl_seconds = ttl_seconds
        self._max = max_entries
        self._entries: OrderedDict[str, CachedRead] = OrderedDict()
        self._keys_of: dict[tuple[str, uuid.UUID], set[str]] = {}
        # Sequence number of the last invalidation per customer; customers dropped from this map (it is
        # bounded too) are covered by `_floor`, the highest sequence number forgotten.
        self._sequence = 0
        self._invalidated_at: OrderedDict[tuple[str, uuid.UUID], int] = OrderedDict()
        self._floor = 0
        self.enabled = ttl_seconds > 0

    def token(self) -> int:
        """Take before reading the database; give to `put`."""
        return self._sequence

    def get(self, key: str) -> CachedRead | None:
        entry = self._entries.get(key)
        if entry is None or not self.enabled:
            return None
        if entry.expires_at <= time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(
        self,
        key: str,
        customer: tuple[str, uuid.UUID],
        body: bytes,
        etag: str,
        *,
        token: int,
        valid_for: float | None = None,
    ) -> None:
        """Keeps an answer read after `token` was taken, unless the customer changed since then."""
        if not self.enabled or token < self._floor or self._invalidated_at.get(customer, 0) > token:
            return
        ttl = self.ttl_seconds if valid_for is None else min(self.ttl_seconds, valid_for)
        if ttl <= 0:
            return
        self._drop(key)
        self._entries[key] = CachedRead(body, etag, customer, time.monotonic() + ttl)
        self._keys_of.setdefault(customer, set()).add(key)
        while len(self._entries) > self._max:
            self._drop(next(iter(self._entries)))

    def invalidate(self, customer: tuple[str, uuid.UUID]) -> None:
        self._sequence += 1
        self._invalidated_at[customer] = self._sequence
        self._invalidated_at.move_to_end(customer)
        while len(self._invalidated_at) > self._max:
            _, forgotten = self._invalidated_at.popitem(last=False)
            self._floor = max(self._floor, forgotten)
        for key in self._keys_of.pop(customer, set()):
            self._entries.pop(key, None)

    def clear(self) -> None:
        """Forget everything, and refuse answers read before now."""
        self._sequence += 1
        self._floor = self._sequence
        self._entries.clear()
        self._keys_of.clear()
        self._invalidated_at.clear()

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            keys = self._keys_of.get(entry.customer)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._keys_of[entry.customer]
