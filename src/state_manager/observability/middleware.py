"""One pure-ASGI middleware for every HTTP request: request ID, body size limit, metrics, access log."""

from __future__ import annotations

import logging
import re
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from state_manager.errors import BadRequest, PayloadTooLarge
from state_manager.http_errors import problem_response
from state_manager.observability.logging import request_id_var, request_key_var
from state_manager.observability.metrics import HTTP_LATENCY, HTTP_REQUESTS
from state_manager.ratelimit.buckets import limit_headers_var

access_log = logging.getLogger("state_manager.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class RequestMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        declared_length = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                request_id = candidate if _REQUEST_ID.match(candidate) else None
            elif name == b"content-length":
                declared_length = int(value) if value.isdigit() else None
        request_id = request_id or secrets.token_hex(16)
        token = request_id_var.set(request_id)
        key_ids: list[str] = []
        key_token = request_key_var.set(key_ids)
        limit_headers: list[tuple[bytes, bytes]] = []  # RateLimit-* of the request's key, if it has a limit
        limit_token = limit_headers_var.set(limit_headers)
        started = time.perf_counter()
        status = 500
        limit = self.max_body_bytes
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"the body is larger than {limit} bytes")
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                    *limit_headers,
                ]
            await send(message)

        try:
            if declared_length is not None and declared_length > limit:
                # Refused before a byte of the body is read.
                await problem_response(PayloadTooLarge(f"the body is larger than {limit} bytes"))(
                    scope, receive, send_with_id
                )
            elif "\x00" in scope["path"] or b"%00" in scope["query_string"]:
                # PostgreSQL text cannot hold NUL; refuse it on every backend alike.
                await problem_response(BadRequest("NUL characters are not accepted in the URL"))(
                    scope, receive, send_with_id
                )
            else:
                await self.app(scope, limited_receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            HTTP_REQUESTS.labels(method, template, str(status)).inc()
            HTTP_LATENCY.labels(method, template).observe(elapsed)
            extra: dict[str, object] = {
                "status": status,
                "route": template,
                "duration_ms": round(elapsed * 1000, 2),
            }
            if key_ids:
                extra["key_id"] = key_ids[-1]
            access_log.info("%s %s %s", method, scope["path"], status, extra=extra)
            limit_headers_var.reset(limit_token)
            request_key_var.reset(key_token)
            request_id_var.reset(token)
