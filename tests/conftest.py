"""Fixtures: a real server per backend, started once per session, and a fresh tenant per test.

Backends
  sqlite    the embedded default: a SQLite file, the in-process cache, the first-run admin key file.
  postgres  a database `sm_test_<pid>` created on the local PostgreSQL for this session, migrated with
            `state-manager migrate`, with Redis as the cache; the admin key is made with `state-manager keys
            create` (PostgreSQL has no first-run key).

When PostgreSQL (or Redis) cannot be reached, the tests that need it are skipped with the reason, and the
session ends with a line saying so; with CI=true they fail instead. TEST_POSTGRES_DSN and TEST_REDIS_URL
point the harness elsewhere.

Using it
    def test_something(api: Api) -> None:         # runs once per backend
        tenant = api.new_tenant()                  # its own organization, tenant and tenant key
        response = api.get("/v1/tenant", key=tenant.key)
        ...
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import (
    PG_ADMIN_DSN,
    RABBITMQ_URL,
    REDIS_URL,
    Api,
    Broker,
    PostgresCluster,
    RedisServer,
    Server,
    ServerProcess,
    clean_env,
    cli_json,
    create_database,
    create_tenant,
    drop_database,
    in_ci,
    postgres_problem,
    queue_env,
    rabbitmq_problem,
    redis_problem,
    run_cli,
    server_env,
)

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]

# What could not be tested in this session and why, for the summary at the end.
_UNAVAILABLE: dict[str, str] = {}
_NOTES: list[str] = []


def unavailable(what: str, reason: str) -> None:
    """Skip (or, with CI=true, fail) every test that needs `what`."""
    if in_ci():
        pytest.fail(f"{reason} — CI=true, so this is a failure, not a skip", pytrace=False)
    _UNAVAILABLE[what] = reason
    pytest.skip(reason)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not _UNAVAILABLE and not _NOTES:
        return
    terminalreporter.write_sep("=", "backends not fully tested", yellow=True, bold=True)
    skipped = terminalreporter.stats.get("skipped", [])
    for what, reason in _UNAVAILABLE.items():
        count = sum(1 for report in skipped if reason in str(report.longrepr))
        terminalreporter.write_line(
            f"{what}: {count} test(s) SKIPPED — {reason}. "
            "Start it (see README) or set CI=true to fail instead.",
            yellow=True,
        )
    for note in _NOTES:
        terminalreporter.write_line(note, yellow=True)


# --- PostgreSQL and Redis ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_available() -> None:
    problem = postgres_problem()
    if problem is not None:
        unavailable("PostgreSQL", f"PostgreSQL unreachable at {PG_ADMIN_DSN} ({problem})")


@pytest.fixture(scope="session")
def postgres_url(postgres_available: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """This session's own database, migrated with `state-manager migrate`."""
    name = f"sm_test_{os.getpid()}"
    url = create_database(name)
    try:
        done = run_cli("migrate", env=clean_env(DATABASE_URL=url), cwd=tmp_path_factory.mktemp("migrate"))
        assert done.returncode == 0, f"state-manager migrate failed:\n{done.stderr}"
        yield url
    finally:
        drop_database(name)


@pytest.fixture
def fresh_postgres_url(postgres_available: None) -> Iterator[str]:
    """An empty, never migrated database for one test."""
    name = f"sm_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    url = create_database(name)
    try:
        yield url
    finally:
        drop_database(name)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, never migrated database for one test, once on each backend."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'sm.db'}"
    url: str = request.getfixturevalue("fresh_postgres_url")
    return url


@pytest.fixture(scope="session")
def redis_url() -> str | None:
    """Redis for the postgres backend; without it that backend runs with the in-process cache."""
    problem = redis_problem()
    if problem is None:
        return REDIS_URL
    if in_ci():
        pytest.fail(f"Redis unreachable at {REDIS_URL} ({problem}) — CI=true, so this is a failure")
    _NOTES.append(
        f"Redis unreachable at {REDIS_URL} ({problem}): the postgres backend used the in-process cache"
    )
    return None


