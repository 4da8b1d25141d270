"""The pieces behind the fixtures: real servers as subprocesses, a throwaway PostgreSQL database, the CLI.

Nothing here is mocked: each backend is a `state-manager serve` process talking to a real database.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx

from state_manager.settings import Settings

T = TypeVar("T")

CLI = (sys.executable, "-m", "state_manager")
PG_ADMIN_DSN = os.environ.get("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 15.0

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


# --- PostgreSQL --------------------------------------------------------------------------------------


def _in_thread(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on its own loop in a worker thread, away from pytest-asyncio's loop."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def _admin_execute(*statements: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


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
    revoked from the CLI is refused at once."""
    return clean_env(
        DATABASE_URL=database_url,
        DATA_DIR=str(workdir / "data"),
        LOG_FORMAT="json",
        LOG_LEVEL="INFO",
        AUTH_MODE="required",
        API_KEY_CACHE_SECONDS="0",
        **extra,
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
