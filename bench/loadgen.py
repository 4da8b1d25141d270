"""Closed-loop load from several processes, each with its own event loop and keep-alive connections.

Every process opens its connections first and reports ready; the parent then hands out one wall-clock
start time. Each connection sends a request, waits for the response, and sends the next, until the
window ends. Requests completed during the warm-up are not counted; afterwards every response that
completes inside the measured window is counted, and its latency (write of the request to the last
byte of the response) recorded.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import queue
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.balance import connection_spread, excess, server_view
from bench.httpclient import Connection, encode_request
from bench.scenarios import ScenarioSpec, make_source

ERROR_SAMPLES_PER_STATUS = 3


@dataclass
class WorkerResult:
    latencies_ms: bytes  # array('d')
    statuses: dict[int, int]
    transport_errors: dict[str, int]
    ok_requests: int
    ok_items: int
    error_samples: dict[int, list[str]]
    source: dict[str, Any]
    error: str | None = None


@dataclass
class Window:
    start_wall: float
    warmup: float
    duration: float


@dataclass
class LoadResult:
    scenario: str
    duration_s: float
    requests: int
    ok_requests: int
    ok_items: int
    errors: int
    statuses: dict[int, int]
    transport_errors: dict[str, int]
    error_samples: dict[int, list[str]]
    latencies_ms: list[float]
    cpu_percent: dict[str, Any] = field(default_factory=dict)
    server_connections: dict[str, int] = field(default_factory=dict)
    sources: list[dict[str, Any]] = field(default_factory=list)


MAX_BALANCE_ROUNDS = 30
STRAGGLER_GRACE_SECONDS = 15.0


async def _dial(conn: Connection, probe: bytes) -> None:
    """Connect and make one round trip, so the next connect finds the workers idle in accept()."""
    await conn.connect()
    await conn.send(probe)


async def open_connections(conns: list[Connection], port: int, probe: bytes, balance: bool) -> dict[str, Any]:
    """Open the connections one by one and, when it can, even them out over the server's workers."""
    for conn in conns:
        await _dial(conn, probe)
    if not balance:
        return {"balanced": False, "why": "--no-balance"}
    for round_no in range(MAX_BALANCE_ROUNDS):
        ports = [p for p in (c.local_port for c in conns) if p is not None]
        view = server_view(port, ports)
        if view is None:
            return {"balanced": False, "why": "cannot see the server's processes in /proc"}
        workers, mapping = view
        redial = set(excess(workers, mapping))
        if not redial:
            return {"balanced": True, "workers": len(workers), "redial_rounds": round_no}
        for conn in conns:
            if conn.local_port in redial:
                conn.close()
                await _dial(conn, probe)
    return {"balanced": False, "why": f"still uneven after {MAX_BALANCE_ROUNDS} rounds"}


async def _run(
    spec: ScenarioSpec,
    host: str,
    port: int,
    connections: int,
    worker: int,
    workers: int,
    balance: bool,
    rate: float | None,
    ready: Any,
    go: Any,
) -> WorkerResult:
    host_header = f"{host}:{port}"
    source = make_source(spec, host_header, worker, workers)
    conns = [Connection(host, port) for _ in range(connections)]
    spread = await open_connections(conns, port, encode_request("GET", "/health/live", host_header), balance)
    ready.put(worker)
    loop = asyncio.get_running_loop()
    window: Window = await loop.run_in_executor(None, go.get)

    clock = time.perf_counter
    offset = time.time() - clock()
    measure_from = window.start_wall + window.warmup - offset
    until = measure_from + window.duration
    await asyncio.sleep(max(0.0, window.start_wall - offset - clock()))

    latencies = array("d")
    statuses: Counter[int] = Counter()
    transport: Counter[str] = Counter()
    samples: dict[int, list[str]] = {}
    ok_requests = 0
    ok_items = 0

    # With a rate, each connection sends on a fixed schedule and latency counts from the scheduled time,
    # so a slow answer also delays (and is charged for) the requests queued behind it.
    interval = len(conns) / rate if rate else 0.0
    start = window.start_wall - offset

    async def drive(conn: Connection, index: int) -> None:
        nonlocal ok_requests, ok_items
        scheduled = start + interval * index / len(conns)
        while True:
            t0 = clock()
            if interval:
                if scheduled > t0:
                    await asyncio.sleep(scheduled - t0)
                t0, scheduled = scheduled, scheduled + interval
            if t0 >= until:
                return
            raw, items = source.next()
            try:
                status, body = await conn.send(raw)
            except (ConnectionError, OSError) as exc:
                conn.close()
                if measure_from <= clock() <= until:
                    transport[type(exc).__name__] += 1
                await asyncio.sleep(0.005)
                continue
            t1 = clock()
            if t1 < measure_from or t1 > until:
                continue
            latencies.append((t1 - t0) * 1000.0)
            statuses[status] += 1
            if 200 <= status < 300:
                ok_requests += 1
                ok_items += items
                source.inspect(body)
            else:
                kept = samples.setdefault(status, [])
                if len(kept) < ERROR_SAMPLES_PER_STATUS:
                    kept.append(body[:2000].decode("utf-8", "replace"))

    tasks = [asyncio.create_task(drive(c, i)) for i, c in enumerate(conns)]
    # A request still unanswered this long after the window closed is abandoned (and reported).
    _, stuck = await asyncio.wait(tasks, timeout=max(0.0, until - clock()) + STRAGGLER_GRACE_SECONDS)
    for task in stuck:
        task.cancel()
    if stuck:
        transport["unanswered at the end"] += len(stuck)
        await asyncio.gather(*stuck, return_exceptions=True)
    for c in conns:
        c.close()
    return WorkerResult(
        latencies_ms=latencies.tobytes(),
        statuses=dict(statuses),
        transport_errors=dict(transport),
        ok_requests=ok_requests,
        ok_items=ok_items,
        error_samples=samples,
        source={**source.summary(), "connections": spread},
    )


