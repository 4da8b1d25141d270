"""`GET /v1/analytics/system`, the system health report, against real servers on each backend; and, on a
server of its own with two workers, a Redis that dies and a RabbitMQ that is not there."""

from __future__ import annotations

import csv
import io
import math
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from domain.helpers import assert_problem, inbound, ok, wa_id
from harness import Api, RedisServer, ServerProcess, clean_env, eventually, free_port
from state_manager.analytics.system import CSV_COLUMNS, histogram_quantile
from state_manager.cache.lookups import CACHES
from state_manager.db import metadata

PATH = "/v1/analytics/system"
INF = math.inf
# The settings naming the five queues a server consumes (README, "Configuration").
CONSUMED = ("INBOUND_QUEUE", "STATUS_QUEUE", "OUTBOUND_QUEUE", "GENESYS_STATUS_QUEUE", "CORRELATION_QUEUE")


def report(api: Api, **params: str) -> dict[str, Any]:
    body: dict[str, Any] = ok(api.get(PATH, key=api.admin_key, params=params))
    return body


def route(body: dict[str, Any], method: str, template: str) -> dict[str, Any]:
    for row in body["requests"]["routes"]:
        if row["method"] == method and row["route"] == template:
            found: dict[str, Any] = row
            return found
    return {"requests": 0, "errors": 0, "client_errors": 0}


def moved(before: dict[str, Any], after: dict[str, Any], method: str, template: str) -> tuple[int, ...]:
    old, new = route(before, method, template), route(after, method, template)
    return tuple(new[k] - old[k] for k in ("requests", "errors", "client_errors"))


def sqlite_has_dbstat() -> bool:
    try:
        sqlite3.connect(":memory:").execute("SELECT * FROM dbstat LIMIT 1").fetchall()
    except sqlite3.OperationalError:
        return False
    return True


# --- the estimate, exactly ---------------------------------------------------------------------------


def test_quantiles_interpolate_inside_the_bucket_like_prometheus() -> None:
    buckets = [(0.1, 10.0), (0.2, 20.0), (0.4, 20.0), (INF, 20.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)  # rank 10: the top of the first
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.05)  # the first bucket starts at 0
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.15)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.198)
    # A rank that falls in +Inf answers the highest finite bound.
    assert histogram_quantile(0.99, [(0.1, 1.0), (0.2, 1.0), (INF, 2.0)]) == pytest.approx(0.2)
    assert histogram_quantile(0.5, [(0.1, 0.0), (INF, 0.0)]) is None
    assert histogram_quantile(0.5, []) is None


# --- requests ----------------------------------------------------------------------------------------


def test_requests_are_counted_by_route_with_ordered_latencies(api: Api) -> None:
    tenant = api.new_tenant()
    before = report(api)
    for _ in range(3):
        assert api.get("/v1/tenant", key=tenant.key).status_code == 200
    assert api.get("/v1/no-such-route", key=tenant.key).status_code == 404
    assert api.get("/v1/admin/tenants", key=tenant.key).status_code == 403
    after = report(api)

    assert moved(before, after, "GET", "/v1/tenant") == (3, 0, 0)
    assert moved(before, after, "GET", "unmatched") == (1, 0, 1)
    assert moved(before, after, "GET", "/v1/admin/tenants") == (1, 0, 1)
    assert moved(before, after, "GET", PATH) == (1, 0, 0)  # `before` itself; `after` is not counted yet

    requests = after["requests"]
    rows = requests["routes"]
    assert requests["requests"] == sum(r["requests"] for r in rows)
    assert requests["errors"] == sum(r["errors"] for r in rows)
    assert requests["client_errors"] == sum(r["client_errors"] for r in rows)
    assert [r["requests"] for r in rows] == sorted((r["requests"] for r in rows), reverse=True)
    uptime = requests["uptime_seconds"]
    assert 0 < uptime < 24 * 3600
    assert requests["requests_per_second"] == pytest.approx(requests["requests"] / uptime, rel=0.01)
    for row in rows:
        assert row["requests"] > 0
        assert row["error_rate"] == round(row["errors"] / row["requests"], 4)
        assert row["requests_per_second"] == pytest.approx(row["requests"] / uptime, rel=0.01, abs=1e-4)
        assert row["p50_ms"] is not None, row
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= 5000, row

    assert after["instance"].rpartition(":")[2] == str(api.server.process.process.pid)  # type: ignore[union-attr]
    assert after["workers_merged"] is False


