"""--start-server: a fresh PostgreSQL database, migrated, an admin key, and the server as a subprocess."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

REPO_ROOT = Path(__file__).resolve().parent.parent


def state_manager_executable() -> str:
    candidate = Path(sys.executable).parent / "state-manager"
    return str(candidate) if candidate.exists() else "state-manager"


def cli_has_serve() -> bool:
    """Whether `state-manager serve` exists yet; if not, uvicorn runs the app factory directly."""
    try:
        done = subprocess.run(
            [state_manager_executable(), "--help"], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError:
        return False
    return done.returncode == 0 and "serve" in done.stdout and "migrate" in done.stdout


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_dsn(admin_dsn: str, database: str) -> str:
    """The admin DSN (plain postgresql://) pointed at another database."""
    parts = urlsplit(admin_dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def sqlalchemy_url(dsn: str) -> str:
    return "postgresql+asyncpg://" + dsn.split("://", 1)[1]


async def create_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def analyze(dsn: str) -> None:
    """ANALYZE the freshly seeded database, as autovacuum would soon do on its own: without statistics
    the planner may pick plans for empty tables, and the figures would depend on autovacuum's timing."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def mint_admin_key(dsn: str) -> str:
    """An admin key written straight into the benchmark's own database (PostgreSQL has no first-run key).

    Uses the service's own key format and hashing, so the server verifies it like any other key.
    """
    from state_manager.tenants import keys

    new = keys.generate()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO api_keys (id, prefix, secret_hash, kind, tenant_id, name, created_at)"
            " VALUES ($1, $2, $3, 'admin', NULL, 'bench admin key', $4)",
            uuid.uuid4(),
            new.prefix,
            new.secret_hash,
            dt.datetime.now(dt.UTC),
        )
    finally:
        await conn.close()
    return new.plaintext


class ManagedServer:
    """`state-manager serve` in its own process group, logging to a file."""

    def __init__(
        self,
        *,
        port: int,
        workers: int,
        database_url: str,
        redis_url: str | None,
        extra_env: dict[str, str],
        log_path: Path,
    ) -> None:
        self.port = port
        self.workers = workers
        self.log_path = log_path
        self.env = {**os.environ, "DATABASE_URL": database_url, "HOST": "127.0.0.1"}
        self.env["DATA_DIR"] = tempfile.mkdtemp(prefix="state-manager-bench-data-")
        if redis_url:
            self.env["REDIS_URL"] = redis_url
        else:
            self.env.pop("REDIS_URL", None)
        self.env.update(extra_env)
        self.process: subprocess.Popen[bytes] | None = None
        self.launcher = "cli" if cli_has_serve() else "uvicorn"

    def _migrate_command(self) -> list[str]:
        if self.launcher == "cli":
            return [state_manager_executable(), "migrate"]
        code = "import os; from state_manager.db.migrate import upgrade_to_head; "
        code += "upgrade_to_head(os.environ['DATABASE_URL'])"
        return [sys.executable, "-c", code]

    def _serve_command(self) -> list[str]:
        if self.launcher == "cli":
            return [
                state_manager_executable(),
                "serve",
                "--workers",
                str(self.workers),
                "--port",
                str(self.port),
            ]
        return [
            sys.executable, "-m", "uvicorn", "state_manager.app:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log",
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def migrate(self) -> None:
        done = subprocess.run(
            self._migrate_command(),
            env=self.env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"state-manager migrate failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
            )

    def create_admin_key(self, dsn: str) -> str:
        """`state-manager keys create --kind admin`, or (before the CLI had it) a row written directly."""
        if self.launcher != "cli":
            return asyncio.run(mint_admin_key(dsn))
        return self.create_key("--kind", "admin", "--name", "bench admin key")

    def create_key(self, *options: str) -> str:
        """`state-manager keys create <options>` against this server's database; the new key."""
        done = subprocess.run(
            [state_manager_executable(), "keys", "create", *options],
            env=self.env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        key = done.stdout.strip()
        if done.returncode != 0 or not key:
            raise RuntimeError(f"state-manager keys create failed ({done.returncode}):\n{done.stderr}")
        return key

    def start(self, timeout: float = 60.0) -> None:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self._serve_command(),
            env=self.env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the server exited with {self.process.returncode}; its log:\n{self.tail_log()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
            except OSError as exc:
                last = str(exc)
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(
            f"the server was not ready within {timeout:.0f}s ({last}); its log:\n{self.tail_log()}"
        )

    def tail_log(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)  # our own child; uvicorn stops its workers
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the group we created with start_new_session
            process.wait(timeout=10)