def _worker_main(
    spec: ScenarioSpec,
    host: str,
    port: int,
    connections: int,
    worker: int,
    workers: int,
    balance: bool,
    rate: float | None,
    ready: Any,
    go: Any,
    results: Any,
) -> None:
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        runner = asyncio.run
    try:
        result = runner(_run(spec, host, port, connections, worker, workers, balance, rate, ready, go))
    except Exception as exc:
        ready.put(worker)  # never leave the parent waiting
        result = WorkerResult(b"", {}, {}, 0, 0, {}, {}, error=f"{type(exc).__name__}: {exc}")
    results.put((worker, result))


def split_evenly(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def run_load(
    spec: ScenarioSpec,
    host: str,
    port: int,
    *,
    concurrency: int,
    processes: int,
    warmup: float,
    duration: float,
    balance: bool = True,
    rate: float | None = None,
    on_window: Any = None,
) -> LoadResult:
    """Run one scenario to completion.

    With `rate` (requests per second, all connections together) requests go out on a fixed schedule
    instead of as fast as answers come back.

    on_window() is called as the measured window opens and returns a callable that is called just before
    it closes (while the load-generator processes are still alive) and returns CPU figures.
    """
    processes = max(1, min(processes, concurrency))

    def share_of(total: float | None, connections: int) -> float | None:
        return None if total is None else total * connections / concurrency

    ctx = mp.get_context("spawn")
    ready = ctx.Queue()
    go = ctx.Queue()
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(
                spec,
                host,
                port,
                n,
                i,
                processes,
                balance,
                share_of(rate, n),
                ready,
                go,
                results,
            ),
            name=f"bench-loadgen-{i}",
            daemon=True,
        )
        for i, n in enumerate(split_evenly(concurrency, processes))
    ]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready.get(timeout=60)
        window = Window(start_wall=time.time() + 0.2, warmup=warmup, duration=duration)
        for _ in procs:
            go.put(window)
        time.sleep(max(0.0, window.start_wall + warmup - time.time()))
        finish = on_window() if on_window is not None else None
        spread = connection_spread(port)  # which server process holds how many connections
        time.sleep(max(0.0, window.start_wall + warmup + duration - 0.1 - time.time()))
        cpu: dict[str, Any] = finish() if finish is not None else {}
        collected: dict[int, WorkerResult] = {}
        deadline = time.time() + warmup + duration + 60
        while len(collected) < len(procs):
            try:
                worker, result = results.get(timeout=max(0.1, deadline - time.time()))
            except queue.Empty as exc:
                raise RuntimeError(f"load generator processes did not finish: {spec.name}") from exc
            collected[worker] = result
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
    failures = [r.error for r in collected.values() if r.error]
    if failures:
        raise RuntimeError(f"{spec.name}: load generator failed: {failures[0]}")
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    transport: Counter[str] = Counter()
    samples: dict[int, list[str]] = {}
    for r in collected.values():
        arr = array("d")
        arr.frombytes(r.latencies_ms)
        latencies.extend(arr)
        statuses.update(r.statuses)
        transport.update(r.transport_errors)
        for status, bodies in r.error_samples.items():
            kept = samples.setdefault(status, [])
            kept.extend(bodies[: ERROR_SAMPLES_PER_STATUS - len(kept)])
    requests = sum(statuses.values())
    ok = sum(r.ok_requests for r in collected.values())
    return LoadResult(
        scenario=spec.name,
        duration_s=duration,
        requests=requests,
        ok_requests=ok,
        ok_items=sum(r.ok_items for r in collected.values()),
        errors=requests - ok + sum(transport.values()),
        statuses=dict(sorted(statuses.items())),
        transport_errors=dict(transport),
        error_samples=samples,
        latencies_ms=latencies,
        cpu_percent=cpu,
        server_connections=spread,
        sources=[collected[i].source for i in sorted(collected)],
    )