def test_csv_is_the_route_table_with_a_header(api: Api) -> None:
    for _ in range(2):
        assert api.get("/health/live").status_code == 200
    response = api.get(PATH, key=api.admin_key, params={"format": "csv"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.text)))
    assert tuple(rows[0]) == CSV_COLUMNS
    table = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    live = [r for r in table if (r["method"], r["route"]) == ("GET", "/health/live")]
    assert len(live) == 1
    assert int(live[0]["requests"]) >= 2
    assert int(live[0]["errors"]) == 0
    assert float(live[0]["p50_ms"]) <= float(live[0]["p95_ms"]) <= float(live[0]["p99_ms"])
    # The same rows as the JSON report (which counts the CSV request since).
    body = report(api)
    assert {(r["method"], r["route"]) for r in table} <= {
        (r["method"], r["route"]) for r in body["requests"]["routes"]
    }
    assert_problem(api.get(PATH, key=api.admin_key, params={"format": "xml"}), 422)


def test_only_admin_keys_see_the_report(api: Api) -> None:
    tenant = api.new_tenant()
    assert_problem(api.get(PATH, key=tenant.key), 403, "forbidden")
    assert_problem(api.get(PATH, key=tenant.key, params={"format": "csv"}), 403, "forbidden")
    service = ok(api.post("/v1/admin/keys", key=api.admin_key, json={"kind": "service", "name": "t"}), 201)
    assert_problem(api.get(PATH, key=service["key"]), 403, "forbidden")
    assert_problem(api.get(PATH), 401)


# --- database, events, cache, queues, Redis ----------------------------------------------------------


def test_database_tables_sizes_and_rows(api: Api) -> None:
    tenant = api.new_tenant()
    with httpx.Client(base_url=api.base_url, headers=tenant.headers, timeout=30) as client:
        inbound(client, wa_id(), "bn-system", status=201)
    database = report(api)["database"]
    assert database["ok"] is True
    assert database["backend"] == ("postgresql" if api.backend == "postgres" else "sqlite")
    assert database["ping_ms"] > 0
    assert database["ping_error"] is None
    assert database["database_bytes"] > 0
    tables = {t["name"]: t for t in database["tables"]}
    assert list(tables) == [t.name for t in metadata.sorted_tables]
    assert all(t["exists"] for t in tables.values()), [n for n, t in tables.items() if not t["exists"]]
    messages = tables["messages"]
    if api.backend == "postgres":
        # The service's role owns no table and sees one tenant's rows: the catalog answers regardless.
        assert database["sizes_from"] == "catalog"
        assert messages["size_bytes"] > 0
        assert all(isinstance(t["rows"], int) and t["rows"] >= 0 for t in tables.values()), tables
    else:
        assert database["sizes_from"] == ("dbstat" if sqlite_has_dbstat() else "file")
        if database["sizes_from"] == "dbstat":
            assert messages["size_bytes"] > 0
            assert sum(t["size_bytes"] for t in tables.values()) <= database["database_bytes"]
        assert messages["rows"] >= 1  # an exact count
        assert tables["tenants"]["rows"] >= 2  # the default tenant and this one


