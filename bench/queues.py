"""Queue throughput: inbound messages through RabbitMQ, from publish to `inbound.enriched`, on PostgreSQL.

    python -m bench.queues [--messages 10000] [--customers 1000] [--workers 2]

Starts its own server (a fresh PostgreSQL database, Redis, RabbitMQ queues of its own), publishes the
messages as whatsapp-webhook-service does (as fast as the broker takes them, customers interleaved), and
reads `inbound.enriched` until every message came out. Reports messages per second from the first publish
to the last output, the publish-to-output latency, and whether every customer's messages came out in the
order they went in. Results go to bench/results/queues-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import aio_pika

from bench.fixtures import create_tenant
from bench.report import git_commit, machine_info, percentile
from bench.server import REPO_ROOT, ManagedServer, create_database, database_dsn, drop_database, free_port
from bench.server import sqlalchemy_url as to_sqlalchemy
from state_manager.queues.topology import queue_variables

RESULTS_DIR = REPO_ROOT / "bench" / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.queues", description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--customers", type=int, default=1_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--pg-dsn", default=os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
    )
    p.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument(
        "--rabbitmq-url", default=os.environ.get("BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1/")
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for every output")
    return p.parse_args(argv)


def queue_names(prefix: str) -> dict[str, str]:
    return {name: prefix + default for name, default in queue_variables().items()}


def wait_consuming(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{url}/health/ready", timeout=5) as response:
            queues = json.loads(response.read())["checks"]["queues"]
        if queues.get("connected") and all(
            q["state"] in ("consuming", "standby") for q in queues["queues"].values()
        ):
            return
        time.sleep(0.2)
    raise RuntimeError("the consumers did not start")


async def drive(args: argparse.Namespace, names: dict[str, str], tenant_id: str) -> dict[str, Any]:
    connection = await aio_pika.connect(args.rabbitmq_url)
    try:
        channel = await connection.channel(publisher_confirms=False)
        output = await channel.declare_queue(names["INBOUND_ENRICHED_QUEUE"], durable=True)
        sent_order: dict[str, list[str]] = {}
        plan = []
        for n in range(args.messages):
            customer = str(4_915_000_000_000 + n % args.customers)
            wamid = f"wamid.bench.{uuid.uuid4().hex}"
            sent_order.setdefault(customer, []).append(wamid)
            plan.append((customer, wamid))
        received: dict[str, list[str]] = {}
        latencies: list[float] = []
        done = asyncio.Event()
        last_output = 0.0

        async def on_output(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal last_output
            body = json.loads(message.body)  # recorded before any await: the order is the delivery order
            if body.get("tenantId") != tenant_id:
                return
            now = time.time()
            latencies.append(now - body["bench_sent"])
            received.setdefault(body["wa_id"], []).append(body["wamid"])
            last_output = now
            if len(latencies) >= args.messages:
                done.set()

        await output.consume(on_output, no_ack=True)
        started = time.time()
        for customer, wamid in plan:
            body = {
                "tenantId": tenant_id,
                "wamid": wamid,
                "wa_id": customer,
                "contact_name": "Bench",
                "timestamp": str(int(started)),
                "message_text": "hello",
                "media_url": None,
                "phone_number_id": "15550001234",
                "display_phone_number": "+1 555 000 1234",
                "bench_sent": time.time(),
            }
            await channel.default_exchange.publish(
                aio_pika.Message(json.dumps(body).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=names["INBOUND_QUEUE"],
            )
        published = time.time()
        await asyncio.wait_for(done.wait(), args.timeout)
        elapsed = last_output - started
        latencies.sort()
        return {
            "messages": args.messages,
            "customers": args.customers,
            "publish_seconds": round(published - started, 3),
            "seconds": round(elapsed, 3),
            "messages_per_second": round(args.messages / elapsed, 1),
            "latency_ms": {
                "p50": round(percentile(latencies, 50) * 1000, 1),
                "p99": round(percentile(latencies, 99) * 1000, 1),
                "max": round(latencies[-1] * 1000, 1),
            },
            "every_customer_in_order": received == sent_order,
        }
    finally:
        cleanup = await connection.channel()
        for name in names.values():
            await cleanup.queue_delete(name)
        await connection.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_tag = f"bq-{uuid.uuid4().hex[:8]}"
    database = f"sm_bench_{run_tag.replace('-', '_')}"
    names = queue_names(f"{run_tag}.")
    asyncio.run(create_database(args.pg_dsn, database))
    dsn = database_dsn(args.pg_dsn, database)
    server = ManagedServer(
        port=free_port(),
        workers=args.workers,
        database_url=to_sqlalchemy(dsn),
        redis_url=args.redis_url,
        extra_env={"RABBITMQ_URL": args.rabbitmq_url, "LOG_LEVEL": "WARNING", **names},
        log_path=Path(f"/tmp/{run_tag}.log"),
    )
    try:
        server.migrate()
        admin_key = server.create_admin_key(dsn)
        server.start()
        tenant_id, _ = asyncio.run(create_tenant(server.url, admin_key, run_tag))
        wait_consuming(server.url)
        result = asyncio.run(drive(args, names, tenant_id))
    finally:
        server.stop()
        asyncio.run(drop_database(args.pg_dsn, database))
    report = {
        "command": "python -m bench.queues " + " ".join(argv if argv is not None else sys.argv[1:]),
        "time": dt.datetime.now(dt.UTC).isoformat(),
        "commit": git_commit(REPO_ROOT),
        "machine": machine_info(),
        "workers": args.workers,
        "result": result,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"queues-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {path.relative_to(REPO_ROOT)}")
    return 0 if result["every_customer_in_order"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
