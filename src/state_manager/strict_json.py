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
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, get_type_hints

import orjson
from fastapi import Request, Response, params
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import request_body_to_args
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from state_manager.errors import StateManagerError, ValidationFailed

if TYPE_CHECKING:
    from fastapi._compat import ModelField

_ESCAPED_NUL = b"\\u0000"
# An integer needs more than 64 bits only with 19 digits or more; anything shorter takes the fast path.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")
_INT64 = range(-(2**63), 2**63)
MAX_DEPTH = 32  # levels of objects and arrays in a request body

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


_Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class StrictJsonRoute(APIRoute):
    # Whether requests skip FastAPI's handler (see `_direct_handler`); set as the route is built.
    direct: bool = False

    def get_route_handler(self) -> _Handler:
        fastapi_handler = super().get_route_handler()
        direct = self._direct_handler(fastapi_handler)
        self.direct = direct is not None
        handler = direct or fastapi_handler

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

    def _direct_handler(self, fastapi_handler: _Handler) -> _Handler | None:
        """A handler that calls the endpoint itself, when everything FastAPI's handler would do for it is
        simple enough to do here: the endpoint is async and answers with a Response, and its parameters
        are the request, dependencies that take the request alone, and at most one JSON body model. FastAPI
        would solve them generically, make a sub-response for headers and cookies, and pass the Response
        through: a tenth of the hot lookup's CPU, and more of an inbound message's (docs/benchmarks.md).

        A body is read as FastAPI reads it; a body this handler would not parse as JSON at once (another
        content type, empty, malformed) goes to FastAPI's handler before anything else ran, so that every
        such error is FastAPI's own, and so does every request while dependencies are overridden. Errors
        take the same way out, to the app's exception handlers."""
        dependant = self.dependant
        if not _answers_with_response(self.endpoint) or _has_other_parameters(dependant):
            return None
        if any(param.kind is inspect.Parameter.POSITIONAL_ONLY for param in _parameters(self.endpoint)):
            return None  # called with keywords
        # (name, function, cache key): FastAPI calls a dependency used twice once per request, unless
        # it is declared with use_cache=False.
        dependencies: list[tuple[str | None, Callable[[Request], Awaitable[Any]], object]] = []
        for found in dependant.dependencies:
            if found.call is None or not _takes_the_request_alone(found):
                return None
            dependencies.append((found.name, found.call, found.cache_key if found.use_cache else object()))
        body_params = dependant.body_params
        if len(body_params) > 1 or (body_params and not _is_a_json_model(body_params[0])):
            return None
        endpoint = self.endpoint
        request_name = dependant.request_param_name
        overrides_provider = self.dependency_overrides_provider

        def overridden() -> bool:
            """Dependencies replaced (app.dependency_overrides, in tests): FastAPI's handler applies that."""
            return bool(getattr(overrides_provider, "dependency_overrides", None))

        async def solve(request: Request) -> dict[str, Any]:
            values: dict[str, Any] = {}
            solved: dict[object, Any] = {}
            for name, dependency, key in dependencies:
                if key not in solved:
                    solved[key] = await dependency(request)
                if name is not None:
                    values[name] = solved[key]
            if request_name is not None:
                values[request_name] = request
            return values

        async def without_body(request: Request) -> Response:
            if overridden():
                return await fastapi_handler(request)
            response: Response = await endpoint(**await solve(request))
            return response

        if not body_params:
            return without_body

        async def with_body(request: Request) -> Response:
            content_type = request.headers.get("content-type", "")
            if overridden() or content_type.partition(";")[0].strip().lower() != "application/json":
                return await fastapi_handler(request)  # as FastAPI would read it (or refuse it)
            try:
                document = await request.json()
            except json.JSONDecodeError:
                return await fastapi_handler(request)  # FastAPI's own 422, from the body it keeps
            except (StateManagerError, HTTPException):
                raise  # they keep their status: too large, NUL characters
            except Exception as exc:  # as FastAPI's handler answers it (a client gone mid-body, say)
                raise HTTPException(status_code=400, detail="There was an error parsing the body") from exc
            # As in FastAPI: the dependencies first (a caller without a valid key gets 401, not 422), then
            # the body.
            values = await solve(request)
            validated, errors = await request_body_to_args(body_params, document, embed_body_fields=False)
            if errors:
                raise RequestValidationError(errors, body=document)
            response: Response = await endpoint(**values, **validated)
            return response

        return with_body


def _parameters(endpoint: Callable[..., Any]) -> list[inspect.Parameter]:
    return list(inspect.signature(endpoint).parameters.values())


def _answers_with_response(endpoint: Callable[..., Any]) -> bool:
    if not inspect.iscoroutinefunction(endpoint):
        return False
    try:
        answer = get_type_hints(endpoint).get("return")
    except (NameError, TypeError):  # an annotation Python cannot resolve: FastAPI's handler, as before
        return False
    return isinstance(answer, type) and issubclass(answer, Response)


def _has_other_parameters(dependant: Dependant) -> bool:
    """Parameters FastAPI reads from the request for the endpoint (path, query, headers, cookies), or
    objects it makes (sub-response, background tasks, security scopes)."""
    return bool(
        dependant.path_params
        or dependant.query_params
        or dependant.header_params
        or dependant.cookie_params
        or dependant.websocket_param_name
        or dependant.http_connection_param_name
        or dependant.response_param_name
        or dependant.background_tasks_param_name
        or dependant.security_scopes_param_name
    )


def _takes_the_request_alone(dependency: Dependant) -> bool:
    """An async function (not a generator: nothing to close after the response) of the request only."""
    if dependency.dependencies or dependency.body_params or _has_other_parameters(dependency):
        return False
    if dependency.request_param_name is None or not inspect.iscoroutinefunction(dependency.call):
        return False
    parameters = _parameters(dependency.call)  # FastAPI passes the request by keyword
    return len(parameters) == 1 and parameters[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD


def _is_a_json_model(field: ModelField) -> bool:
    """One body parameter of a pydantic model, not embedded: FastAPI validates the whole JSON body as it."""
    info = field.field_info
    if not isinstance(info, params.Body) or isinstance(info, params.Form) or getattr(info, "embed", False):
        return False
    return isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
