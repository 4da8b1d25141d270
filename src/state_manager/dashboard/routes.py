"""`GET /dashboard`: the analytics dashboard page, and its two assets under `/dashboard/static/`.

The page holds no data and needs no key: it asks for one in its sign-in form and sends it with each request
it makes to the API (`Authorization: Bearer`, `X-Tenant-ID`) and to the WebSocket (`?api_key=`). Only the
files named in `_ASSETS` are served, read once from the package; any other name is a 404, so no path can
reach another file. The page's Content-Security-Policy allows scripts, styles and connections to this origin
only (no inline script or style, no other host), and forbids framing.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from fastapi import APIRouter, Request
from starlette.responses import Response

from state_manager.errors import NotFound

router = APIRouter(include_in_schema=False)

_ASSETS: dict[str, str] = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
_PAGE = "index.html"
# A Host header as a browser sends it (name or address, optional port): echoed into connect-src only then.
_HOST = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")

_COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated each time, so a new release's files are used at once
}


@cache
def _read(name: str) -> bytes:
    return (resources.files(__package__ or "state_manager.dashboard") / "static" / name).read_bytes()


def content_security_policy(host: str | None) -> str:
    """Same origin only. `connect-src 'self'` covers the WebSocket in current browsers; the page's own
    host is named with ws: and wss: as well for those that do not count them as 'self'."""
    sockets = f" ws://{host} wss://{host}" if host and _HOST.match(host) else ""
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self'{sockets}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


@router.get("/dashboard")
async def dashboard(request: Request) -> Response:
    return Response(
        _read(_PAGE),
        media_type="text/html; charset=utf-8",
        headers={
            **_COMMON_HEADERS,
            "Content-Security-Policy": content_security_policy(request.headers.get("host")),
            "X-Frame-Options": "DENY",
        },
    )


@router.get("/dashboard/static/{name}")
async def asset(name: str) -> Response:
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise NotFound("no such dashboard file")
    return Response(_read(name), media_type=media_type, headers=_COMMON_HEADERS)
