"""The one exception tree of the service, and its mapping to RFC 9457 problem+json responses.

StateManagerError            500 internal
├── BadRequest               400 bad-request
│   └── ValidationFailed     422 validation-failed (field errors)
├── Unauthorized             401 unauthorized
├── Forbidden                403 forbidden
├── NotFound                 404 not-found
├── Conflict                 409 conflict
│   ├── InvalidTransition    409 invalid-transition (current state)
│   └── Erased               409 erased (the customer was erased)
├── Gone                     410 gone
│   └── EventsTrimmed        410 events-trimmed (how far retention removed events)
├── PreconditionFailed       412 precondition-failed (current version)
├── PayloadTooLarge          413 payload-too-large
├── TooManyRequests          429 rate-limited (Retry-After, RateLimit-*)
└── Unavailable              503 unavailable (Retry-After)
"""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_BASE = "https://state-manager.dev/problems/"


class StateManagerError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.errors = errors
        self.extra = extra or {}
        self.headers = headers or {}

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if instance:
            body["instance"] = instance
        if self.errors is not None:
            body["errors"] = self.errors
        body.update(self.extra)
        return body


class BadRequest(StateManagerError):
    status = 400
    code = "bad-request"
    title = "Bad request"


class ValidationFailed(BadRequest):
    status = 422
    code = "validation-failed"
    title = "Request validation failed"


class Unauthorized(StateManagerError):
    status = 401
    code = "unauthorized"
    title = "Authentication required"


class Forbidden(StateManagerError):
    status = 403
    code = "forbidden"
    title = "Forbidden"


class NotFound(StateManagerError):
    status = 404
    code = "not-found"
    title = "Not found"


class Conflict(StateManagerError):
    status = 409
    code = "conflict"
    title = "Conflict"


class InvalidTransition(Conflict):
    code = "invalid-transition"
    title = "Invalid state transition"


class Erased(Conflict):
    """The customer was erased: its row stays, empty, for anonymous counts, and takes no new data."""

    code = "erased"
    title = "Customer erased"


class Gone(StateManagerError):
    status = 410
    code = "gone"
    title = "Gone"


class EventsTrimmed(Gone):
    """Events the caller asked for were removed by retention: resuming would silently skip them."""

    code = "events-trimmed"
    title = "Events trimmed"


class PreconditionFailed(StateManagerError):
    status = 412
    code = "precondition-failed"
    title = "Precondition failed"


class PayloadTooLarge(StateManagerError):
    status = 413
    code = "payload-too-large"
    title = "Payload too large"


class TooManyRequests(StateManagerError):
    """A key (or a client address failing to authenticate) went over its rate limit."""

    status = 429
    code = "rate-limited"
    title = "Too many requests"


class Unavailable(StateManagerError):
    status = 503
    code = "unavailable"
    title = "Service unavailable"


class LockTimeout(Unavailable):
    """A row or lock this work needs stayed held by another transaction longer than it may wait."""

    code = "lock-timeout"