@pytest.fixture(scope="session")
def rabbitmq_url() -> str | None:
    """RabbitMQ for the servers' queue consumers; without it they run without (the queue tests skip)."""
    problem = rabbitmq_problem()
    if problem is None:
        return RABBITMQ_URL
    if in_ci():
        pytest.fail(f"RabbitMQ unreachable at {RABBITMQ_URL} ({problem}) — CI=true, so this is a failure")
    _UNAVAILABLE["RabbitMQ"] = f"RabbitMQ unreachable at {RABBITMQ_URL} ({problem})"
    return None


def _queues_of(backend: str, rabbitmq_url: str | None) -> Iterator[dict[str, str]]:
    """The server's queue settings (its own queue names), and the queues deleted when the session ends."""
    if rabbitmq_url is None:
        yield {}
        return
    env = queue_env(f"smtest-{os.getpid()}-{backend}.", rabbitmq_url)
    yield env
    broker = Broker(env, rabbitmq_url)
    try:
        broker.delete_queues()
    finally:
        broker.close()


# --- Servers -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_queues(rabbitmq_url: str | None) -> Iterator[dict[str, str]]:
    yield from _queues_of("sqlite", rabbitmq_url)


@pytest.fixture(scope="session")
def postgres_queues(rabbitmq_url: str | None) -> Iterator[dict[str, str]]:
    yield from _queues_of("postgres", rabbitmq_url)


@pytest.fixture(scope="session")
def sqlite_server(
    tmp_path_factory: pytest.TempPathFactory, sqlite_queues: dict[str, str]
) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("sqlite-server")
    process = ServerProcess(
        "sqlite", server_env(workdir, f"sqlite+aiosqlite:///{workdir / 'sm.db'}", **sqlite_queues), workdir
    )
    process.start()
    try:
        process.wait_for("/health/ready")
        # Written by the first run before the server reports ready.
        admin_key = (workdir / "data" / "admin-key").read_text().strip()
        yield Server("sqlite", process, admin_key=admin_key, default_tenant_id="default")
    finally:
        assert process.stop(), f"the server did not shut down cleanly:\n{process.log_tail()}"


@pytest.fixture(scope="session")
def postgres_server(
    postgres_url: str,
    redis_url: str | None,
    postgres_queues: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("postgres-server")
    env = server_env(
        workdir, postgres_url, **({"REDIS_URL": redis_url} if redis_url else {}), **postgres_queues
    )
    created = cli_json("keys", "create", "--kind", "admin", "--name", "test harness", env=env, cwd=workdir)
    create_tenant("harness", env=env, cwd=workdir, name="Harness")
    process = ServerProcess("postgres", env, workdir)
    process.start()
    try:
        process.wait_for("/health/ready")
        yield Server("postgres", process, admin_key=created["key"], default_tenant_id="harness")
    finally:
        assert process.stop(), f"the server did not shut down cleanly:\n{process.log_tail()}"


@pytest.fixture(params=BACKENDS)
def server(request: pytest.FixtureRequest) -> Server:
    """The running server of each backend in turn."""
    found: Server = request.getfixturevalue(f"{request.param}_server")
    return found


@pytest.fixture
def api(server: Server) -> Iterator[Api]:
    with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
        yield Api(server, client)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory to run CLI commands and extra servers in (no stray .env is read there)."""
    return tmp_path


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis server of the test's own, which the test may stop and start."""
    if shutil.which("redis-server") is None:
        unavailable("redis-server", "redis-server is not installed (Debian package redis-server)")
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster of the test's own, with the database `state_manager` migrated, which the test
    may stop and start (the shared server is never touched). Removed afterwards, whatever happened."""
    cluster = PostgresCluster()
    try:
        problem = cluster.init()
        if problem is not None:
            unavailable("a PostgreSQL cluster of the test's own", problem)
        done = run_cli("migrate", env=clean_env(DATABASE_URL=cluster.url()), cwd=tmp_path)
        assert done.returncode == 0, f"state-manager migrate failed:\n{done.stderr}"
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def rabbitmq(rabbitmq_url: str | None) -> str:
    """RabbitMQ's URL, for a test that cannot run without it."""
    if rabbitmq_url is None:
        unavailable("RabbitMQ", _UNAVAILABLE["RabbitMQ"])
    return rabbitmq_url or RABBITMQ_URL


@pytest.fixture
def broker(server: Server, rabbitmq: str) -> Iterator[Broker]:
    """A RabbitMQ client on the queues of the server under test."""
    client = Broker(server.env, rabbitmq)
    try:
        yield client
    finally:
        client.close()
