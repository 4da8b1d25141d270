"""Which routes skip FastAPI's per-request handler (strict_json.py, `_direct_handler`): only an async
endpoint that takes the request alone and answers with a Response; anything FastAPI would have to solve,
validate or serialise keeps FastAPI's handler. The hot lookup is one of them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, NoReturn

import fastapi.routing
import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from starlette.routing import BaseRoute

from state_manager.app import create_app
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


def direct_paths(routes: Iterable[BaseRoute]) -> set[str]:
    return {route.path for route in routes if isinstance(route, StrictJsonRoute) and route._direct_handler()}


def test_only_an_async_endpoint_of_the_request_alone_answering_a_response_is_called_directly() -> None:
    router = APIRouter(route_class=StrictJsonRoute)
    router.add_api_route("/alone", request_alone)
    router.add_api_route("/query", with_a_query_parameter)
    router.add_api_route("/dict", answering_a_dict)
    router.add_api_route("/sync", synchronous)
    router.add_api_route("/dependency", with_a_dependency)
    router.add_api_route("/unresolvable", unresolvable, response_model=None)
    router.add_api_route("/keyword", keyword_only)
    assert direct_paths(router.routes) == {"/alone"}

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
    app = FastAPI()
    app.include_router(router)

    async def solving(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("FastAPI's handler ran")

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", solving)

    async def get(path: str) -> int:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return (await client.get(path)).status_code

    assert asyncio.run(get("/alone")) == 200
    assert asyncio.run(get("/query")) == 500  # the check above can fail


def test_the_open_conversation_lookup_is_called_directly(tmp_path: Path) -> None:
    assert direct_paths(create_app(Settings(data_dir=tmp_path)).routes) == {"/v1/conversations/open"}
