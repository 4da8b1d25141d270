"""Events over real WebSockets: two instances on PostgreSQL sharing a Redis of the test's own, clients on
each (the `websockets` client), and the embedded default on its own."""

from __future__ import annotations

import base64
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import orjson
import pytest
import redis
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from domain.helpers import inbound, ok, wa_id
from harness import RedisServer, ServerProcess, cli_json, create_tenant, eventually, server_env

Frame = dict[str, Any]


class Subscriber:
    """A WebSocket client in a thread of its own, keeping every frame it receives and how it was closed."""

    def __init__(self, base_url: str, headers: dict[str, str], **params: Any) -> None:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        self.url = base_url.replace("http://", "ws://") + "/v1/ws" + (f"?{query}" if query else "")
        self.headers = headers
        self.frames: list[Frame] = []
        self.close_code: int | None = None
        self.close_reason = ""
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._connected.wait(10), "the WebSocket did not open"

    def _run(self) -> None:
        try:
            with connect(self.url, additional_headers=self.headers, open_timeout=10) as ws:
                self._connected.set()
                self._read(ws)
        except ConnectionClosed as exc:
            self._closed(exc)
        finally:
            self._connected.set()

    def _read(self, ws: ClientConnection) -> None:
        try:
            while not self._stop.is_set():
                try:
                    message = ws.recv(timeout=0.1)
                except TimeoutError:
                    continue
                self.frames.append(orjson.loads(message))
        except ConnectionClosed as exc:
            self._closed(exc)

    def _closed(self, exc: ConnectionClosed) -> None:
        if exc.rcvd is not None:
            self.close_code, self.close_reason = exc.rcvd.code, exc.rcvd.reason

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    @property
    def events(self) -> list[Frame]:
        return [event for frame in self.frames if frame["kind"] == "events" for event in frame["events"]]

    def wait_for_seq(self, seq: int, timeout: float = 10.0) -> list[Frame]:
        eventually(lambda: self.events and self.events[-1]["seq"] >= seq, timeout=timeout)
        return self.events

    def wait_closed(self, timeout: float = 10.0) -> int:
        self._thread.join(timeout)
        assert self.close_code is not None, "not closed by the server"
        return self.close_code


def assert_exactly_once_in_order(events: list[Frame], expected: list[int]) -> None:
    assert [e["seq"] for e in events] == expected


# --- Two instances on PostgreSQL and Redis -------------------------------------------------------------


@pytest.fixture
def instances(
    request: pytest.FixtureRequest, tmp_path: Path, own_redis: RedisServer
) -> Iterator[tuple[list[ServerProcess], dict[str, str]]]:
    env = server_env(tmp_path, request.getfixturevalue("postgres_url"), REDIS_URL=own_redis.url,
                     CACHE_WARM_LIMIT="0", EVENTS_WS_BACKLOG="20")  # fmt: skip
    tenant = f"live-{tmp_path.name[-10:]}".replace("_", "-").lower()
    admin = cli_json("keys", "create", "--kind", "admin", "--name", "live test", env=env, cwd=tmp_path)
    create_tenant(tenant, env=env, cwd=tmp_path)
    servers = [ServerProcess(f"live-{n}", env, tmp_path) for n in range(2)]
    for server in servers:
        server.start()
    try:
        for server in servers:
            server.wait_for("/health/ready")
        yield servers, {"Authorization": f"Bearer {admin['key']}", "X-Tenant-ID": tenant}
    finally:
        # Every server is stopped before any failure to stop is reported: one left running would outlive
        # the test and load the rest of the session.
        unclean = [server.log_tail() for server in servers if not server.stop()]
        assert not unclean, "\n\n".join(unclean)


def head_of(base_url: str, headers: dict[str, str]) -> int:
    head: int = ok(httpx.get(f"{base_url}/v1/events", params={"limit": 1}, headers=headers))["head"]
    return head


