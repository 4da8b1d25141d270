"""What a failure may show where no key is needed (`/health/ready`'s `last_error`): its kind, not its text.

A database error's text holds the statement and the driver's message, whose DETAIL can quote a row's values
(`Key (tenant_id, wamid)=(…) already exists`); the engines hide bound parameters (`hide_parameters=True`),
but not that. So database errors are summarised as their class, the driver's class and the SQLSTATE; a
network error (`OSError`: refused, reset, unreachable) keeps its text, which names an address and nothing a
request wrote; anything else shows its class only. The full text still goes to the log.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError


def error_summary(exc: BaseException) -> str:
    name = type(exc).__name__
    if isinstance(exc, DBAPIError):
        original = exc.orig
        cause = original.__cause__ if original is not None else None
        state = getattr(original, "pgcode", None) or getattr(cause, "sqlstate", None)
        kind = type(cause if cause is not None else original).__name__
        return f"{name} ({kind}{f', SQLSTATE {state}' if isinstance(state, str) else ''})"
    if isinstance(exc, OSError):
        return f"{name}: {exc}"[:300]
    return name
