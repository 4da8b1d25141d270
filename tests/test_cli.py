"""The `state-manager` command, run as a subprocess against the same databases as the servers."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from harness import CLI, Api, Server, ServerProcess, clean_env, eventually, run_cli
from state_manager.cli import app

COMMANDS = [
    [],
    ["serve"],
    ["migrate"],
    ["organizations"],
    ["organizations", "create"],
    ["organizations", "list"],
    ["tenants"],
    ["tenants", "create"],
    ["tenants", "list"],
    ["tenants", "show"],
    ["keys"],
    ["keys", "create"],
    ["keys", "list"],
    ["keys", "revoke"],
    ["replay"],
    ["cache"],
    ["cache", "stats"],
    ["cache", "warm"],
    ["backup"],
    ["backup", "verify"],
    ["restore"],
    ["check"],
    ["retention"],
    ["retention", "run"],
    ["expiry"],
    ["expiry", "run"],
    ["jobs"],
    ["customers"],
    ["customers", "export"],
    ["customers", "erase"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "state-manager")
def test_every_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], prog_name="state-manager")
    assert result.exit_code == 0, result.output
    assert "Usage: state-manager" in result.output
    assert "Traceback" not in result.output


def test_python_dash_m_runs_the_cli(workdir: Path) -> None:
    done = run_cli("--help", env=clean_env(), cwd=workdir)
    assert done.returncode == 0, done.stderr
    for command in ("serve", "migrate", "organizations", "tenants", "keys"):
        assert command in done.stdout


def test_console_script_is_installed(workdir: Path) -> None:
    script = Path(CLI[0]).parent / "state-manager"
    assert script.exists()
    done = subprocess.run(
        [str(script), "keys", "--help"], capture_output=True, text=True, cwd=workdir, check=False
    )
    assert done.returncode == 0, done.stderr


def test_a_spawned_worker_does_not_load_the_cli(workdir: Path) -> None:
    """`serve --workers N` spawns workers (uvicorn uses multiprocessing's spawn); each runs the console
    script's imports again and applies uvicorn's log configuration. Neither may bring the CLI (typer,
    rich, every command) into each worker's memory."""
    script = (Path(CLI[0]).parent / "state-manager").read_text()
    probe = script.split("if __name__")[0] + textwrap.dedent(
        """
        import logging.config, multiprocessing

        def worker(config, answers):
            logging.config.dictConfig(config)
            cli = ("typer", "rich", "state_manager.cli")
            answers.put(sorted(name for name in sys.modules if name.startswith(cli)))

        if __name__ == "__main__":
            from state_manager.cli.serve import log_config
            from state_manager.settings import Settings

            context = multiprocessing.get_context("spawn")
            answers = context.Queue()
            child = context.Process(target=worker, args=(log_config(Settings()), answers))
            child.start()
            print(answers.get(timeout=60))
            child.join()
        """
    )
    path = workdir / "state-manager-probe"
    path.write_text(probe)
    done = subprocess.run(
        [CLI[0], str(path)], capture_output=True, text=True, cwd=workdir, check=False, env=clean_env()
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_app_loads_no_command_line_library(workdir: Path) -> None:
    """A worker builds the app: nothing in it may bring click, rich or pygments, which httpx imports
    for its own command-line client whenever they are installed (4 MB per worker; docs/benchmarks.md,
    Memory). A real worker has click all the same, from uvicorn; the app must not need it."""
    probe = (
        "import sys\n"
        "from state_manager.app import create_app\n"
        "create_app()\n"
        "assert 'httpx' in sys.modules  # the webhook dispatcher's client: what this test is about\n"
        "print(sorted(name for name in ('click', 'rich', 'pygments', 'typer') if name in sys.modules))\n"
    )
    done = subprocess.run(
        [Path(CLI[0]).parent / "python", "-c", probe],
        capture_output=True,
        text=True,
        cwd=workdir,
        check=False,
        env={**clean_env(), "DATA_DIR": str(workdir / "data")},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("command", "variable", "value"),
    [
        (["serve"], "PORT", "abc"),
        (["serve"], "PORT", "70000"),
        (["serve"], "DATABASE_URL", "mysql://x"),
        (["serve"], "REDIS_URL", "http://localhost"),
        (["serve"], "AUTH_MODE", "maybe"),
        (["migrate"], "DATABASE_URL", "mysql://x"),
        (["keys", "list"], "LOG_LEVEL", "loud"),
        (["tenants", "list"], "API_KEY_CACHE_SECONDS", "-1"),
    ],
)
def test_invalid_settings_stop_with_one_line_naming_the_variable(
    workdir: Path, command: list[str], variable: str, value: str
) -> None:
    env = clean_env(DATA_DIR=str(workdir / "data"), **{variable: value})
    done = run_cli(*command, env=env, cwd=workdir, timeout=60)
    assert done.returncode == 2, done.stderr
    assert variable in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert not (workdir / "data").exists()  # nothing was started or created


@pytest.mark.postgres
def test_serve_refuses_an_unmigrated_postgresql_until_migrate(workdir: Path, fresh_postgres_url: str) -> None:
    env = clean_env(DATABASE_URL=fresh_postgres_url, DATA_DIR=str(workdir / "data"))
    refused = run_cli("serve", "--port", "1", env=env, cwd=workdir, timeout=60)
    assert refused.returncode == 1, refused.stderr
    assert "run `state-manager migrate`" in refused.stderr
    assert "Traceback" not in refused.stderr
    # The other commands that need the schema refuse the same way.
    listed = run_cli("keys", "list", env=env, cwd=workdir, timeout=60)
    assert listed.returncode == 1
    assert "state-manager migrate" in listed.stderr

    migrated = run_cli("migrate", env=env, cwd=workdir)
    assert migrated.returncode == 0, migrated.stderr
    assert "from none to" in migrated.stdout
    again = run_cli("migrate", env=env, cwd=workdir)
    assert again.returncode == 0, again.stderr
    assert "already at the newest revision" in again.stdout
    assert json.loads(run_cli("keys", "list", "--json", env=env, cwd=workdir).stdout) == []


def test_migrate_creates_an_sqlite_database(workdir: Path) -> None:
    env = clean_env(DATABASE_URL=f"sqlite+aiosqlite:///{workdir / 'new' / 'sm.db'}")
    done = run_cli("migrate", env=env, cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert "from none to" in done.stdout
    assert (workdir / "new" / "sm.db").exists()


def test_keys_before_the_first_serve_on_the_embedded_default(workdir: Path) -> None:
    """A fresh user can make a key before ever serving: the embedded database migrates itself."""
    env = clean_env(DATA_DIR=str(workdir / "data"))
    done = run_cli("keys", "create", "--kind", "admin", "--name", "me", env=env, cwd=workdir)
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert key.startswith("smk_")
    assert len(done.stdout.splitlines()) == 1  # stdout is the key and nothing else
    assert "not stored" in done.stderr
    assert (workdir / "data" / "state-manager.db").exists()
    listed = json.loads(run_cli("keys", "list", "--json", env=env, cwd=workdir).stdout)
    assert [(k["kind"], k["name"]) for k in listed] == [("admin", "me")]
    assert key not in json.dumps(listed)


def test_keys_create_list_revoke_round_trip(api: Api) -> None:
    server = api.server
    tenant = api.new_tenant()
    created = server.cli_json("keys", "create", "--kind", "tenant", "--name", "cli", "--tenant", tenant.id)
    key = created["key"]
    assert created["tenant_id"] == tenant.id
    assert created["kind"] == "tenant"
    assert api.get("/v1/tenant", key=key).json()["id"] == tenant.id

    listed = server.cli_json("keys", "list", "--tenant", tenant.id)
    assert {k["id"] for k in listed} == {tenant.key_id, created["id"]}
    assert all("key" not in k and "secret_hash" not in k for k in listed)
    table = server.cli("keys", "list", "--tenant", tenant.id)
    assert table.returncode == 0
    secret = key.split("_", 2)[2]  # smk_<prefix>_<secret>; the secret itself may hold "_"
    for output in (json.dumps(listed), table.stdout, table.stderr):
        assert secret not in output
    assert created["prefix"] in table.stdout

    revoked = server.cli("keys", "revoke", created["id"])
    assert revoked.returncode == 0, revoked.stderr
    # The harness servers do not cache keys (API_KEY_CACHE_SECONDS=0): refused at once.
    response = api.get("/v1/tenant", key=key)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    # The tenant's other key is untouched.
    assert api.get("/v1/tenant", key=tenant.key).status_code == 200
    listed = server.cli_json("keys", "list", "--tenant", tenant.id)
    assert {k["id"]: k["revoked_at"] is not None for k in listed} == {
        tenant.key_id: False,
        created["id"]: True,
    }


def test_keys_revoke_takes_the_prefix_and_refuses_unknown_keys(api: Api) -> None:
    server = api.server
    tenant = api.new_tenant()
    prefix = api.get("/v1/admin/keys", key=api.admin_key, params={"tenant_id": tenant.id}).json()[0]["prefix"]
    revoked = server.cli("keys", "revoke", f"smk_{prefix}_…", "--json")
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout)["id"] == tenant.key_id
    assert api.get("/v1/tenant", key=tenant.key).status_code == 401

    for unknown in ("00000000-0000-0000-0000-000000000000", "smk_0000000000000000"):
        done = server.cli("keys", "revoke", unknown)
        assert done.returncode == 1
        assert "not found" in done.stderr or "no key" in done.stderr


def test_keys_create_refuses_bad_combinations(server: Server) -> None:
    no_tenant = server.cli("keys", "create", "--kind", "tenant", "--name", "x")
    assert no_tenant.returncode == 1
    assert "tenant_id" in no_tenant.stderr
    unknown = server.cli("keys", "create", "--kind", "tenant", "--name", "x", "--tenant", "no-such-tenant")
    assert unknown.returncode == 1
    assert "not found" in unknown.stderr
    bad_kind = server.cli("keys", "create", "--kind", "root", "--name", "x")
    assert bad_kind.returncode == 2
    assert no_tenant.stdout == unknown.stdout == bad_kind.stdout == ""


def test_revoking_over_http_takes_effect_at_once(api: Api) -> None:
    tenant = api.new_tenant()
    assert api.get("/v1/tenant", key=tenant.key).status_code == 200
    revoked = api.delete(f"/v1/admin/keys/{tenant.key_id}", key=api.admin_key)
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    assert api.get("/v1/tenant", key=tenant.key).status_code == 401


def test_organizations_and_tenants(api: Api) -> None:
    server = api.server
    suffix = api.new_tenant().id.removeprefix("t-")  # a unique suffix
    organization, tenant_id = f"cli-org-{suffix}", f"cli-{suffix}"

    created = server.cli_json("organizations", "create", organization, "--name", "CLI org")
    assert created["id"] == organization
    assert organization in {o["id"] for o in server.cli_json("organizations", "list")}
    duplicate = server.cli("organizations", "create", organization, "--name", "again")
    assert duplicate.returncode == 1
    assert "already exists" in duplicate.stderr

    tenant = server.cli_json("tenants", "create", tenant_id, "--organization", organization, "--name", "CLI")
    assert tenant["organization_id"] == organization
    assert tenant["settings"]["timezone"] == "UTC"
    shown = server.cli_json("tenants", "show", tenant_id)
    assert shown == tenant
    listed = server.cli_json("tenants", "list", "--organization", organization)
    assert [t["id"] for t in listed] == [tenant_id]
    table = server.cli("tenants", "show", tenant_id)
    assert table.returncode == 0
    assert tenant_id in table.stdout
    # The server sees what the CLI made.
    assert api.get(f"/v1/admin/tenants/{tenant_id}", key=api.admin_key).json()["name"] == "CLI"

    missing = server.cli("tenants", "show", f"missing-{suffix}")
    assert missing.returncode == 1
    assert "not found" in missing.stderr
    orphan = server.cli("tenants", "create", f"x-{suffix}", "--organization", f"none-{suffix}", "--name", "x")
    assert orphan.returncode == 1
    assert "not found" in orphan.stderr
    bad_id = server.cli("tenants", "create", "has space", "--organization", organization, "--name", "x")
    assert bad_id.returncode == 2
    assert "id" in bad_id.stderr

    both = server.cli_json(
        "tenants", "create", f"y-{suffix}", "--organization", f"new-{suffix}", "--name", "Y",
        "--create-organization",
    )  # fmt: skip
    assert both["organization_id"] == f"new-{suffix}"
    assert f"new-{suffix}" in {o["id"] for o in server.cli_json("organizations", "list")}


def test_harness_tenant_exists(server: Server) -> None:
    """The sqlite first run made `default`; the postgres harness made `harness` with the CLI."""
    shown = server.cli_json("tenants", "show", server.default_tenant_id)
    assert shown["id"] == server.default_tenant_id


def test_cache_stats_and_warm_ask_the_running_server(workdir: Path) -> None:
    """On the embedded default, as a new user would: the admin key is read from its file; the server warms
    its cache at start with the recently active conversations."""
    env = clean_env(DATA_DIR=str(workdir / "data"), LOG_FORMAT="json")
    server = ServerProcess("cli-cache", env, workdir)
    env["PORT"] = str(server.port)
    server.start()
    try:
        server.wait_for("/health/ready")
        key = (workdir / "data" / "admin-key").read_text().strip()
        headers = {"Authorization": f"Bearer {key}", "X-Tenant-ID": "default"}
        for n in range(5):
            body = {
                "wa_id": f"4915100000{n:02d}",
                "business_number_id": "bn-1",
                "wamid": f"wamid.cli{n}",
                "text": "hi",
            }
            assert (
                httpx.post(f"{server.base_url}/v1/messages/inbound", json=body, headers=headers).status_code
                == 201
            )
        assert server.stop(), server.log_tail()
        server.start()  # warms the five conversations' lookups at start
        server.wait_for("/health/ready")

        def loads() -> int:
            done = run_cli("cache", "stats", "--json", env=env, cwd=workdir)
            assert done.returncode == 0, done.stderr
            found: int = json.loads(done.stdout)["caches"]["open_conversation"]["loads"]["found"]
            return found

        eventually(lambda: loads() == 5)
        shown = run_cli("cache", "stats", env=env, cwd=workdir)
        assert shown.returncode == 0, shown.stderr
        assert "open_conversation" in shown.stdout
        assert "cache: memory, ok" in shown.stderr

        warmed = run_cli("cache", "warm", "--tenant", "default", env=env, cwd=workdir)
        assert warmed.returncode == 0, warmed.stderr
        assert warmed.stdout.strip() == "warmed 10 lookups of 5 conversations"
        assert loads() == 5  # already warm: nothing loaded again

        unknown = run_cli("cache", "warm", "--tenant", "nope", env=env, cwd=workdir)
        assert unknown.returncode == 1
        assert "404" in unknown.stderr
        assert "nope" in unknown.stderr
        refused = run_cli("cache", "stats", "--api-key", "smk_wrong", env=env, cwd=workdir)
        assert refused.returncode == 1
        assert "401" in refused.stderr
    finally:
        assert server.stop(), server.log_tail()
