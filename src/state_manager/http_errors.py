"""Every error leaves as application/problem+json (RFC 9457); one handler per family, found by class."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match, Route

from state_manager.errors import (
    PROBLEM_BASE,
    BadRequest,
    Conflict,
    StateManagerError,
    ValidationFailed,
)

log = logging.getLogger("state_manager.errors")
PROBLEM_JSON = "application/problem+json"


def problem_response(error: StateManagerError, instance: str | None = None) -> Response:
    return Response(
        orjson.dumps(error.problem(instance)),
        status_code=error.status,
        media_type=PROBLEM_JSON,
        headers=error.headers,
    )


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    errors = []
    for item in exc.errors():
        location = [str(part) for part in item.get("loc", ())]
        errors.append(
            {
                "field": ".".join(location[1:]) if len(location) > 1 else ".".join(location),
                "location": location[0] if location else None,
                "message": item.get("msg", ""),
                "type": item.get("type", ""),
            }
        )
    return errors


async def _on_state_manager_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StateManagerError)
    return problem_response(exc, request.url.path)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = _field_errors(exc)
    if any(error["type"] == "json_invalid" for error in errors):
        return problem_response(BadRequest("the body is not valid JSON", errors=errors), request.url.path)
    return problem_response(
        ValidationFailed("the request does not match the schema", errors=errors), request.url.path
    )


def _allowed_methods(request: Request) -> str | None:
    """Every method some route serves at this path: Starlette's 405 names only the first route's, and a
    path served by two routes (GET and PATCH of one resource) then lists one method."""
    matching = [
        route
        for route in request.app.router.routes
        # The old API's catch-all answers any method with its 404: not an allowed one.
        if isinstance(route, Route) and route.methods and route.include_in_schema
        if route.matches(request.scope)[0] is not Match.NONE
    ]
    # A literal path (/v1/messages/inbound) is its own resource, not an ID of the templated one beside it.
    literal = [route for route in matching if "{" not in route.path]
    methods = {method for route in literal or matching for method in route.methods or ()}
    return ", ".join(sorted(methods)) if methods else None


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405 and (allowed := _allowed_methods(request)):
        headers["Allow"] = allowed
    body = {
        "type": PROBLEM_BASE + f"http-{exc.status_code}",
        "title": str(exc.detail) if exc.status_code != 404 else "Not found",
        "status": exc.status_code,
        "detail": str(exc.detail),
        "code": f"http-{exc.status_code}",
        "instance": request.url.path,
    }
    return Response(orjson.dumps(body), status_code=exc.status_code, media_type=PROBLEM_JSON, headers=headers)


async def _on_integrity_error(request: Request, exc: Exception) -> Response:
    # Services turn the conflicts they expect into specific errors; this is the net under them.
    log.warning("unexpected integrity error", exc_info=exc)
    return problem_response(Conflict("the change conflicts with existing data"), request.url.path)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", exc_info=exc)
    return problem_response(StateManagerError("an unexpected error occurred"), request.url.path)


def install(app: FastAPI) -> None:
    app.add_exception_handler(StateManagerError, _on_state_manager_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(IntegrityError, _on_integrity_error)
    app.add_exception_handler(Exception, _on_unexpected)
