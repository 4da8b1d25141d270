"""Token buckets in this process: the embedded default's limiter, and the local half of the Redis one.

A bucket holds up to `burst` tokens and gains `per_second` a second; a request takes one or is refused.
Deciding never waits on I/O: the Redis limiter (`shared.py`) only corrects these buckets in the
background.
"""

from __future__ import annotations

import contextvars
import math
import time
from dataclasses import dataclass
from typing import Any

# Buckets kept at most; past it, full ones (which say nothing a new one would not) are dropped first.
MAX_BUCKETS = 50_000

# Headers for the response of the request being served, filled by the authenticator and sent by
# `RequestMiddleware`; a holder per request, as `request_key_var` is.
limit_headers_var: contextvars.ContextVar[list[tuple[bytes, bytes]] | None] = contextvars.ContextVar(
    "limit_headers", default=None
)


@dataclass(frozen=True, slots=True)
class Limit:
    per_second: float  # > 0
    burst: int  # >= 1

    @classmethod
    def of(cls, per_second: float, burst: int | None) -> Limit:
        """A limit with its burst, two seconds' worth when not given."""
        return cls(per_second, burst if burst is not None else max(1, math.ceil(per_second * 2)))


@dataclass(frozen=True, slots=True)
class Refused:
    limit: Limit
    retry_after: int  # whole seconds until a token is there again (at least 1)


class Bucket:
    __slots__ = ("limit", "tokens", "unsynced", "updated", "used_at")

    def __init__(self, limit: Limit, now: float) -> None:
        self.limit = limit
        self.tokens = float(limit.burst)
        self.updated = now
        self.unsynced = 0  # taken since the last report to Redis
        self.used_at = now

    def refill(self, now: float) -> None:
        limit = self.limit
        self.tokens = min(limit.burst, self.tokens + (now - self.updated) * limit.per_second)
        self.updated = now

    def seconds_to_full(self) -> int:
        return math.ceil(max(0.0, self.limit.burst - self.tokens) / self.limit.per_second)

    def seconds_to_token(self) -> int:
        return max(1, math.ceil((1.0 - self.tokens) / self.limit.per_second))


class RateLimiter:
    """In-process token buckets: the whole story with one process and no Redis."""

    name = "memory"

    def __init__(self) -> None:
        self.buckets: dict[str, Bucket] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _bucket(self, name: str, limit: Limit, now: float) -> Bucket:
        bucket = self.buckets.get(name)
        if bucket is None:
            if len(self.buckets) >= MAX_BUCKETS:
                self._shrink(now)
            bucket = self.buckets[name] = Bucket(limit, now)
        elif bucket.limit != limit:  # the key's limit was changed
            bucket.refill(now)
            bucket.limit = limit
            bucket.tokens = min(bucket.tokens, limit.burst)
        return bucket

    def _shrink(self, now: float) -> None:
        for name, bucket in list(self.buckets.items()):
            bucket.refill(now)
            if bucket.tokens >= bucket.limit.burst and bucket.unsynced == 0:
                del self.buckets[name]
        if len(self.buckets) >= MAX_BUCKETS:
            self.buckets.clear()  # forgetting admits more, never less: the safe side for callers

    def take(
        self, name: str, limit: Limit, headers: list[tuple[bytes, bytes]] | None = None
    ) -> Refused | None:
        """One token from the bucket `name`; None when admitted (and the RateLimit headers go into
        `headers`), else how long to wait."""
        now = time.monotonic()
        bucket = self._bucket(name, limit, now)
        bucket.refill(now)
        bucket.used_at = now
        if bucket.tokens < 1.0:
            return Refused(limit, bucket.seconds_to_token())
        bucket.tokens -= 1.0
        bucket.unsynced += 1
        if headers is not None:
            headers += (
                (b"ratelimit-limit", str(limit.burst).encode()),
                (b"ratelimit-remaining", str(int(bucket.tokens)).encode()),
                (b"ratelimit-reset", str(bucket.seconds_to_full()).encode()),
            )
        return None

    def exhausted(self, name: str) -> Refused | None:
        """Whether the bucket `name` is empty, without taking from it (no bucket: it is full)."""
        bucket = self.buckets.get(name)
        if bucket is None:
            return None
        now = time.monotonic()
        bucket.refill(now)
        bucket.used_at = now
        return Refused(bucket.limit, bucket.seconds_to_token()) if bucket.tokens < 1.0 else None

    def report(self) -> dict[str, Any]:
        return {"backend": self.name, "status": "ok", "buckets": len(self.buckets)}
