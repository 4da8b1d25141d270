"""Rate limits per API key and, for failed authentications, per client address (docs/operations.md,
"Rate limits"): in-process token buckets, coordinated through Redis when REDIS_URL is set; chosen once
from settings, like the cache."""

from __future__ import annotations

from dataclasses import dataclass

from state_manager.ratelimit.buckets import Limit, RateLimiter, Refused, limit_headers_var
from state_manager.ratelimit.shared import RedisRateLimiter
from state_manager.settings import Settings

__all__ = [
    "Limit",
    "RateLimitPolicy",
    "RateLimiter",
    "RedisRateLimiter",
    "Refused",
    "limit_headers_var",
    "open_rate_limiter",
]


@dataclass(frozen=True, slots=True)
class RateLimitPolicy:
    """What the settings say: the limit of a key without its own, and of failed authentications."""

    enabled: bool
    key_default: Limit | None  # None: keys without their own limit are not limited
    auth_failures: Limit | None  # None: failed authentications are not limited

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimitPolicy:
        per_key, failures = settings.rate_limit_per_second, settings.rate_limit_auth_failures_per_second
        return cls(
            enabled=settings.rate_limit_enabled,
            key_default=Limit.of(per_key, settings.rate_limit_burst) if per_key > 0 else None,
            auth_failures=(
                Limit.of(failures, settings.rate_limit_auth_failures_burst) if failures > 0 else None
            ),
        )

    def key_limit(self, per_second: float | None, burst: int | None) -> Limit | None:
        """A key's limit from its own columns: none set, the default; a rate of 0, no limit."""
        if not self.enabled:
            return None
        if per_second is None:
            if burst is None or self.key_default is None:
                return self.key_default
            return Limit(self.key_default.per_second, burst)
        return Limit.of(per_second, burst) if per_second > 0 else None


def open_rate_limiter(settings: Settings) -> RateLimiter:
    """Shared through Redis when REDIS_URL is set; this process's own buckets otherwise."""
    if settings.redis_url and settings.rate_limit_enabled:
        return RedisRateLimiter(
            settings.redis_url,
            sync_seconds=settings.rate_limit_sync_seconds,
            timeout_seconds=1.0,  # a background call: a slow answer only delays the next sync
        )
    return RateLimiter()
