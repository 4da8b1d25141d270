"""Request bodies parsed as strict JSON (RFC 8259) that both backends can store exactly as sent.

Refused with a 422 naming the field, on every backend alike:
- NaN and Infinity (not JSON);
- NUL characters: PostgreSQL's text and jsonb cannot hold them (the embedded SQLite could);
- integers beyond 64 bits: orjson would round them to a float, so a stored ID would silently change;
- nesting deeper than MAX_DEPTH levels: it could be stored, but not read back.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Coroutine
from typing import Any, get_type_hints

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from state_manager.errors import StateManagerError, ValidationFailed

_ESCAPED_NUL = b"\\u0000"
# An integer needs more than 64 bits only with 19 digits or more; anything shorter takes the fast path.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")
_INT64 = range(-(2**63), 2**63)
MAX_DEPTH = 32  # levels of objects and arrays in a request body
_BY_POSITION = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)

_Path = tuple[str | int, ...]


def _refuse_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not JSON", name, 0)


def _first_refused(value: Any, path: _Path = ()) -> tuple[_Path, str, str] | None:
    """(where, error type, message) of the first value that cannot be stored as sent, if any."""
    if isinstance(value, str):
        if "\x00" in value:
            return path, "nul_character", "contains \\u0000"
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                return path, "lone_surrogate", "contains an unpaired UTF-16 surrogate"
    elif isinstance(value, bool):
        return None
    elif isinstance(value, int):
        if value not in _INT64:
            return path, "int_too_large", "integers must fit in 64 bits; send larger ones as strings"
    elif isinstance(value, dict):
        for key, item in value.items():
            if (found := _first_refused(key, (*path, key))) is not None:
                return found
            if (found := _first_refused(item, (*path, key))) is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if (found := _first_refused(item, (*path, index))) is not None:
                return found
    return None


def _refuse(found: tuple[_Path, str, str]) -> ValidationFailed:
    where, kind, message = found
    return ValidationFailed(
        f"the body holds a value that cannot be stored as sent: {message}",
        errors=[
            {
                "field": ".".join(str(part) for part in where),
                "location": "body",
                "message": message,
                "type": kind,
            }
        ],
    )


def _check_depth(document: Any) -> None:
    """Refuses documents nested deeper than MAX_DEPTH: stored, they could not be read back (serialisers
    stop at a few hundred levels). Walks containers only, without recursion."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValidationFailed(f"the body is nested more than {MAX_DEPTH} levels deep")
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def parse_body(body: bytes) -> Any:
    """The parsed document, or ValidationFailed; malformed JSON raises json.JSONDecodeError."""
    if _LONG_DIGITS.search(body):
        # Rare: parse exactly (Python ints) so that a big integer is refused instead of rounded.
        try:
            document = json.loads(body, parse_constant=_refuse_constant)
        except RecursionError as exc:
            raise ValidationFailed(f"the body is nested more than {MAX_DEPTH} levels deep") from exc
        except ValueError as exc:
            if isinstance(exc, json.JSONDecodeError):
                raise
            raise ValidationFailed(f"the body holds a number that is too long: {exc}") from exc
        if isinstance(document, dict | list):
            _check_depth(document)
        if (found := _first_refused(document)) is not None:
            raise _refuse(found)
        return document
    # orjson refuses NaN/Infinity and lone surrogates; its JSONDecodeError is json.JSONDecodeError.
    document = orjson.loads(body)
    if isinstance(document, dict | list):
        _check_depth(document)
    # JSON can only carry NUL escaped, so the byte scan skips the walk for almost every body.
    if _ESCAPED_NUL in body and (found := _first_refused(document)) is not None:
        raise _refuse(found)
    return document


class StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_body(await self.body())
        return self._json


class StrictJsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = self._direct_handler() or super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            try:
                return await handler(StrictJsonRequest(request.scope, request.receive))
            except HTTPException as exc:
                # FastAPI turns any error raised while reading the body into "400 could not parse";
                # ours (body too large, NUL characters) keep their own status.
                if isinstance(exc.__cause__, StateManagerError):
                    raise exc.__cause__ from None
                raise

        return strict_handler

    def _direct_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]] | None:
        """The endpoint itself, when it takes the request alone and answers with a Response: FastAPI's
        handler would only solve its parameters (parsing the query string it does not use), make a
        sub-response for headers and cookies, and pass the Response through, a tenth of the hot lookup's
        CPU (docs/benchmarks.md). Errors take the same way out, to the app's exception handlers."""
        dependant = self.dependant
        if dependant.request_param_name is None or dependant.dependencies:
            return None
        parameters = list(inspect.signature(self.endpoint).parameters.values())
        if len(parameters) != 1 or parameters[0].kind not in _BY_POSITION:
            return None  # called with the request as its one positional argument
        try:
            answer = get_type_hints(self.endpoint).get("return")
        except (NameError, TypeError):  # an annotation Python cannot resolve: FastAPI's handler, as before
            return None
        if not (inspect.iscoroutinefunction(self.endpoint) and isinstance(answer, type)):
            return None
        if not issubclass(answer, Response):
            return None
        endpoint: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint
        return endpoint
