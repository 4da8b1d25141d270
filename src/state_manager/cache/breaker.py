"""A circuit breaker for calls to Redis: after a few failures in a row, stop waiting on it for a while."""

from __future__ import annotations

import time

from state_manager.observability import metrics


class CircuitBreaker:
    def __init__(self, failures_to_open: int, open_seconds: float) -> None:
        self._threshold = failures_to_open
        self._open_seconds = open_seconds
        self._failures = 0
        self._opened_at: float | None = None

    @property
    def closed(self) -> bool:
        return self._opened_at is None

    @property
    def state(self) -> str:
        return "closed" if self._opened_at is None else "open"

    def seconds_to_trial(self) -> float:
        """How long until one call may find out whether Redis is back (0 when closed)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self._open_seconds - time.monotonic())

    def failed(self) -> None:
        self._failures += 1
        if self._opened_at is not None:
            self._opened_at = time.monotonic()  # a failed trial: wait another period
        elif self._failures >= self._threshold:
            self._opened_at = time.monotonic()
            metrics.CACHE_CIRCUIT_OPEN.set(1)

    def succeeded(self) -> None:
        self._failures = 0

    def close(self) -> None:
        self._failures = 0
        if self._opened_at is not None:
            self._opened_at = None
            metrics.CACHE_CIRCUIT_OPEN.set(0)
