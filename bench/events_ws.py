"""Commit → WebSocket delivery: how long an event takes from its transaction to every subscriber.

A writer makes `--rate` events per second, paced: with `--events-per-write 1`, inbound messages for
customers that already have an open conversation (each request writes one `message.recorded`); with
N > 1, batches of N delivery receipts for outbound messages recorded before the run, each moving one
message to its next status (one `message.status_changed` each, N per transaction, as a WhatsApp status
webhook does). Subscriber processes hold
`--subscribers` WebSockets on `/v1/ws` for the tenant and time every event they receive against the
event's `occurred_at` (taken in the writing transaction, before its commit, so the figure slightly
overstates the delay). Every subscriber must receive every event exactly once and in order; the run
fails otherwise.

    python -m bench.events_ws --start-server --rate 1000 --subscribers 100 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import multiprocessing
import os
import secrets
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson

from bench import fixtures, report, server
from bench.fixtures import Fixture
from bench.httpclient import JsonClient
from bench.scenarios import BUSINESS_NUMBER_ID, iso_now

RESULTS_DIR = Path(__file__).parent / "results"
RECEIPT_ORDER = ("sent", "delivered", "read")
TARGET_P99_MS = 50.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.events_ws", description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=1000.0, help="events per second written")
    p.add_argument(
        "--events-per-write",
        type=int,
        default=10,
        help="1: one inbound message per request; N > 1: N receipts per request (one transaction)",
    )
    p.add_argument("--subscribers", type=int, default=100)
    p.add_argument("--subscriber-processes", type=int, default=2)
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds written before measuring")
    p.add_argument("--customers", type=int, default=500, help="customers with an open conversation")
    p.add_argument("--concurrency", type=int, default=64, help="the writer's connections")
    p.add_argument("--workers", type=int, default=2, help="server worker processes")
    p.add_argument("--start-server", action="store_true", help="a fresh PostgreSQL database and server")
    p.add_argument("--url", default="http://127.0.0.1:3005", help="a running server, without --start-server")
    p.add_argument("--admin-key", default=os.environ.get("BENCH_ADMIN_KEY"))
    p.add_argument(
        "--pg-admin-dsn",
        default=os.environ.get("BENCH_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    p.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/1"))
    p.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    return p.parse_args(argv)


# --- Subscribers ---------------------------------------------------------------------------------------


def _epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


class LeanWebSocket:
    """Just enough of a WebSocket client for this benchmark: the subscribers share two cores with the
    server, PostgreSQL and the writer, and the `websockets` client's cost per frame (about as much as the
    server's) showed up as delay in the figures. Reads unmasked, unfragmented server frames; answers pings;
    `tests/test_events_live.py` checks the protocol with the real client."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, url: str, headers: dict[str, str]) -> LeanWebSocket:
        host, _, port = url.removeprefix("http://").partition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        request = [
            "GET /v1/ws HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        writer.write(("\r\n".join(request) + "\r\n\r\n").encode())
        response = await reader.readuntil(b"\r\n\r\n")
        if not response.startswith(b"HTTP/1.1 101"):
            raise fixtures.SetupError(f"WebSocket refused: {response[:200]!r}")
        return cls(reader, writer)

    async def recv(self) -> bytes:
        """The next text frame's payload (pings are answered on the way)."""
        while True:
            head = await self.reader.readexactly(2)
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = int.from_bytes(await self.reader.readexactly(2), "big")
            elif length == 127:
                length = int.from_bytes(await self.reader.readexactly(8), "big")
            payload = await self.reader.readexactly(length)
            if opcode == 0x1:
                return payload
            if opcode == 0x8:
                raise ConnectionError(f"closed by the server: {payload[:2].hex()} {payload[2:]!r}")
            if opcode == 0x9:  # ping: a pong with the same payload, masked as a client must
                self._send(0xA, payload)

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        self.writer.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def close(self) -> None:
        self._send(0x8, (1000).to_bytes(2, "big"))
        self.writer.close()


async def _subscribe(
    url: str, headers: dict[str, str], count: int, measure_from: float, until_seq: Connection, out: Connection
) -> None:
    sockets = [await LeanWebSocket.open(url, headers) for _ in range(count)]
    for ws in sockets:
        orjson.loads(await ws.recv())  # {"kind": "live"}: subscribed from here on
    out.send("ready")
    latencies: list[float] = []
    timeline: list[tuple[float, float]] = []  # (received at, latency) of the first subscriber's events
    problems: list[str] = []
    received = [0] * count
    last = [0] * count
    final: int | None = None

    async def read(index: int, ws: LeanWebSocket) -> None:
        while final is None or last[index] < final:
            try:
                frame = orjson.loads(await asyncio.wait_for(ws.recv(), 1.0))
            except TimeoutError:
                continue
            if frame["kind"] != "events":
                continue
            now = time.time()
            for event in frame["events"]:
                seq = event["seq"]
                if last[index] and seq != last[index] + 1:
                    problems.append(f"subscriber {index}: {seq} after {last[index]}")
                last[index] = seq
                received[index] += 1
                sent_at = _epoch(event["occurred_at"])
                if sent_at >= measure_from:
                    latencies.append(now - sent_at)
                    if index == 0:
                        timeline.append((now, now - sent_at))

    async def learn_final() -> None:
        nonlocal final
        loop = asyncio.get_running_loop()
        final = await loop.run_in_executor(None, until_seq.recv)

    readers = [asyncio.create_task(read(i, ws)) for i, ws in enumerate(sockets)]
    await learn_final()
    _, pending = await asyncio.wait(readers, timeout=60)
    for task in pending:
        task.cancel()
        problems.append("a subscriber did not receive every event within 60 s")
    for ws in sockets:
        ws.close()
    out.send(
        {
            "latencies": latencies,
            "timeline": timeline,
            "received": received,
            "last": last,
            "problems": problems[:20],
        }
    )


def _subscriber_main(
    url: str, headers: dict[str, str], count: int, measure_from: float, until_seq: Connection, out: Connection
) -> None:
    asyncio.run(_subscribe(url, headers, count, measure_from, until_seq, out))


# --- Writer --------------------------------------------------------------------------------------------


def _requests(fixture: Fixture, args: argparse.Namespace, run_tag: str, total: int) -> list[tuple[str, Any]]:
    """The writes, in order: each makes `events_per_write` events."""
    per = args.events_per_write
    if per == 1:
        return [
            (
                "/v1/messages/inbound",
                {
                    "wa_id": fixture.lookup_wa_ids[i % len(fixture.lookup_wa_ids)],
                    "business_number_id": BUSINESS_NUMBER_ID,
                    "wamid": f"wamid.{run_tag}.ev.{i}",
                    "text": "hello",
                    "occurred_at": iso_now(),
                },
            )
            for i in range(total)
        ]
    # Receipt k moves message k % M to its next status: the N receipts of one batch name N messages.
    wamids = fixture.outbound_wamids
    at = iso_now()
    return [
        (
            "/v1/receipts",
            {
                "receipts": [
                    {"wamid": wamids[k % len(wamids)], "status": RECEIPT_ORDER[k // len(wamids)], "at": at}
                    for k in range(start, start + per)
                ]
            },
        )
        for start in range(0, total, per)
    ]


async def _write(url: str, fixture: Fixture, args: argparse.Namespace, run_tag: str) -> dict[str, Any]:
    client = JsonClient(url, fixture.token, connections=args.concurrency)
    await client.open()
    total = int(args.rate * (args.warmup + args.duration)) // args.events_per_write * args.events_per_write
    writes = _requests(fixture, args, run_tag, total)
    per_second = args.rate / args.events_per_write
    errors = 0
    slots = asyncio.Semaphore(args.concurrency)
    started = time.monotonic()

    async def one(path: str, body: Any) -> None:
        nonlocal errors
        try:
            status, _ = await client.request("POST", path, body)
        finally:
            slots.release()
        if status not in (200, 201):
            errors += 1

    tasks = []
    for i, (path, body) in enumerate(writes):
        delay = started + i / per_second - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await slots.acquire()
        tasks.append(asyncio.create_task(one(path, body)))
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    client.close()
    return {
        "events": total,
        "writes": len(writes),
        "errors": errors,
        "seconds": round(elapsed, 2),
        "events_per_second": round(total / elapsed, 1),
    }


async def _head(url: str, token: str) -> int:
    client = JsonClient(url, token, connections=1)
    try:
        status, page = await client.request("GET", "/v1/events?limit=1")
    finally:
        client.close()
    if status != 200:
        raise fixtures.SetupError(f"GET /v1/events: HTTP {status}: {page}")
    head: int = page["head"]
    return head


# --- The run -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    run_tag = f"bench{started:%Y%m%d%H%M%S}{secrets.token_hex(2)}"
    managed: server.ManagedServer | None = None
    database: str | None = None
    try:
        if args.start_server:
            database = f"bench_{run_tag}"
            asyncio.run(server.create_database(args.pg_admin_dsn, database))
            dsn = server.database_dsn(args.pg_admin_dsn, database)
            managed = server.ManagedServer(
                port=server.free_port(),
                workers=args.workers,
                database_url=server.sqlalchemy_url(dsn),
                redis_url=None if args.redis_url.lower() == "none" else args.redis_url,
                extra_env={"LOG_LEVEL": "WARNING", **dict(item.split("=", 1) for item in args.server_env)},
                log_path=Path(tempfile.gettempdir()) / f"state-manager-{run_tag}.log",
            )
            managed.migrate()
            admin_key = managed.create_admin_key(dsn)
            managed.start()
            url = managed.url
        else:
            url, admin_key = args.url.rstrip("/"), args.admin_key
            if not admin_key:
                raise SystemExit("no admin key: pass --admin-key or set BENCH_ADMIN_KEY")
        tenant_id, token = asyncio.run(fixtures.create_tenant(url, admin_key, run_tag))
        fixture = Fixture(tenant_id=tenant_id, token=token)
        print(f"seeding {args.customers} customers with an open conversation ...", flush=True)
        asyncio.run(fixtures.seed_conversations(url, fixture, args.customers, run_tag))
        if args.events_per_write > 1:
            events = int(args.rate * (args.warmup + args.duration))
            messages = -(-events // len(RECEIPT_ORDER))
            print(f"seeding {messages} outbound messages for the receipts ...", flush=True)
            asyncio.run(fixtures.seed_outbound(url, fixture, messages, run_tag))
        result = _measure(url, fixture, args, run_tag)
    finally:
        if managed is not None:
            managed.stop()
        if database is not None:
            asyncio.run(server.drop_database(args.pg_admin_dsn, database))

    print(json.dumps({k: v for k, v in result.items() if k != "command"}, indent=2))
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"events-ws-{started:%Y%m%dT%H%M%SZ}.json"
    result["command"] = " ".join(["python", "-m", "bench.events_ws", *(argv or sys.argv[1:])])
    result["machine"] = report.machine_info()
    result["commit"] = report.git_commit(server.REPO_ROOT)
    report.write_json(path, result)
    print(f"results: {path}")
    return 0 if result["target_met"] else 1


def _measure(url: str, fixture: Fixture, args: argparse.Namespace, run_tag: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {fixture.token}"}
    measure_from = time.time() + args.warmup + 2.0  # after the subscribers are in and the warm-up is over
    context = multiprocessing.get_context("spawn")
    processes, finals, outs = [], [], []
    shares = [
        len(range(n, args.subscribers, args.subscriber_processes)) for n in range(args.subscriber_processes)
    ]
    for share in shares:
        final_reader, final_writer = context.Pipe(duplex=False)
        out_reader, out_writer = context.Pipe(duplex=False)
        process = context.Process(
            target=_subscriber_main, args=(url, headers, share, measure_from, final_reader, out_writer)
        )
        process.start()
        processes.append(process)
        finals.append(final_writer)
        outs.append(out_reader)
    for out in outs:
        if not out.poll(120) or out.recv() != "ready":
            raise fixtures.SetupError("the subscribers did not connect")
    time.sleep(max(0.0, measure_from - args.warmup - time.time()))
    print(
        f"writing {args.rate:g} events/s for {args.warmup:g}+{args.duration:g} s "
        f"to {args.subscribers} subscribers",
        flush=True,
    )
    before = asyncio.run(_head(url, fixture.token))
    written = asyncio.run(_write(url, fixture, args, run_tag))
    final = before + written["events"]
    deadline = time.monotonic() + 30
    while asyncio.run(_head(url, fixture.token)) < final and time.monotonic() < deadline:
        time.sleep(0.2)
    for pipe in finals:
        pipe.send(final)
    parts = [out.recv() for out in outs]
    for process in processes:
        process.join(30)
    latencies = sorted(ms for part in parts for ms in part["latencies"])
    received = [count for part in parts for count in part["received"]]
    problems = [problem for part in parts for problem in part["problems"]]
    p99 = round(report.percentile(latencies, 99) * 1000, 2) if latencies else None
    # The first subscriber's worst delay in each second of the run: shows whether delays are steady or
    # come in bursts.
    worst: dict[int, float] = {}
    for at, delay in parts[0]["timeline"]:
        worst[int(at)] = max(worst.get(int(at), 0.0), delay)
    per_second = [round(worst[second] * 1000, 1) for second in sorted(worst)]
    complete = not problems and len(set(received)) == 1 and received[0] == written["events"]
    return {
        "rate_per_s": args.rate,
        "events_per_write": args.events_per_write,
        "subscribers": args.subscribers,
        "workers": args.workers,
        "writer": written,
        "events_per_subscriber": sorted(set(received)),
        "deliveries_measured": len(latencies),
        "latency_ms": {
            q: round(report.percentile(latencies, p) * 1000, 2) if latencies else None
            for q, p in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
        },
        "worst_ms_each_second": per_second,
        "every_event_once_in_order": complete,
        "problems": problems[:20],
        "target": f"p99 < {TARGET_P99_MS:g} ms",
        "target_met": complete and p99 is not None and p99 < TARGET_P99_MS and written["errors"] == 0,
    }


if __name__ == "__main__":
    sys.exit(main())
