"""Load-test the state-manager hot paths over real HTTP, against a server running in another process.

    .venv/bin/python -m bench.run --url http://127.0.0.1:3005 --admin-key smk_... [--duration 10]
    .venv/bin/python -m bench.run --start-server            # fresh PostgreSQL database + Redis, 2 workers

See docs/benchmarks.md for what each scenario measures and the targets.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import os
import secrets
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import fixtures, pinning, report, server, sysstat
from bench.fixtures import Fixture
from bench.httpclient import split_url
from bench.loadgen import run_load
from bench.scenarios import BUSINESS_NUMBER_ID, ScenarioSpec

ALL_SCENARIOS = ("baseline", "lookup", "lookup-half", "mix", "inbound", "receipts", "webhook")
# Scenarios that look up the seeded customers.
LOOKUP_SCENARIOS = ("lookup", "lookup-half", "mix")
# Scenarios that need outbound messages to send statuses for; each gets its own share of them.
STATUS_SCENARIOS = ("receipts", "webhook")
QUIET_THRESHOLD = 15.0  # % of one core the machine may use with no benchmark load
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--url",
        default=os.environ.get("BENCH_URL", "http://127.0.0.1:3005"),
        help="a running server (loopback only); ignored with --start-server",
    )
    p.add_argument(
        "--admin-key",
        default=os.environ.get("BENCH_ADMIN_KEY"),
        help="admin API key (env BENCH_ADMIN_KEY; default: the embedded server's ./data/admin-key)",
    )
    p.add_argument(
        "--scenarios",
        default=",".join(ALL_SCENARIOS),
        help=f"comma-separated, in order, from {','.join(ALL_SCENARIOS)}",
    )
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per scenario")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring, per scenario")
    p.add_argument("--settle", type=float, default=2.0, help="idle seconds before each scenario")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="wait up to this many seconds before each scenario for the machine to be idle",
    )
    p.add_argument("--concurrency", type=int, default=32, help="keep-alive connections in total")
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="requests a second, on a fixed schedule, in every scenario (default: as fast as the server "
        "answers); targets are then not judged. Not with lookup-half",
    )
    p.add_argument(
        "--processes", type=int, default=1, help="load-generator processes sharing the connections"
    )
    p.add_argument(
        "--seed-conversations",
        type=int,
        default=1000,
        help="customers with an open conversation, for lookups (and receipts)",
    )
    p.add_argument(
        "--inbound-customers",
        type=int,
        default=1000,
        help="customers the inbound scenario's messages come from (created before it, one message each)",
    )
    p.add_argument(
        "--receipt-messages",
        type=int,
        default=60000,
        help="outbound messages recorded before the run; each takes sent, delivered and read",
    )
    p.add_argument("--receipt-batch", type=int, default=100, help="receipts per request (max 500)")
    p.add_argument(
        "--no-balance",
        action="store_true",
        help="do not even out the connections over the server's worker processes",
    )
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    s = p.add_argument_group("--start-server: a fresh PostgreSQL database and the server as a subprocess")
    s.add_argument("--start-server", action="store_true")
    s.add_argument("--workers", type=int, default=2, help="server worker processes")
    s.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    s.add_argument(
        "--pg-admin-dsn",
        default=os.environ.get("BENCH_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="where to CREATE DATABASE bench_<run>; the server gets the same credentials",
    )
    s.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/1"),
        help="REDIS_URL for the server; 'none' for the in-process cache",
    )
    s.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the server (repeatable), e.g. LOG_LEVEL=WARNING",
    )
    s.add_argument(
        "--no-analyze",
        action="store_true",
        help="do not ANALYZE the database after seeding (leave statistics to autovacuum)",
    )
    s.add_argument("--keep-db", action="store_true", help="do not drop the database afterwards")
    s.add_argument(
        "--pin-server",
        metavar="CPUS",
        help="run the server alone on these CPUs (e.g. 0 or 0-1) and PostgreSQL, Redis and the load "
        "generator on the others, for the server's own figures; targets are then not judged "
        "(bench/pinning.py; needs root)",
    )
    args = p.parse_args(argv)
    args.scenarios = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = set(args.scenarios) - set(ALL_SCENARIOS)
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    if (
        "lookup-half" in args.scenarios
        and "lookup" not in args.scenarios[: args.scenarios.index("lookup-half")]
    ):
        p.error("lookup-half runs at half the rate that lookup measured: put lookup before it")
    if args.rate is not None and args.rate <= 0:
        p.error("--rate takes a positive number of requests a second")
    if args.rate is not None and "lookup-half" in args.scenarios:
        p.error("lookup-half runs at half of what lookup reached: leave out --rate")
    if not 1 <= args.receipt_batch <= 500:
        p.error("--receipt-batch must be 1..500")
    if any("=" not in item for item in args.server_env):
        p.error("--server-env takes NAME=VALUE")
    if args.pin_server is not None:
        if not args.start_server:
            p.error("--pin-server needs --start-server (the server's processes must be known)")
        try:
            args.pin_server = pinning.parse_cpus(args.pin_server)
        except ValueError:
            p.error("--pin-server takes CPU numbers: 0, 0,1 or 0-1")
    if args.concurrency < 1 or args.processes < 1 or args.duration <= 0 or args.warmup < 0:
        p.error("--concurrency and --processes must be >= 1, --duration > 0, --warmup >= 0")
    return args


def require_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f"refusing to load-test {url!r}: only loopback addresses (127.0.0.1) are allowed")


def default_admin_key() -> str | None:
    path = Path("data/admin-key")
    return path.read_text().strip() if path.exists() else None


def build_spec(name: str, args: argparse.Namespace, fixture: Fixture, run_tag: str) -> ScenarioSpec:
    if name == "baseline":
        return ScenarioSpec("baseline")
    if name in ("lookup", "lookup-half"):
        return ScenarioSpec(
            name, fixture.token, {"wa_ids": fixture.lookup_wa_ids, "business_number_id": BUSINESS_NUMBER_ID}
        )
    if name == "mix":
        return ScenarioSpec(
            name,
            fixture.token,
            {
                "wa_ids": fixture.lookup_wa_ids,
                "conversation_ids": fixture.conversation_ids,
                "run_tag": run_tag,
            },
        )
    if name == "inbound":
        return ScenarioSpec(
            "inbound", fixture.token, {"customers": args.inbound_customers, "run_tag": run_tag}
        )
    share = [n for n in STATUS_SCENARIOS if n in args.scenarios].index(name)
    wamids = fixture.outbound_wamids[share * args.receipt_messages : (share + 1) * args.receipt_messages]
    return ScenarioSpec(name, fixture.token, {"wamids": wamids, "batch": args.receipt_batch})


async def prepare(
    url: str, admin_key: str, args: argparse.Namespace, run_tag: str, analyze_dsn: str | None
) -> Fixture:
    """Tenant, key and seed data; with analyze_dsn, ANALYZE after each seeding step (see server.analyze)."""
    tenant_id, token = await fixtures.create_tenant(url, admin_key, run_tag)
    fixture = Fixture(tenant_id=tenant_id, token=token)
    status_scenarios = [n for n in STATUS_SCENARIOS if n in args.scenarios]
    if {*LOOKUP_SCENARIOS, *STATUS_SCENARIOS} & set(args.scenarios):
        print(f"seeding {args.seed_conversations} conversations ...", flush=True)
        await fixtures.seed_conversations(url, fixture, args.seed_conversations, run_tag)
        if analyze_dsn:
            await server.analyze(analyze_dsn)
    if "inbound" in args.scenarios:
        print(f"seeding {args.inbound_customers} inbound customers ...", flush=True)
        await fixtures.seed_inbound_customers(url, fixture, args.inbound_customers, run_tag)
        if analyze_dsn:
            await server.analyze(analyze_dsn)
    if status_scenarios:
        count = args.receipt_messages * len(status_scenarios)
        print(f"seeding {count} outbound messages ...", flush=True)
        await fixtures.seed_outbound(url, fixture, count, run_tag)
        if analyze_dsn:
            await server.analyze(analyze_dsn)
    return fixture


def main(argv: list[str] | None = None) -> int:
    # A kill ends the run through its `finally` (server stopped, CPUs given back, database dropped).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return run(parse_args(argv), argv)
    except fixtures.SetupError as exc:
        print(f"setup failed: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, argv: list[str] | None) -> int:
    started = dt.datetime.now(dt.UTC)
    run_tag = f"bench{started:%Y%m%d%H%M%S}{secrets.token_hex(2)}"
    managed: server.ManagedServer | None = None
    pinned = pinning.Pinning(args.pin_server) if args.pin_server is not None else None
    database: str | None = None
    server_info: dict[str, Any] = {"managed": False}
    try:
        if args.start_server:
            database = f"bench_{run_tag}"
            asyncio.run(server.create_database(args.pg_admin_dsn, database))
            dsn = server.database_dsn(args.pg_admin_dsn, database)
            extra = dict(item.split("=", 1) for item in args.server_env)
            redis_url = None if args.redis_url.lower() == "none" else args.redis_url
            log_path = Path(tempfile.gettempdir()) / f"state-manager-{run_tag}.log"
            managed = server.ManagedServer(
                port=args.port or server.free_port(),
                workers=args.workers,
                database_url=server.sqlalchemy_url(dsn),
                redis_url=redis_url,
                extra_env=extra,
                log_path=log_path,
            )
            print(f"database {database}: migrating ({managed.launcher}) ...", flush=True)
            managed.migrate()
            admin_key = managed.create_admin_key(dsn)
            print(
                f"starting the server on {managed.url} with {args.workers} workers (log: {log_path})",
                flush=True,
            )
            managed.start()
            if pinned is not None:
                assert managed.process is not None
                pinned.apply(managed.process.pid)
                print(
                    f"server pinned to CPUs {sorted(pinned.server_cpus)}, "
                    f"PostgreSQL, Redis and the load to {sorted(pinned.other_cpus)}",
                    flush=True,
                )
            url = managed.url
            server_info = {
                "managed": True,
                "launcher": managed.launcher,
                "workers": args.workers,
                "database": "postgresql",
                "cache": "redis" if redis_url else "memory",
                "extra_env": extra,
                "log": str(log_path),
                "pinned": pinned.describe() if pinned is not None else None,
            }
        else:
            url = args.url.rstrip("/")
            require_loopback(url)
            given: str | None = args.admin_key or default_admin_key()
            if not given:
                raise SystemExit("no admin key: pass --admin-key or set BENCH_ADMIN_KEY")
            admin_key = given
        require_loopback(url)
        host, port = split_url(url)

        analyze_dsn = None
        if database is not None and not args.no_analyze:
            analyze_dsn = server.database_dsn(args.pg_admin_dsn, database)
            server_info["analyzed_after_seeding"] = True
        fixture = asyncio.run(prepare(url, admin_key, args, run_tag, analyze_dsn))
        summaries: list[dict[str, Any]] = []
        baseline_rps: float | None = None
        lookup_rps: float | None = None
        cpu = sysstat.cpu_window(
            port, managed.process.pid if managed and managed.process else None, args.pg_admin_dsn
        )
        for name in args.scenarios:
            idle_busy = sysstat.wait_for_quiet(args.settle, args.wait_quiet, QUIET_THRESHOLD)
            if idle_busy > QUIET_THRESHOLD:
                print(
                    f"  warning: before {name} the machine was {idle_busy:.0f}% busy (of one core) with no "
                    "load from this benchmark; something else is running and the figures will be low",
                    flush=True,
                )
            print(
                f"{name}: {args.warmup:g}s warm-up + {args.duration:g}s measured, "
                f"{args.concurrency} connections from {args.processes} load-generator process(es) ...",
                flush=True,
            )
            rate = lookup_rps / 2 if name == "lookup-half" and lookup_rps else args.rate
            cache_before = asyncio.run(fixtures.cache_figures(url, admin_key)) if name == "mix" else None
            result = run_load(
                build_spec(name, args, fixture, run_tag),
                host,
                port,
                concurrency=args.concurrency,
                processes=args.processes,
                warmup=args.warmup,
                duration=args.duration,
                balance=not args.no_balance,
                rate=rate,
                on_window=cpu,
            )
            summary = report.summarize(result, baseline_rps)
            if rate is not None:
                summary["paced_at_per_s"] = round(rate, 1)
            if args.rate is not None:
                summary["target"] = None  # a paced rate says nothing of what the server can reach
            if pinned is not None:
                summary["target"] = None  # targets are judged with the machine shared, unpinned
                summary["server_cpus"] = len(pinned.server_cpus)
            if cache_before is not None:
                cache_after = asyncio.run(fixtures.cache_figures(url, admin_key))
                summary["cache_hit_ratio"] = report.hit_ratios(cache_before, cache_after)
            summary["machine_busy_before_percent"] = idle_busy
            if name == "baseline":
                baseline_rps = summary["requests_per_s"] or None
            if name == "lookup":
                lookup_rps = summary["requests_per_s"] or None
            summaries.append(summary)
            lat = summary["latency_ms"]
            print(
                f"  {summary['requests_per_s']:,.1f} req/s, {summary['items_per_s']:,.1f} items/s, "
                f"p50/p95/p99 {lat['p50']}/{lat['p95']}/{lat['p99']} ms, errors {summary['errors']}",
                flush=True,
            )
            if "cache_hit_ratio" in summary:
                shown = ", ".join(f"{k} {v['hit_ratio']:.1%}" for k, v in summary["cache_hit_ratio"].items())
                print(f"  cache hit ratio: {shown}", flush=True)
            for note in report.notes(summary):
                print(f"  {note}", flush=True)
            for status, bodies in summary["error_samples"].items():
                print(f"  HTTP {status}: {bodies[0][:500]}", flush=True)
            if managed is not None and managed.process is not None and managed.process.poll() is not None:
                raise RuntimeError(f"the server died during {name}; its log:\n{managed.tail_log()}")

        print()
        print(report.table(summaries))
        document = {
            "started_at": started.isoformat(),
            "run_tag": run_tag,
            "command": " ".join([Path(sys.executable).name, "-m", "bench.run", *(argv or sys.argv[1:])]),
            "url": url,
            "machine": report.machine_info(),
            "git_commit": report.git_commit(server.REPO_ROOT),
            "server": server_info,
            "settings": {
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "concurrency": args.concurrency,
                "processes": args.processes,
                "balance_connections": not args.no_balance,
                "seed_conversations": args.seed_conversations,
                "inbound_customers": args.inbound_customers,
                "receipt_messages": args.receipt_messages,
                "receipt_batch": args.receipt_batch,
            },
            "seeding": fixture.timings,
            "baseline_requests_per_s": baseline_rps,
            "results": summaries,
        }
        out = args.results_dir / f"{started:%Y%m%dT%H%M%SZ}.json"
        report.write_json(out, document)
        print(f"\nresults: {out}")
        return 1 if any(s["errors"] for s in summaries) else 0
    finally:
        if pinned is not None:
            pinned.restore()  # first: it never raises, and the services must not stay pinned
        if managed is not None:
            managed.stop()
        if database is not None and not args.keep_db:
            asyncio.run(server.drop_database(args.pg_admin_dsn, database))


if __name__ == "__main__":
    sys.exit(main())
