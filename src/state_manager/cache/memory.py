"""In-process cache: a bounded LRU with per-entry expiry."""

from __future__ import annotations

import time
from collections import OrderedDict

from state_manager.cache.base import Cache


class MemoryCache(Cache):
    name = "memory"

    def __init__(self, max_entries: int = 100_000) -> None:
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max = max_entries

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        self._entries[key] = (time.monotonic() + ttl_seconds, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    async def delete(self, *keys: str) -> None:
        for k in keys:
            self._entries.pop(k, None)

    async def ping(self) -> float:
        return 0.0
