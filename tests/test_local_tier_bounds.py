"""The local cache tier stays within its bounds, and its byte count is what the entries really take.

Issue 8's memory target (docs/benchmarks.md, "Memory") rests on CACHE_LOCAL_MAX_ENTRIES and
CACHE_LOCAL_MAX_BYTES bounding the tier in memory, not only in its own arithmetic.
"""

from __future__ import annotations

import gc
import tracemalloc
import uuid

from state_manager.cache.local import LocalTier, Tag

TENANT = "tenant-a"


def _fill(tier: LocalTier, count: int, body_size: int = 900) -> None:
    for i in range(count):
        customer = str(uuid.uuid4())
        tags: tuple[Tag, ...] = ((TENANT, f"customer:{customer}"), (TENANT, f"conversations-of:{customer}"))
        body = (b'{"id":"%s",' % str(uuid.uuid4()).encode()).ljust(body_size, b" ") + b"}"
        tier.put(
            f"sm:{TENANT}:open_conversation:whatsapp:5511{i:09d}:bn-1",
            "open_conversation",
            body,
            f'W/"{uuid.uuid4().hex}"',
            tags,
            token=tier.token(),
        )


def test_the_entry_bound_holds_with_many_distinct_keys() -> None:
    tier = LocalTier(ttl_seconds=30, max_entries=1000, max_bytes=1 << 30)
    _fill(tier, 5000)
    assert len(tier) == 1000
    assert len(tier._keys_of) <= 2 * 1000  # tags of evicted entries are forgotten with them


def test_the_byte_bound_holds_and_counts_what_the_entries_take() -> None:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tier = LocalTier(ttl_seconds=30, max_entries=1_000_000, max_bytes=4 << 20)
        _fill(tier, 10_000)
        gc.collect()
        taken = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert tier.size_bytes <= 4 << 20
    assert len(tier) < 10_000  # the byte bound, not the entry bound, stopped it
    # What the tier counts is within a fifth of what its entries really hold in Python's heap: a bound
    # of N bytes costs about N bytes (counting body and key alone made it about half).
    assert 0.8 * taken <= tier.size_bytes <= 1.25 * taken, (tier.size_bytes, taken)
