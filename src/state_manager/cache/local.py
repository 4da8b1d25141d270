"""The first tier: a small bounded LRU of ready-made answers in this process, dropped by tag on writes.

Every entry carries the tags of what it was read from (a customer, a conversation, a message); a write
names the tags it changed (`invalidation.changed`) and, once it commits, every process drops the entries
carrying them. Three rules keep it from ever answering older than an acknowledged write:
- A loader takes a token before it reads, and its answer is kept only if none of its tags was
  invalidated (and nothing was cleared) since then: a read that raced a write is never kept.
- Entries expire after a TTL in any case, and never outlive what they say (`valid_for`).
- Whoever cannot hear invalidations (the pub/sub link to Redis is down) turns the tier off and clears it.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from dataclasses import dataclass

from state_manager.observability import metrics

Tag = tuple[str, str]  # (tenant ID, "customer:<uuid>" / "conversation:<uuid>" / "message:<uuid>")

# What an entry costs in this process beyond the bytes of its body, key, ETag and tag names, measured on
# CPython 3.11 (docs/benchmarks.md, "Memory"): the entry, its place in the LRU, the headers of its strings
# and bytes (about 500 bytes), and per tag its tuple, its place in `_keys_of` and usually a set of its own
# (about 350). Counting only body and key plus 200 (as before) put 20,000 entries of 1 KiB at 23 MiB
# while the process grew by 45 MiB, so CACHE_LOCAL_MAX_BYTES bounded about half of what it cost.
_ENTRY_OVERHEAD = 500
_TAG_OVERHEAD = 350
# Entries loaded together (a burst of traffic, warming) must not all expire together: each lives between
# this share of its TTL and all of it.
TTL_JITTER = 0.8


def entry_size(key: str, body: bytes, etag: str, tags: tuple[Tag, ...]) -> int:
    """About how many bytes of this process an entry takes (what CACHE_LOCAL_MAX_BYTES bounds)."""
    tag_bytes = sum(len(name) + _TAG_OVERHEAD for _, name in tags)
    return len(body) + len(key) + len(etag) + tag_bytes + _ENTRY_OVERHEAD


@dataclass(frozen=True, slots=True)
class Entry:
    cache: str
    body: bytes
    etag: str
    tags: tuple[Tag, ...]
    expires_at: float  # time.monotonic()
    size: int


class LocalTier:
    """Bounded by entries and by bytes; `ttl_seconds=0` turns it off (every lookup goes further)."""

    def __init__(self, ttl_seconds: float, max_entries: int, max_bytes: int) -> None:
        self.ttl_seconds = ttl_seconds
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._keys_of: dict[Tag, set[str]] = {}
        # Sequence number of the last invalidation per tag; tags forgotten from this (bounded) map are
        # covered by `_floor`, the highest sequence number forgotten.
        self._sequence = 0
        self._invalidated_at: OrderedDict[Tag, int] = OrderedDict()
        self._floor = 0
        self.enabled = ttl_seconds > 0 and max_entries > 0 and max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def token(self) -> int:
        """Take before reading anything the answer comes from; give to `put`."""
        return self._sequence

    def accepts(self, tags: tuple[Tag, ...], token: int) -> bool:
        """Whether an answer read after `token` was taken is still current as far as this process knows."""
        if token < self._floor:
            return False
        invalidated = self._invalidated_at
        return all(invalidated.get(tag, 0) <= token for tag in tags)

    def get(self, key: str) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None or not self.enabled:
            return None
        if entry.expires_at <= time.monotonic():
            self._drop(key, "expired")
            return None
        self._entries.move_to_end(key)
        return entry

    def put(
        self,
        key: str,
        cache: str,
        body: bytes,
        etag: str,
        tags: tuple[Tag, ...],
        *,
        token: int,
        valid_for: float | None = None,
    ) -> None:
        if not self.enabled or not self.accepts(tags, token):
            return
        ttl = self.ttl_seconds * random.uniform(TTL_JITTER, 1.0)
        if valid_for is not None:
            ttl = min(ttl, valid_for)
        if ttl <= 0:
            return
        self._drop(key)
        entry = Entry(cache, body, etag, tags, time.monotonic() + ttl, entry_size(key, body, etag, tags))
        self._entries[key] = entry
        self._bytes += entry.size
        metrics.CACHE_ENTRIES.child(cache).inc()
        metrics.CACHE_BYTES.child(cache).inc(entry.size)
        for tag in tags:
            self._keys_of.setdefault(tag, set()).add(key)
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            self._drop(next(iter(self._entries)), "size")

    def invalidate(self, tags: set[Tag]) -> None:
        self._sequence += 1
        for tag in tags:
            self._invalidated_at[tag] = self._sequence
            self._invalidated_at.move_to_end(tag)
            for key in self._keys_of.pop(tag, ()):
                self._drop(key, "invalidated")
        while len(self._invalidated_at) > max(self._max_entries, 1024):
            _, forgotten = self._invalidated_at.popitem(last=False)
            self._floor = max(self._floor, forgotten)

    def clear(self) -> None:
        """Forget everything, and refuse answers read before now."""
        self._sequence += 1
        self._floor = self._sequence
        for key in list(self._entries):
            self._drop(key, "invalidated")
        self._keys_of.clear()
        self._invalidated_at.clear()

    def _drop(self, key: str, reason: str | None = None) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._bytes -= entry.size
        metrics.CACHE_ENTRIES.child(entry.cache).dec()
        metrics.CACHE_BYTES.child(entry.cache).dec(entry.size)
        if reason == "invalidated":
            metrics.CACHE_INVALIDATIONS.child(entry.cache).inc()
        elif reason is not None:
            metrics.CACHE_EVICTIONS.child(entry.cache, reason).inc()
        for tag in entry.tags:
            keys = self._keys_of.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._keys_of[tag]