def test_events_cache_queues_and_redis_parts(api: Api) -> None:
    tenant = api.new_tenant()
    with httpx.Client(base_url=api.base_url, headers=tenant.headers, timeout=30) as client:
        inbound(client, wa_id(), "bn-system", status=201)
    # Every event gets numbered within moments: the backlog drains to nothing.
    body = eventually(lambda: (found := report(api))["events"]["unnumbered"] == 0 and found)
    events = body["events"]
    assert events["ok"] is True
    assert events["oldest_unnumbered_age_seconds"] is None
    assert events["this_instance"]["relay"]["numbered"] >= 1

    cache = body["cache"]
    assert cache["ok"] is True
    assert set(cache["caches"]) == set(CACHES)
    for figures in [cache["overall"], *cache["caches"].values()]:
        assert figures["lookups"] == sum(figures["hits"].values()) + figures["misses"]
    overall = cache["overall"]
    assert overall["lookups"] == sum(c["lookups"] for c in cache["caches"].values())
    if overall["lookups"]:
        hits = sum(overall["hits"].values())
        assert overall["hit_ratio"] == round(hits / overall["lookups"], 4)
        assert overall["tier_hit_ratio"]["local"] == round(overall["hits"]["local"] / overall["lookups"], 4)

    env = api.server.env
    if env.get("REDIS_URL"):
        assert cache["backend"] == "redis"
        redis = body["redis"]
        assert (redis["enabled"], redis["ok"]) == (True, True)
        assert redis["ping_ms"] > 0
        assert redis["used_memory_bytes"] > 0
    else:
        assert cache["backend"] == "memory"
        assert body["redis"] == {"enabled": False}

    if env.get("RABBITMQ_URL"):
        queues = body["queues"]
        assert (queues["enabled"], queues["ok"], queues["error"]) == (True, True, None)
        assert set(queues["depths"]) == {env[name] for name in CONSUMED}
        assert all(depth >= 0 for depth in queues["depths"].values())
        assert queues["outbox"]["ok"] is True
        assert queues["outbox"]["unpublished"] >= 0
    else:
        assert body["queues"] == {"enabled": False}


# --- two workers, Redis gone, no broker --------------------------------------------------------------


def test_two_workers_redis_down_and_no_broker(workdir: Path, own_redis: RedisServer) -> None:
    """Requests are every worker's; a Redis that died and a broker that never answered make their own
    parts fail, quickly, and nothing else."""
    env = clean_env(
        DATABASE_URL=f"sqlite+aiosqlite:///{workdir / 'sm.db'}",
        DATA_DIR=str(workdir / "data"),
        REDIS_URL=own_redis.url,
        RABBITMQ_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/",  # nothing listens there
        LOG_FORMAT="json",
        AUTH_MODE="required",
        API_KEY_CACHE_SECONDS="0",
        JOBS_ENABLED="false",
        CACHE_WARM_LIMIT="0",
    )
    process = ServerProcess("system-health", env, workdir, serve_args=("--workers", "2"))
    process.start()
    try:
        process.wait_for("/health/ready")
        headers = {"Authorization": f"Bearer {(workdir / 'data' / 'admin-key').read_text().strip()}"}
        for _ in range(20):
            # New connections, so that both workers get some of them.
            assert httpx.get(f"{process.base_url}/health/live").status_code == 200

        def body() -> dict[str, Any]:
            found: dict[str, Any] = ok(httpx.get(f"{process.base_url}{PATH}", headers=headers, timeout=10))
            return found

        first = eventually(lambda: route(found := body(), "GET", "/health/live")["requests"] == 20 and found)
        assert first["workers_merged"] is True
        assert first["redis"]["ok"] is True
        queues = first["queues"]
        assert (queues["enabled"], queues["ok"], queues["depths"]) == (True, False, None)
        assert queues["error"]
        assert queues["outbox"] == {"ok": True, "unpublished": 0, "oldest_unpublished_age_seconds": None}

        own_redis.stop()
        response = httpx.get(f"{process.base_url}{PATH}", headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        assert response.elapsed.total_seconds() < 3
        second = response.json()
        assert second["redis"]["ok"] is False
        assert second["redis"]["error"]
        assert set(second["redis"]) == {"ok", "error"}
        assert second["database"]["ok"] is True
        assert second["events"]["ok"] is True
        assert second["requests"]["ok"] is True
        assert second["cache"]["ok"] is True
    finally:
        assert process.stop(), process.log_tail()
