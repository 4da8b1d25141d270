"""The pieces behind the fixtures: real servers as subprocesses, a throwaway PostgreSQL database, the CLI.

Nothing here is mocked: each backend is a `state-manager serve` process talking to a real database.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
from sqlalchemy import insert

from state_manager.db import Database
from state_manager.db.types import utcnow
from state_manager.queues.topology import queue_variables
from state_manager.settings import Settings
from state_manager.tenants.models import organizations, tenants

T = TypeVar("T")

CLI = (sys.executable, "-m", "state_manager")
PG_ADMIN_DSN = os.environ.get("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
START_TIMEOUT_SECONDS = 60.0
# Longer than SQLite's busy timeout (30 s): a task cancelled inside an SQLite write transaction can leave
# the write lock taken until then, and a server stopping then waits for it (seen twice in about ten full
# runs before the event relay learnt to finish its batch instead of being cancelled; the queue outbox relay
# is still cancelled). Still a graceful stop if it ends within this.
#
# Raised to 90 s for a stall not yet explained: with about a thousand tenants in the database and the
# machine loaded, a PostgreSQL server stopped seconds after it started sometimes spends exactly 60 s in
# its application shutdown (asyncpg's connect timeout is 60 s), then stops cleanly. Seen in the full suite
# (the two-instance tests, a 2-worker server) and reproduced by hand about one time in two; not with a
# few tenants. Open: see the closing note of the session that raised this.
STOP_TIMEOUT_SECONDS = 90.0

# Meta's media host (as in the default) and the made-up hosts the domain tests write media URLs on.
TEST_MEDIA_HOSTS = "lookaside.fbsbx.com,files.example.com,example.com,media.example"

# The service's own settings never leak from the developer's environment into a test server.
_SETTINGS_VARIABLES = {name.upper() for name in Settings.model_fields} | {"PROMETHEUS_MULTIPROC_DIR"}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any service setting, plus the given ones."""
    env = {k: v for k, v in os.environ.items() if k not in _SETTINGS_VARIABLES}
    env.update(settings)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_cli(
    *args: str, env: Mapping[str, str], cwd: Path, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """`state-manager <args>` as a subprocess; stdout and stderr captured as text."""
    return subprocess.run(
        [*CLI, *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cli_json(*args: str, env: Mapping[str, str], cwd: Path) -> Any:
    """Run a command with --json and return its parsed stdout; fails with the output otherwise."""
    done = run_cli(*args, "--json", env=env, cwd=cwd)
    if done.returncode != 0:
        raise AssertionError(f"state-manager {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return json.loads(done.stdout)


def create_tenant(tenant: str, *, env: Mapping[str, str], cwd: Path, name: str | None = None) -> Any:
    """`state-manager tenants create`, in an organization of the same ID made for it."""
    return cli_json(
        "tenants", "create", tenant, "--organization", tenant, "--name", name or tenant,
        "--create-organization", env=env, cwd=cwd,
    )  # fmt: skip


# --- PostgreSQL --------------------------------------------------------------------------------------


def _in_thread(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on its own loop in a worker thread, away from pytest-asyncio's loop."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def _admin_execute(*statements: str) -> None:
    await _execute_on(PG_ADMIN_DSN, *statements)


def as_postgres_admin(*statements: str) -> None:
    """Statements run as the tests' PostgreSQL superuser (on its `test` database), on a loop of their own."""
    _in_thread(_admin_execute(*statements))


@contextlib.contextmanager
def hold_row_lock(database_url: str, table: str, row_id: str) -> Iterator[None]:
    """Keeps one row locked (FOR UPDATE, as the table owner) on a connection of its own for the block."""
    import threading

    locked, release = threading.Event(), threading.Event()
    failure: list[BaseException] = []
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)

    async def hold() -> None:
        import asyncpg

        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            async with conn.transaction():
                await conn.fetch(f"SELECT 1 FROM {table} WHERE id = $1 FOR UPDATE", uuid.UUID(row_id))
                locked.set()
                await asyncio.get_running_loop().run_in_executor(None, release.wait, 60)
        finally:
            await conn.close()

    def run() -> None:
        try:
            asyncio.run(hold())
        except BaseException as exc:
            failure.append(exc)
            locked.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    locked.wait(30)
    if failure:
        raise failure[0]
    try:
        yield
    finally:
        release.set()
        thread.join(30)


def postgres_problem() -> str | None:
    """None when the server answers as the admin DSN; otherwise why not."""
    try:
        _in_thread(_admin_execute("SELECT 1"))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".strip()
    return None


def create_database(name: str) -> str:
    """A new empty database; returns its SQLAlchemy URL."""
    _in_thread(_admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'))
    parts = urlsplit(PG_ADMIN_DSN)
    return urlunsplit(("postgresql+asyncpg", parts.netloc, f"/{name}", parts.query, ""))


def drop_database(name: str) -> None:
    _in_thread(_admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def redis_problem(url: str = REDIS_URL) -> str | None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    return None


def rabbitmq_problem(url: str = RABBITMQ_URL) -> str | None:
    async def connect() -> None:
        import aio_pika

        connection = await aio_pika.connect(url, timeout=5)
        await connection.close()

    try:
        _in_thread(connect())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".strip()
    return None


# The queue settings and their defaults: a test server gets its own names, so that no two servers (nor the
# machine's other users of RabbitMQ) share a queue.
QUEUE_SETTINGS = queue_variables()


def queue_env(prefix: str, url: str = RABBITMQ_URL) -> dict[str, str]:
    """Settings for a server consuming and publishing its own `prefix`ed queues, retrying fast."""
    return {
        "RABBITMQ_URL": url,
        "RABBITMQ_MAX_RETRIES": "2",
        "RABBITMQ_RETRY_BASE_SECONDS": "0.1",
        "RABBITMQ_STANDBY_RETRY_SECONDS": "0.5",
        "QUEUE_LOCK_TIMEOUT_SECONDS": "0.3",
        "OUTBOX_SWEEP_SECONDS": "1",
        **{name: prefix + default for name, default in QUEUE_SETTINGS.items()},
    }


class Broker:
    """A RabbitMQ client for tests, on its own event loop in a thread (the tests themselves are sync)."""

    def __init__(self, env: Mapping[str, str], url: str = RABBITMQ_URL) -> None:
        import threading

        import aio_pika

        self.names = {name: env.get(name, default) for name, default in QUEUE_SETTINGS.items()}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def connect() -> tuple[Any, Any]:
            connection = await aio_pika.connect(url, timeout=10)
            return connection, await connection.channel()

        self._connection, self._channel = self._run(connect())

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=60)

    def queue(self, setting: str) -> str:
        return self.names[setting]

    def publish(self, setting: str, body: Any) -> None:
        """Publishes as the existing producers do: default exchange, persistent JSON, no headers."""
        import aio_pika

        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        message = aio_pika.Message(data, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        self._run(self._channel.default_exchange.publish(message, routing_key=self.names[setting]))

    def take(
        self, setting: str, count: int = 1, *, where: Any = None, timeout: float = 20.0
    ) -> list[dict[str, Any]]:
        """The next `count` messages of a queue that `where(body)` accepts (others are dropped)."""

        async def collect() -> list[dict[str, Any]]:
            queue = await self._channel.get_queue(self.names[setting], ensure=False)
            found: list[dict[str, Any]] = []
            deadline = time.monotonic() + timeout
            while len(found) < count and time.monotonic() < deadline:
                message = await queue.get(no_ack=True, fail=False)
                if message is None:
                    await asyncio.sleep(0.05)
                    continue
                body = json.loads(message.body)
                if where is None or where(body):
                    found.append(body)
            return found

        return self._run(collect())

    def declare_as_other_services_do(self, setting: str) -> None:
        """`assertQueue(name, {durable: true})`: fails with PRECONDITION_FAILED unless the queue was declared
        the same way (durable, no arguments)."""

        async def declare() -> None:
            channel = await self._connection.channel()
            await channel.declare_queue(self.names[setting], durable=True)
            await channel.close()

        self._run(declare())

    def depth(self, setting: str) -> int:
        async def count() -> int:
            declared = await self._channel.declare_queue(self.names[setting], passive=True)
            return int(declared.declaration_result.message_count or 0)

        return self._run(count())

    def delete_queues(self) -> None:
        async def delete() -> None:
            channel = await self._connection.channel()
            for name in self.names.values():
                await channel.queue_delete(name)
            await channel.close()

        self._run(delete())

    def close(self) -> None:
        self._run(self._connection.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


def eventually(probe: Callable[[], Any], timeout: float = 20.0) -> Any:
    """The first truthy answer of `probe`, polled; fails with the last answer."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"not reached in {timeout} s; last answer {last!r}")


# --- Servers -----------------------------------------------------------------------------------------


class ServerFailed(RuntimeError):
    pass


@dataclass
class ServerProcess:
    """`state-manager serve` on a free port, its stdout and stderr in files under `workdir`."""

    name: str
    env: dict[str, str]
    workdir: Path
    serve_args: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stderr_path(self) -> Path:
        return self.workdir / f"{self.name}.stderr.log"

    @property
    def stdout_path(self) -> Path:
        return self.workdir / f"{self.name}.stdout.log"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.stdout_path.open("wb") as stdout, self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [*CLI, "serve", "--port", str(self.port), *self.serve_args],
                env=self.env,
                cwd=self.workdir,  # no stray .env file is read
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,  # its own process group, so that workers can be stopped with it
            )

    def wait_for(
        self, path: str, status: int = 200, timeout: float = START_TIMEOUT_SECONDS
    ) -> httpx.Response:
        """Poll `path` until it answers `status`; fail early (with the log) if the process exits."""
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout
        last: str = "no answer"
        with httpx.Client(base_url=self.base_url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ServerFailed(
                        f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
                    )
                try:
                    response = client.get(path)
                except httpx.TransportError as exc:
                    last = repr(exc)
                else:
                    if response.status_code == status:
                        return response
                    last = f"{response.status_code} {response.text[:500]}"
                time.sleep(0.1)
        self.stop()
        raise ServerFailed(
            f"{self.name}: {path} did not answer {status} in {timeout} s ({last}):\n{self.log_tail()}"
        )

    def stop(self) -> bool:
        """SIGTERM, then SIGKILL to the process group if it does not end in time.

        True when it ended by itself: uvicorn re-raises the SIGTERM it handled once it has shut down, so a
        graceful end is exit status 0 or -SIGTERM.
        """
        process = self.process
        if process is None:
            return True
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(STOP_TIMEOUT_SECONDS)
                return False
        return process.returncode in (0, -signal.SIGTERM)

    def log_text(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


@dataclass
class Server:
    """A running server of one backend, with what tests need to talk to it."""

    backend: str
    process: ServerProcess
    admin_key: str
    default_tenant_id: str  # a tenant that exists from the start

    @property
    def base_url(self) -> str:
        return self.process.base_url

    @property
    def env(self) -> dict[str, str]:
        """The server's environment: CLI commands run with it act on the same database."""
        return self.process.env

    @property
    def data_dir(self) -> Path:
        return Path(self.env["DATA_DIR"])

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env=self.env, cwd=self.process.workdir, timeout=timeout)

    def cli_json(self, *args: str) -> Any:
        return cli_json(*args, env=self.env, cwd=self.process.workdir)


def server_env(workdir: Path, database_url: str, **extra: str) -> dict[str, str]:
    """What every harness server runs with. Keys are checked on every request (no cache), so that a key
    revoked from the CLI is refused at once. The scheduled jobs are off unless a test turns them on
    (JOBS_ENABLED=true): tests that age rows run the jobs by hand, and must not race the scheduler."""
    settings = {"JOBS_ENABLED": "false", "MEDIA_URL_ALLOWED_HOSTS": TEST_MEDIA_HOSTS, **extra}
    return clean_env(
        DATABASE_URL=database_url,
        DATA_DIR=str(workdir / "data"),
        LOG_FORMAT="json",
        LOG_LEVEL="INFO",
        AUTH_MODE="required",
        API_KEY_CACHE_SECONDS="0",
        **settings,
    )


@dataclass
class Tenant:
    id: str
    organization_id: str
    key: str
    key_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass
class Api:
    """A server of one backend and an HTTP client for it. `key=` picks the API key of a request."""

    server: Server
    client: httpx.Client

    @property
    def backend(self) -> str:
        return self.server.backend

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def admin_key(self) -> str:
        return self.server.admin_key

    def request(self, method: str, path: str, *, key: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", None) or {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return self.client.request(method, path, headers=headers, **kwargs)

    def get(self, path: str, *, key: str | None = None, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, key=key, **kwargs)

    def post(self, path: str, *, key: str | None = None, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, key=key, **kwargs)

    def patch(self, path: str, *, key: str | None = None, **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", path, key=key, **kwargs)

    def delete(self, path: str, *, key: str | None = None, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, key=key, **kwargs)

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request with the admin key that must succeed (2xx)."""
        response = self.request(method, path, key=self.admin_key, **kwargs)
        assert response.is_success, f"{method} {path}: {response.status_code} {response.text}"
        return response

    def new_tenant(self, name: str = "Test tenant") -> Tenant:
        """A fresh organization and tenant, with a tenant key, made through the admin API."""
        suffix = uuid.uuid4().hex[:12]
        organization_id, tenant_id = f"org-{suffix}", f"t-{suffix}"
        self.admin("POST", "/v1/admin/organizations", json={"id": organization_id, "name": f"Org {suffix}"})
        self.admin(
            "POST",
            "/v1/admin/tenants",
            json={"id": tenant_id, "organization_id": organization_id, "name": name},
        )
        created = self.admin(
            "POST", "/v1/admin/keys", json={"kind": "tenant", "name": "test", "tenant_id": tenant_id}
        ).json()
        return Tenant(id=tenant_id, organization_id=organization_id, key=created["key"], key_id=created["id"])


class TcpProxy:
    """A TCP relay to a server, for cutting a client's connections as a network failure would."""

    def __init__(self, target_host: str, target_port: int) -> None:
        import threading

        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.refusing = False
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drops every open connection (new ones are accepted unless `refusing`)."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()


class RedisServer:
    """A `redis-server` of the test's own on a free port, to stop and start in the middle of a test."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with (self.workdir / f"redis-{self.port}.log").open("ab") as log:
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.workdir),
                 "--enable-debug-command", "local"],  # DEBUG SLEEP plays a Redis too slow to answer
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        eventually(lambda: redis_problem(self.url) is None, timeout=10)

    def stop(self) -> None:
        """As a crash would: SIGKILL, so nothing is flushed and every connection drops."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


class PostgresCluster:
    """A PostgreSQL cluster of the test's own (initdb, pg_ctl) on a free port, to stop and start mid-test.

    The shared server on 5432 is never touched. Run as root, the cluster runs as the `postgres` user
    (PostgreSQL refuses root), in a directory of its own under the system's temporary directory (pytest's
    are readable by their owner only). `init()` says why it cannot run here, or None.
    """

    def __init__(self) -> None:
        import tempfile

        self.bin_dir = self.find_bin_dir()
        self.workdir = Path(tempfile.mkdtemp(prefix="sm-pg-"))
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "postgres.log"
        self.port = free_port()

    @staticmethod
    def find_bin_dir() -> Path | None:
        root = Path("/usr/lib/postgresql")
        versions = (
            sorted(root.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else 0)
            if root.is_dir()
            else []
        )
        for version in reversed(versions):
            if (version / "bin" / "initdb").exists():
                return version / "bin"
        found = shutil.which("pg_ctl")
        return Path(found).resolve().parent if found else None

    @property
    def bin(self) -> Path:
        assert self.bin_dir is not None, "no PostgreSQL server programs"
        return self.bin_dir

    def _as_postgres(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str = "state_manager") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> str | None:
        """initdb and a first start, with the database `state_manager`; None, or why it failed."""
        if self.bin_dir is None:
            return "PostgreSQL's server programs (initdb, pg_ctl) are not installed"
        if os.geteuid() == 0:
            import pwd

            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                return "running as root and there is no `postgres` user to run a cluster as"
            os.chown(self.workdir, entry.pw_uid, entry.pw_gid)
        self.workdir.chmod(0o755)
        done = self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data_dir), "-A", "trust", "-U", "postgres",
            "--no-sync", "-E", "UTF8",
        )  # fmt: skip
        if done.returncode != 0:
            return f"initdb failed: {done.stderr.strip()[-500:]}"
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.workdir}'\nfsync = off\nmax_connections = 100\n"
            )
        problem = self.start()
        if problem is not None:
            return problem
        _in_thread(_execute_on(self.admin_dsn, "CREATE DATABASE state_manager"))
        return None

    def start(self) -> str | None:
        done = self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path), "-w", "-t",
            "60", "start",
        )  # fmt: skip
        if done.returncode != 0:
            return f"pg_ctl start failed: {done.stdout.strip()[-300:]} {done.stderr.strip()[-300:]}"
        return None

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m fast` (sessions ended, a clean shutdown) or `immediate` (as a crash: no
        checkpoint; recovery replays the WAL at the next start)."""
        if not (self.data_dir / "postmaster.pid").exists():
            return
        done = self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop")
        assert done.returncode == 0, f"pg_ctl stop failed: {done.stdout} {done.stderr}"

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


async def add_tenants(db: Database, organization_id: str, *tenant_ids: str) -> None:
    """An organization and its tenants, written straight to the tables: for tests without a server."""
    now = utcnow()
    async with db.transaction(None, write=True) as conn:
        await conn.execute(
            insert(organizations).values(id=organization_id, name=organization_id, created_at=now)
        )
        await conn.execute(
            insert(tenants),
            [
                {"id": tenant_id, "organization_id": organization_id, "name": tenant_id, "settings": {}}
                | {"created_at": now, "updated_at": now}
                for tenant_id in tenant_ids
            ],
        )


async def _execute_on(dsn: str, *statements: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()
