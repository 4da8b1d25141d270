"""Which routes skip FastAPI's per-request handler (strict_json.py, `_direct_handler`): an async endpoint
that answers with a Response and takes the request, dependencies of the request alone, and at most one
JSON body model; anything else FastAPI would have to solve, validate or serialise keeps FastAPI's handler.
The hot lookup and inbound recording are among them, and answer as FastAPI's handler would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Annotated, NoReturn

import fastapi.routing
import httpx
import orjson
import pytest
from fastapi import APIRouter, Body, Depends, FastAPI, Request, Response
from pydantic import BaseModel, Field, field_validator
from starlette.routing import BaseRoute

from state_manager.app import create_app
from state_manager.errors import Forbidden
from state_manager.http_errors import install as install_error_handlers
from state_manager.settings import Settings
from state_manager.strict_json import StrictJsonRoute


async def request_alone(request: Request) -> Response:
    return Response(b"{}", media_type="application/json")


async def with_a_query_parameter(request: Request, limit: int = 10) -> Response:
    return Response(b"{}", media_type="application/json")


async def answering_a_dict(request: Request) -> dict[str, str]:
    return {}


def synchronous(request: Request) -> Response:
    return Response(b"{}", media_type="application/json")


async def unresolvable(request: Request) -> Unknown:  # type: ignore[name-defined]  # noqa: F821
    return Response(b"{}", media_type="application/json")


async def keyword_only(*, request: Request) -> Response:
    return Response(b"{}", media_type="application/json")


async def tenant() -> str:
    return "t"


async def with_a_dependency(request: Request, found: Annotated[str, Depends(tenant)]) -> Response:
    return Response(b"{}", media_type="application/json")


calls: list[str] = []


async def caller(request: Request) -> str:
    calls.append(request.url.path)
    if request.headers.get("authorization") != "Bearer right":
        raise Forbidden("no")
    return "caller"


class Item(BaseModel):
    name: str = Field(min_length=2)
    count: int = 1

    @field_validator("name")
    @classmethod
    def not_zero(cls, name: str) -> str:
        if name == "zero":
            raise ZeroDivisionError  # not a validation error: a 500, but only after the key was checked
        return name


async def with_a_body(
    item: Item,
    who: Annotated[str, Depends(caller)],
    again: Annotated[str, Depends(caller)],
    uncached: Annotated[str, Depends(caller, use_cache=False)],
) -> Response:
    answer = {"who": who, "again": again, "uncached": uncached, **item.model_dump()}
    return Response(orjson.dumps(answer), status_code=201, headers={"x-answered": "yes"})


async def positional_only_dependency(request: Request, /) -> str:
    return "x"


async def with_a_positional_only_dependency(
    found: Annotated[str, Depends(positional_only_dependency)],
) -> Response:
    return Response(b"{}", media_type="application/json")


async def with_an_embedded_body(item: Annotated[Item, Body(embed=True)]) -> Response:
    return Response(b"{}", media_type="application/json")


async def with_two_bodies(item: Item, other: Item) -> Response:
    return Response(b"{}", media_type="application/json")


async def with_a_generator_dependency(found: Annotated[str, Depends(yielding)]) -> Response:
    return Response(b"{}", media_type="application/json")


async def yielding(request: Request) -> AsyncIterator[str]:
    yield "x"


async def positional_only(request: Request, /) -> Response:
    return Response(b"{}", media_type="application/json")


def direct_paths(routes: Iterable[BaseRoute]) -> set[str]:
    return {route.path for route in routes if isinstance(route, StrictJsonRoute) and route.direct}


def test_only_an_async_endpoint_of_the_request_alone_answering_a_response_is_called_directly() -> None:
    router = APIRouter(route_class=StrictJsonRoute)
    router.add_api_route("/alone", request_alone)
    router.add_api_route("/query", with_a_query_parameter)
    router.add_api_route("/dict", answering_a_dict)
    router.add_api_route("/sync", synchronous)
    router.add_api_route("/dependency", with_a_dependency)
    router.add_api_route("/unresolvable", unresolvable, response_model=None)
    router.add_api_route("/keyword", keyword_only)
    router.add_api_route("/positional", positional_only)
    router.add_api_route("/body", with_a_body, methods=["POST"])
    router.add_api_route("/embedded", with_an_embedded_body, methods=["POST"])
    router.add_api_route("/two-bodies", with_two_bodies, methods=["POST"])
    router.add_api_route("/generator", with_a_generator_dependency)
    router.add_api_route("/positional-dependency", with_a_positional_only_dependency)
    assert direct_paths(router.routes) == {"/alone", "/keyword", "/body"}

    guarded = APIRouter(route_class=StrictJsonRoute, dependencies=[Depends(tenant)])
    guarded.add_api_route("/alone", request_alone)
    assert direct_paths(guarded.routes) == set()  # a router's dependencies must run

    app = FastAPI(dependencies=[Depends(tenant)])  # ... and the app's
    app.include_router(router)
    assert direct_paths(app.routes) == set()


def test_a_direct_route_answers_without_fastapis_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    router = APIRouter(route_class=StrictJsonRoute)
    router.add_api_route("/alone", request_alone)
    router.add_api_route("/query", with_a_query_parameter)
    router.add_api_route("/body", with_a_body, methods=["POST"])
    app = FastAPI()
    app.include_router(router)

    async def solving(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("FastAPI's handler ran")

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", solving)

    async def send(method: str, path: str, content_type: str = "application/json") -> int:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            headers = {"authorization": "Bearer right", "content-type": content_type}
            answer = await client.request(method, path, content=b'{"name": "ab"}', headers=headers)
            return answer.status_code

    assert asyncio.run(send("GET", "/alone")) == 200
    assert asyncio.run(send("GET", "/query")) == 500  # the check above can fail
    assert asyncio.run(send("POST", "/body")) == 201
    assert asyncio.run(send("POST", "/body", "application/json; charset=utf-8")) == 201
    assert asyncio.run(send("POST", "/body", "text/plain")) == 500  # FastAPI's handler reads other types


def test_hot_routes_are_called_directly(tmp_path: Path) -> None:
    assert direct_paths(create_app(Settings(data_dir=tmp_path)).routes) == {
        "/v1/conversations/open",
        "/v1/messages/inbound",
        "/health",
        "/health/ready",
        "/metrics",
        "/state/health",
    }


class AlwaysFastAPIsHandler(StrictJsonRoute):
    def _direct_handler(self, fastapi_handler: Callable[[Request], Awaitable[Response]]) -> None:
        return None


def body_app(direct: bool) -> FastAPI:
    router = APIRouter(route_class=StrictJsonRoute if direct else AlwaysFastAPIsHandler)
    router.add_api_route("/body", with_a_body, methods=["POST"], response_model=None)
    app = FastAPI()
    app.include_router(router)
    install_error_handlers(app)
    return app


BODIES: list[tuple[dict[str, str], bytes]] = [
    ({"content-type": "application/json"}, b'{"name": "ab", "count": 2}'),
    ({"content-type": "Application/JSON; charset=utf-8"}, b'{"name": "ab"}'),
    ({"content-type": "application/json"}, b'{"name": "a"}'),  # too short
    ({"content-type": "application/json"}, b'{"name": "zero"}'),  # a validator that fails badly
    ({"content-type": "application/json"}, b'{"name": "a\\u0000b"}'),  # refused by strict JSON
    ({"content-type": "application/json"}, b'{"name": "ab", "count": "x"}'),
    ({"content-type": "application/json"}, b"[1, 2]"),
    ({"content-type": "application/json"}, b"null"),
    ({"content-type": "application/json"}, b""),
    ({"content-type": "application/json"}, b'{"name": '),  # malformed
    ({"content-type": "text/plain"}, b'{"name": "ab"}'),
    ({}, b'{"name": "ab"}'),
    ({"content-type": "application/merge-patch+json"}, b'{"name": "ab"}'),
]


@pytest.mark.parametrize(("headers", "body"), BODIES)
@pytest.mark.parametrize("authorization", ["Bearer right", "Bearer wrong"])
def test_a_direct_route_with_a_body_answers_as_fastapis_handler_would(
    headers: dict[str, str], body: bytes, authorization: str
) -> None:
    async def post(app: FastAPI) -> tuple[int, bytes, list[str]]:
        calls.clear()
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            sent = {**headers, "authorization": authorization}
            answer = await client.post("/body", content=body, headers=sent)
        return answer.status_code, answer.content, sorted(answer.headers.items()), list(calls)

    direct, fastapi_handler = asyncio.run(post(body_app(True))), asyncio.run(post(body_app(False)))
    assert direct == fastapi_handler
    if direct[0] == 201:  # the dependency used twice ran once, and its uncached use once more
        assert direct[3] == ["/body", "/body"]


def test_a_client_gone_in_the_middle_of_the_body_is_answered_as_fastapis_handler_would() -> None:
    async def send_half(app: FastAPI) -> list[int]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "path": "/body",
            "raw_path": b"/body",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"authorization", b"Bearer right")],
            "client": ("127.0.0.1", 1),
            "server": ("test", 80),
        }
        messages = [
            {"type": "http.request", "body": b'{"name": ', "more_body": True},
            {"type": "http.disconnect"},
        ]
        statuses: list[int] = []

        async def receive() -> dict[str, object]:
            return messages.pop(0)

        async def send(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(int(message["status"]))  # type: ignore[call-overload]

        await app(scope, receive, send)
        return statuses

    assert asyncio.run(send_half(body_app(True))) == asyncio.run(send_half(body_app(False))) == [400]


def test_dependency_overrides_apply_to_a_direct_route() -> None:
    async def fake(request: Request) -> str:
        return "fake"

    async def post(app: FastAPI) -> bytes:
        app.dependency_overrides[caller] = fake
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            answer = await client.post("/body", json={"name": "ab"})
        return answer.content

    direct, fastapi_handler = asyncio.run(post(body_app(True))), asyncio.run(post(body_app(False)))
    assert direct == fastapi_handler
    assert orjson.loads(direct)["who"] == "fake"
