"""A small HTTP/1.1 keep-alive client on a raw asyncio Protocol.

Why not httpx or aiohttp: on a 2-core machine the load generator takes CPU away from the server it
measures, so every microsecond the client spends per request is a microsecond the server does not
get. This client sends pre-encoded request bytes and parses only the status line, Content-Length
(or chunked framing) and the body, which costs a fraction of what a general client costs per request.
It handles one request at a time per connection (no pipelining), exactly like a real keep-alive client.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast
from urllib.parse import urlsplit

_CRLF2 = b"\r\n\r\n"


class ConnectionClosed(ConnectionError):
    pass


class BadResponse(ConnectionError):
    pass


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionClosed(str(exc) if exc else "the server closed the connection"))
        self.waiter = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self.waiter
        if waiter is None:
            return
        try:
            parsed = self._parse()
        except BadResponse as exc:
            self.waiter = None
            waiter.set_exception(exc)
            if self.transport is not None:
                self.transport.close()
            return
        if parsed is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(parsed)

    def _parse(self) -> tuple[int, bytes] | None:
        buf = self.buffer
        end = buf.find(_CRLF2)
        if end < 0:
            return None
        head = bytes(buf[:end]).lower()
        if not head.startswith(b"http/1."):
            raise BadResponse(f"not an HTTP/1.x response: {bytes(buf[:40])!r}")
        status = int(head[9:12])
        start = end + 4
        self.close_after = b"\r\nconnection: close" in head
        cl_at = head.find(b"\r\ncontent-length:")
        if cl_at >= 0:
            cl_end = head.find(b"\r\n", cl_at + 2)
            length = int(head[cl_at + 17 : cl_end if cl_end >= 0 else len(head)].strip())
            if len(buf) < start + length:
                return None
            body = bytes(buf[start : start + length])
            del buf[: start + length]
            return status, body
        if b"\r\ntransfer-encoding: chunked" in head:
            return self._parse_chunked(start, status)
        if status in (204, 304) or 100 <= status < 200:
            del buf[:start]
            return status, b""
        raise BadResponse("a response with neither Content-Length nor chunked framing")

    def _parse_chunked(self, pos: int, status: int) -> tuple[int, bytes] | None:
        buf = self.buffer
        body = bytearray()
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(bytes(buf[pos:line_end]).split(b";", 1)[0], 16)
            pos = line_end + 2
            if size == 0:
                trailer_end = buf.find(b"\r\n", pos)
                while trailer_end >= 0 and trailer_end != pos:  # skip trailer fields
                    pos = trailer_end + 2
                    trailer_end = buf.find(b"\r\n", pos)
                if trailer_end < 0:
                    return None
                del buf[: trailer_end + 2]
                return status, bytes(body)
            if len(buf) < pos + size + 2:
                return None
            body += buf[pos : pos + size]
            pos += size + 2


class Connection:
    """One keep-alive connection; reconnects by itself after the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._proto: _Protocol | None = None

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(_Protocol, self.host, self.port)
        self._proto = proto

    @property
    def local_port(self) -> int | None:
        if self._proto is None or self._proto.transport is None or self._proto.closed:
            return None
        sockname = self._proto.transport.get_extra_info("sockname")
        return int(sockname[1]) if sockname else None

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        """Send one whole pre-encoded request and return (status, body)."""
        proto = self._proto
        if proto is None or proto.closed:
            await self.connect()
            proto = self._proto
            assert proto is not None
        assert proto.transport is not None
        waiter: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        proto.waiter = waiter
        proto.transport.write(raw)
        result = await waiter
        if proto.close_after:
            proto.transport.close()
            proto.closed = True
        return result

    def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None


def encode_request(
    method: str,
    target: str,
    host_header: str,
    *,
    token: str | None = None,
    body: bytes | None = None,
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host_header}"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    if body is not None:
        lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + (body or b"")


def split_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"only http://host:port URLs are supported, got {url!r}")
    return parts.hostname, parts.port or 80


class JsonClient:
    """Setup-time convenience over a few connections: JSON in, (status, JSON) out."""

    def __init__(self, url: str, token: str | None = None, connections: int = 16) -> None:
        self.host, self.port = split_url(url)
        self.host_header = f"{self.host}:{self.port}"
        self.token = token
        self._all = [Connection(self.host, self.port) for _ in range(connections)]
        self._pool: asyncio.Queue[Connection] = asyncio.Queue()
        for conn in self._all:
            self._pool.put_nowait(conn)

    async def open(self) -> None:
        """Connect one at a time (each with a round trip), so the server's workers share the connections
        instead of one of them accepting a burst of connects."""
        probe = encode_request("GET", "/health/live", self.host_header)
        for conn in self._all:
            await conn.connect()
            await conn.send(probe)

    async def request(
        self, method: str, target: str, payload: Any = None, *, token: str | None = None
    ) -> tuple[int, Any]:
        body = None if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        raw = encode_request(method, target, self.host_header, token=token or self.token, body=body)
        conn = await self._pool.get()
        try:
            status, data = await conn.send(raw)
        except (ConnectionError, OSError):
            conn.close()
            raise
        finally:
            self._pool.put_nowait(conn)
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, data.decode("utf-8", "replace")

    def close(self) -> None:
        for conn in self._all:
            conn.close()