def write_through(servers: list[ServerProcess], headers: dict[str, str], count: int) -> None:
    """`count` inbound messages, alternately through each instance, from two threads at once."""

    def write(offset: int) -> None:
        for n in range(offset, count, 2):
            with httpx.Client(base_url=servers[n % 2].base_url, headers=headers, timeout=30) as client:
                inbound(client, wa_id(), "bn-live")

    threads = [threading.Thread(target=write, args=(offset,)) for offset in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.mark.postgres
@pytest.mark.redis
def test_clients_on_both_instances_get_every_event_once_in_order(
    instances: tuple[list[ServerProcess], dict[str, str]],
) -> None:
    servers, headers = instances
    start = head_of(servers[0].base_url, headers)
    clients = [Subscriber(server.base_url, headers, after=start) for server in servers for _ in range(3)]
    write_through(servers, headers, 40)  # 3 events per new customer: 120 events
    expected = list(range(start + 1, start + 121))
    for client in clients:
        assert_exactly_once_in_order(client.wait_for_seq(expected[-1]), expected)
    time.sleep(0.3)  # nothing more arrives: no duplicate after the last one either
    logged = ok(httpx.get(f"{servers[1].base_url}/v1/events", params={"after": start, "limit": 1000},
                          headers=headers))["events"]  # fmt: skip
    for client in clients:
        client.stop()
        assert client.events == logged
        assert client.frames[0] == {"kind": "live", "seq": start}


@pytest.mark.postgres
@pytest.mark.redis
def test_a_client_that_drops_and_resumes_gets_what_it_missed(
    instances: tuple[list[ServerProcess], dict[str, str]],
) -> None:
    servers, headers = instances
    start = head_of(servers[0].base_url, headers)
    first = Subscriber(servers[0].base_url, headers, after=start)
    write_through(servers, headers, 4)
    seen = first.wait_for_seq(start + 12)
    first.stop()  # gone: what follows is written while no one listens
    write_through(servers, headers, 6)
    resumed = Subscriber(servers[1].base_url, headers, after=seen[-1]["seq"])
    write_through(servers, headers, 2)  # and live again after the replay
    events = resumed.wait_for_seq(start + 36)
    assert_exactly_once_in_order(events, list(range(start + 13, start + 37)))
    replay_end = next(i for i, f in enumerate(resumed.frames) if f["kind"] == "live")
    replayed = [e["seq"] for f in resumed.frames[:replay_end] for e in f["events"]]
    # The missed events come first, from the table (up to what the instance had handed out live).
    assert replayed
    assert replayed == list(range(start + 13, start + 13 + len(replayed)))
    resumed.stop()


@pytest.mark.postgres
@pytest.mark.redis
def test_filters_heartbeats_and_refusals(instances: tuple[list[ServerProcess], dict[str, str]]) -> None:
    servers, headers = instances
    base = servers[0].base_url
    start = head_of(base, headers)
    with httpx.Client(base_url=servers[1].base_url, headers=headers, timeout=30) as client:
        chosen = inbound(client, wa_id(), "bn-live")
        inbound(client, wa_id(), "bn-live")
    only_messages = Subscriber(base, headers, after=start, types="message.recorded")
    one_customer = Subscriber(base, headers, after=start, customer_id=chosen["customer_id"], heartbeat=0.5)
    assert [e["type"] for e in only_messages.wait_for_seq(start + 6)] == ["message.recorded"] * 2
    assert [e["seq"] for e in one_customer.wait_for_seq(start + 3)] == [start + 1, start + 2, start + 3]
    # A heartbeat says how far the subscription has covered, filtered-out events included.
    beat = eventually(lambda: next((f for f in one_customer.frames if f["kind"] == "heartbeat"), None))
    assert beat["seq"] == start + 6
    only_messages.stop()
    one_customer.stop()

    refused = [
        (Subscriber(base, {}), 4401),
        (Subscriber(base, {"Authorization": "Bearer smk_0000000000000000_nope"}), 4401),
        (Subscriber(base, headers, after=-1), 4400),
        (Subscriber(base, headers, types="no.such"), 4400),
        (Subscriber(base, {"Authorization": headers["Authorization"]}), 4400),  # which tenant?
    ]
    for subscriber, code in refused:
        assert subscriber.wait_closed() == code, subscriber.close_reason


def stalled_websocket(port: int, headers: dict[str, str]) -> socket.socket:
    """A WebSocket opened by hand that then reads nothing, with a small receive buffer (set before
    connecting, to bound the window), so that what the server sends backs up."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    request = [
        "GET /v1/ws HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    sock.sendall(("\r\n".join(request) + "\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def read_frames(sock: socket.socket) -> Iterator[tuple[int, bytes]]:
    """(opcode, payload) of each frame the server sent, until it closed the connection."""
    sock.settimeout(10)
    with sock, sock.makefile("rb") as stream:
        yield from _frames_of(stream)


def _frames_of(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:

    def exactly(count: int) -> bytes:
        data = stream.read(count)
        assert data is not None
        assert len(data) == count, "the connection ended inside a frame"
        return data

    while first := stream.read(2):
        opcode, length = first[0] & 0x0F, first[1] & 0x7F
        if length == 126:
            length = int.from_bytes(exactly(2), "big")
        elif length == 127:
            length = int.from_bytes(exactly(8), "big")
        yield opcode, exactly(length)


@pytest.mark.postgres
@pytest.mark.redis
def test_a_consumer_too_slow_is_closed_without_holding_others_back(
    instances: tuple[list[ServerProcess], dict[str, str]],
) -> None:
    servers, headers = instances
    base = servers[0].base_url
    start = head_of(base, headers)
    slow = stalled_websocket(servers[0].port, headers)
    fast = Subscriber(base, headers)
    closed = 'state_manager_ws_closed_total{reason="too_slow"} 1.0'
    frames: list[tuple[int, bytes]] = []

    def read_once_closed() -> None:
        # Reading again as soon as the server gave up on it (within CLOSE_WAIT_SECONDS), it finds what
        # was sent before the close, then the close frame and its code.
        eventually(lambda: closed in httpx.get(f"{base}/metrics").text, timeout=60)
        frames.extend(read_frames(slow))

    reader = threading.Thread(target=read_once_closed)
    reader.start()
    big = "x" * 100_000  # 100 such events are more than the kernel buffers between them
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        conversation_id = inbound(client, wa_id(), "bn-live")["conversation_id"]
        for n in range(100):
            ok(client.patch(f"/v1/conversations/{conversation_id}/context", json={"values": {f"k{n}": big}}))
    # The others are not held back: every event reaches the fast client while the slow one reads nothing.
    assert_exactly_once_in_order(fast.wait_for_seq(start + 103), list(range(start + 1, start + 104)))
    fast.stop()
    reader.join(60)
    sent = [orjson.loads(payload) for opcode, payload in frames if opcode == 1]
    assert sent[0]["kind"] == "live"
    events = [event["seq"] for frame in sent[1:] for event in frame["events"]]
    opcode, payload = frames[-1]
    assert opcode == 8
    assert int.from_bytes(payload[:2], "big") == 4408
    reason = payload[2:].decode()
    assert reason.startswith("too slow; resume with after=")
    resume_after = int(reason.rsplit("=", 1)[1])
    assert resume_after < start + 103
    assert events == list(range(start + 1, resume_after + 1))


# --- The embedded default ----------------------------------------------------------------------------


def test_embedded_default_delivers_live_and_resumes(tmp_path: Path) -> None:
    env = server_env(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'sm.db'}")
    server = ServerProcess("embedded-live", env, tmp_path)
    server.start()
    try:
        server.wait_for("/health/ready")
        key = (tmp_path / "data" / "admin-key").read_text().strip()
        headers = {"Authorization": f"Bearer {key}", "X-Tenant-ID": "default"}
        live = Subscriber(server.base_url, {}, api_key=key, tenant="default")  # as a browser would
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as client:
            inbound(client, wa_id(), "bn-embedded")
            assert_exactly_once_in_order(live.wait_for_seq(3), [1, 2, 3])
            live.stop()
            inbound(client, wa_id(), "bn-embedded")
        resumed = Subscriber(server.base_url, headers, after=2)
        assert_exactly_once_in_order(resumed.wait_for_seq(6), [3, 4, 5, 6])
        resumed.stop()
        assert "api_key=[redacted]" in server.log_text()
        assert key not in server.log_text()
    finally:
        assert server.stop(), server.log_tail()


@pytest.mark.postgres
@pytest.mark.redis
def test_nothing_is_lost_while_redis_is_away(
    instances: tuple[list[ServerProcess], dict[str, str]], own_redis: RedisServer
) -> None:
    """Redis stopped mid-traffic and started again, empty: subscribers get every event from the table
    meanwhile, and the relay puts back on the tenant's stream what Redis lost."""
    servers, headers = instances
    start = head_of(servers[0].base_url, headers)
    clients = [Subscriber(server.base_url, headers, after=start) for server in servers]
    write_through(servers, headers, 4)
    own_redis.stop()
    write_through(servers, headers, 4)  # numbered all the same; the hubs read them from the table

    def events_check(server: ServerProcess) -> Any:
        ready = httpx.get(f"{server.base_url}/health/ready")
        assert ready.status_code == 200  # without the bus: degraded, still ready
        return ready.json()["checks"]["events"]

    eventually(lambda: all(events_check(server)["status"] == "degraded" for server in servers))
    for client in clients:
        assert_exactly_once_in_order(client.wait_for_seq(start + 24), list(range(start + 1, start + 25)))
    own_redis.start()
    eventually(lambda: all(events_check(server)["status"] == "ok" for server in servers))
    write_through(servers, headers, 2)
    for client in clients:
        assert_exactly_once_in_order(client.wait_for_seq(start + 30), list(range(start + 1, start + 31)))
        client.stop()
    tenant = headers["X-Tenant-ID"]
    stream = redis.Redis.from_url(own_redis.url)

    def restored() -> list[int]:
        entries = stream.xrange(f"sm:{{{tenant}}}:events")
        return [int(entry_id.split(b"-")[0]) for entry_id, _ in entries]

    try:
        eventually(lambda: restored() == list(range(1, start + 31)), timeout=20)
    finally:
        stream.close()
